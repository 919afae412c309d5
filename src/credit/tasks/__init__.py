"""Task families with verifiable outcomes and rich feedback (SPEC.md §2).

``build_task(name, **options)`` is the single entry point; ``TASKS`` maps each name to its class,
imported only when used so that a family's optional data never slows the others. A name that is not
in ``TASKS`` but looks like ``"package.module:Class"`` or ``"file.py:Class"`` is the user's own
``BaseTask`` subclass (``credit.tasks.custom``).
"""

from __future__ import annotations

import importlib

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
    return task_class(**options)


__all__ = ["TASKS", "BaseTask", "DataError", "Example", "Outcome", "Task", "build_task"]
