"""The Python entry point: ``credit.fit`` trains as ``credit train`` does, with your reward function and
your data given as Python objects.

    import credit

    def reward(prompts, responses, examples):
        return [float(r.strip().endswith(ex["answer"])) for r, ex in zip(responses, examples)]

    rows = [{"prompt": "What is 2 + 3?", "answer": "5"}, ...]
    run = credit.fit("configs/quickstart.yaml", reward=reward, train_data=rows,
                     overrides=["out_dir=runs/mine", "steps=10"])
    run.model, run.tokenizer, run.run_dir, run.summary

What ``fit`` adds to ``credit train``: ``train_data`` / ``eval_data`` (a list of dicts, a
``datasets.Dataset``, or any iterable of dicts) are written into the run directory
(``data/train.jsonl``, ``data/test.jsonl``) and read by the ``prompts`` task from there, so the run
carries its data (``credit eval --model RUN_DIR`` and ``--resume`` read the same rows); ``reward``
(one callable or a list) is recorded in config.yaml by its name ``module:function``. A function
defined in a script (``__main__``) or a lambda cannot be imported again: ``credit train --resume`` then
says so, and ``credit.fit(..., reward=the_function, resume=True)`` continues the run. Resuming with
other data than the run's is refused, as any change of task is.

The task options (``prompt_field``, ``answer_field``, ``reward_weights``, ...) are those of the
``prompts`` task (``credit.tasks.custom``), set with ``overrides`` (``task.options.prompt_field=question``)
or in the config file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credit.config import TrainConfig, load_config
from credit.errors import UserError


@dataclass
class Run:
    """What ``fit`` returns: the trained student (in memory, on its training device), its tokenizer, the
    run directory (config.yaml, metrics, checkpoints, final/) and the summary (held-out before/after)."""

    model: Any
    tokenizer: Any
    run_dir: Path
    summary: dict


def callable_name(fn: Callable) -> str:
    """``module:qualname``, how config.yaml records a function given from Python (and the prompts task
    labels its reward: ``task/reward/<name>``)."""
    from credit.tasks.custom import load_reward

    return load_reward(fn)[0]


def _rows(data: Any, what: str) -> list[dict]:
    if hasattr(data, "to_list"):  # datasets.Dataset
        data = data.to_list()
    if isinstance(data, (str, Path)) or isinstance(data, dict) or not isinstance(data, Iterable):
        raise UserError(f"{what} must be a list of dicts or a datasets.Dataset, got {type(data).__name__}; "
                        "a file is given as task.options.path instead")
    rows = list(data)
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"{what}[{bad}] is a {type(rows[bad]).__name__}, not a dict of fields")
    if not rows:
        raise UserError(f"{what} is empty")
    return rows


def _write_rows(path: Path, rows: list[dict], what: str, resume: bool) -> None:
    """The rows as JSON lines at ``path``; a resumed run must be given the rows it was trained on."""
    try:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    except TypeError as e:
        raise UserError(f"{what}: a row does not convert to JSON ({e})") from None
    if resume and path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise UserError(f"--resume: {what} differs from the rows this run was trained on ({path}); pass the same "
                            "rows, or start a new run (another out_dir, or overwrite=True)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def fit(config: str | Path | dict | TrainConfig | None = None, *, reward: Callable | list | None = None,
        train_data: Any = None, eval_data: Any = None, overrides: Iterable[str] = (), resume: bool | str = False,
        overwrite: bool = False) -> Run:
    """Train as ``credit train CONFIG OVERRIDES`` does; returns the trained model and its run directory.

    ``config``: a YAML path, a dict of sections, a ``TrainConfig``, or None (the defaults).
    ``reward``: a function ``(prompts, responses, examples) -> rewards`` (or a list of them; see
    ``credit.tasks.custom``) for the ``prompts`` task. ``train_data`` / ``eval_data``: rows for it
    (without ``eval_data`` a seeded share of ``train_data`` is held out). ``resume`` / ``overwrite``: as
    the command's flags.
    """
    from credit import runs
    from credit import train as train_mod
    from credit.tasks import build_task

    cfg = load_config(config, list(overrides))
    out = Path(cfg.out_dir)
    if reward is None and train_data is None and eval_data is None:
        return _run(train_mod.train_run(cfg, resume, overwrite), out)
    if eval_data is not None and train_data is None:
        raise UserError("eval_data needs train_data (the rows to train on)")
    if cfg.task.name != "prompts" and cfg.task.name != TrainConfig().task.name:
        raise UserError(f"reward/train_data are for the prompts task, but the config sets task.name={cfg.task.name}")
    runs.prepare_run_dir(out, resume, overwrite)  # before a file is written into out_dir
    options = dict(cfg.task.options if cfg.task.name == "prompts" else {})
    if train_data is not None:
        path = out / "data" / "train.jsonl"
        _write_rows(path, _rows(train_data, "train_data"), "train_data", bool(resume))
        options["path"] = str(path)
    if eval_data is not None:
        path = out / "data" / "test.jsonl"
        _write_rows(path, _rows(eval_data, "eval_data"), "eval_data", bool(resume))
        options["test_path"] = str(path)
    objects = {}  # what the task is built with; config.yaml records their names
    if reward is not None:
        functions = reward if isinstance(reward, list) else [reward]
        if not functions or not all(callable(f) for f in functions):
            raise UserError("reward must be a callable or a list of callables (a 'module:function' name goes in "
                            "task.options.reward instead)")
        names = [callable_name(f) for f in functions]
        options["reward"] = names if isinstance(reward, list) else names[0]
        objects["reward"] = reward
    recorded = cfg.model_dump(mode="json")
    recorded["task"] = {"name": "prompts", "options": options}
    cfg = TrainConfig.model_validate(recorded)  # names and paths, no objects
    task = build_task("prompts", **{**options, **objects})
    return _run(train_mod.train_run(cfg, resume, overwrite, task=task), out)


def _run(result, out: Path) -> Run:
    summary, trainer = result
    return Run(model=trainer.unwrapped, tokenizer=trainer.tok, run_dir=out, summary=summary)
