"""Task families with verifiable outcomes and rich feedback (docs/method.md §2).

``build_task(name, **options)`` is the single entry point; ``TASKS`` maps each name to its class,
imported only when used so that a family's optional data never slows the others. A name that is not
in ``TASKS`` but looks like ``"package.module:Class"`` or ``"file.py:Class"`` is the user's own
``BaseTask`` subclass (``credit.tasks.custom``).
"""

from __future__ import annotations

import importlib
import inspect

from credit.tasks.base import BaseTask, DataError, Example, Outcome, Task

# name -> "module:Class". Each class takes keyword options (validated in its constructor).
TASKS: dict[str, str] = {
    "addition": "credit.tasks.math:AdditionTask",  # the quickstart: "What is a + b?"
    "reasoning_gym": "credit.tasks.math:ReasoningGymTask",
    "gsm": "credit.tasks.math:GSMTask",  # GSM-style jsonl (question/answer)
    "humaneval": "credit.tasks.code:HumanEvalTask",
    "livecodebench": "credit.tasks.code:LiveCodeBenchTask",
    "sciknoweval": "credit.tasks.mcq:SciKnowEvalTask",
    "openbookqa": "credit.tasks.mcq:OpenBookQATask",
    "chemistry": "credit.tasks.mcq:ChemistryMCQTask",
    "toolalpaca": "credit.tasks.tooluse:ToolAlpacaTask",
    "bfcl": "credit.tasks.tooluse:BFCLTask",
    "prompts": "credit.tasks.custom:PromptTask",  # your jsonl/parquet/datasets prompts and reward function
}


def build_task(name: str, **options) -> Task:
    if name in TASKS:
        module, cls = TASKS[name].split(":")
        task_class = getattr(importlib.import_module(module), cls)
    elif ":" in name:
        from credit.tasks.custom import load_task_class

        task_class = load_task_class(name)
    else:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}, "
                         f"or your own 'package.module:Class'")
    _check_options(name, task_class, options)
    return task_class(**options)


def _signature_options(task_class) -> tuple[dict[str, object], bool]:
    """The keyword options of a task's constructor (name -> default) and whether it takes options it
    does not name. ``**options`` handed to a task base class (the code tasks) are that class's options."""
    options: dict[str, object] = {}
    for cls in task_class.__mro__:
        if "__init__" not in vars(cls) or cls is object:  # a user's own task class ("file.py:Class") counts too
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                options.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return options, False
    return options, True


def task_options() -> dict[str, tuple[dict[str, object], str]]:
    """name -> (options with defaults, what else it accepts) for every task of ``TASKS`` (for --help-config)."""
    out = {}
    for name, target in TASKS.items():
        module, cls = target.split(":")
        options, extra = _signature_options(getattr(importlib.import_module(module), cls))
        out[name] = (options, "more options, passed on (see its docstring)" if extra else "")
    return out


def _check_options(name: str, task_class, options: dict) -> None:
    """An unknown or missing option is a one-line error listing the allowed ones (not a TypeError)."""
    allowed, extra = _signature_options(task_class)
    unknown = [k for k in options if k not in allowed]
    if unknown and not extra:
        raise ValueError(f"task '{name}' has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(allowed) or '(none)'} (task.options / --task-option)")
    missing = [k for k, d in allowed.items() if d is inspect.Parameter.empty and k not in options]
    if missing:
        raise ValueError(f"task '{name}' needs option {', '.join(map(repr, missing))} (task.options / --task-option)")


__all__ = ["TASKS", "BaseTask", "DataError", "Example", "Outcome", "Task", "build_task"]
