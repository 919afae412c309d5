"""Bring your own task: prompts from your file, rewards from your function (``task.name: prompts``).

Data. ``path`` is a JSON-lines file (``.jsonl``, or ``.json`` holding lines or an array), a Parquet file
(``.parquet``) or a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a
``DatasetDict`` whose ``split`` is read). Field names are options: ``prompt_field`` holds either a
string (one user turn) or a chat (a list of ``{"role", "content"}``, the last one the user's, as in
TRL's conversational format); ``answer_field`` and ``id_field`` are optional. The test split is
``test_path``, else the ``test_split`` of a ``DatasetDict``, else a seeded hold-out of ``n_test``
(a fraction or a count, default 0.1) of the distinct prompts, as the other file tasks do. A bad row is
an error naming the file, the line (JSON) or the 0-based row (Parquet, ``datasets``, as ``ds[i]``
indexes it) and the field.

Reward. ``reward`` names one function or a list of them, each ``"package.module:function"`` or
``"path/to/file.py:function"`` (or a callable, from Python), called once per batch (TRL's
``reward_funcs`` convention)::

    def reward(prompts: list[str], responses: list[str], examples: list[dict]) -> list[R]

``prompts[i]`` is the last user message, ``responses[i]`` the decoded response and ``examples[i]`` a
copy of the data row it came from (every column of your file). Each ``R`` is a number, a
``(reward, feedback)`` pair or a dict ``{"reward": number, "feedback": str, "info": dict}`` (only
``reward`` required). Feedback is privileged text for the teacher (a failing check, an error message),
"" for none; ``info`` lands in ``Outcome.info`` (``info["extracted"]``, the response's final answer,
is what held-out majority voting counts). With several functions the reward is
``Σ_i reward_weights[i]·r_i`` (weights default to 1), the feedback texts are joined by blank lines and
each function's own reward is kept in ``info["rewards"]``. Rollouts with reward
``>= teacher.success_threshold`` (default 1.0) become demos for their group, so a reward on another
scale needs that threshold set to match. Without ``reward``, ``answer_field`` is required and the reward
is 1 iff the last ``<answer>…</answer>`` tag of the response equals the answer (whitespace-normalized,
numbers by value).

Reward code runs in the training process, with its permissions: sandboxing it (for example a reward
that executes model-written code) is the reward's job; ``credit.tasks.sandbox`` is there to call.
A malformed return value is a one-line error naming the function and what it returned; an exception
raised by the function itself keeps its traceback.

A whole task class is accepted as ``task.name: "package.module:Class"`` (or ``file.py:Class``): a
subclass of ``credit.tasks.BaseTask`` built with ``task.options`` as keyword arguments.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from credit.tasks import _io
from credit.tasks.base import BaseTask, DataError, Example, Outcome

RewardFn = Callable[[list[str], list[str], list[dict]], Sequence[Any]]  # (prompts, responses, examples) -> R per response

_ROLES = ("system", "user", "assistant")
_RETURN_FORMS = "a number, a (reward, feedback) pair or a dict {'reward': number, 'feedback': str, 'info': dict}"


class RewardFunctionError(Exception):
    """A user reward function raised. Deliberately not a ``ValueError``: the command line turns those
    into one line, and the user needs the traceback into their own code."""


# --------------------------------------------------------------------------------------------
# Loading user code
# --------------------------------------------------------------------------------------------

_FILE_MODULES: dict[str, Any] = {}  # resolved path -> module: a file named twice is executed once


def searched(path: Path) -> str:
    """Where a missing relative path was looked for: it resolves from the working directory (the
    directory ``credit`` runs in, not the config file's), and the error must say so."""
    return "" if path.is_absolute() else f" (a relative path is read from the working directory {Path.cwd()})"


def _load_file(path_text: str, spec: str, what: str):
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"{what} '{spec}': file {path_text} does not exist{searched(path)}")
    key = str(path.resolve())
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    # A unique, importable name registered in sys.modules, so pickling and dataclasses inside the
    # user's file work as in any module.
    name = f"_credit_user_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{what} '{spec}': {path_text} cannot be loaded as Python source")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[name]
        raise ValueError(f"{what} '{spec}': {e.filename}:{e.lineno}: {e.msg}") from None
    except ImportError as e:
        del sys.modules[name]
        raise ValueError(f"{what} '{spec}': {path_text} failed to import: {e}") from None
    except BaseException:
        del sys.modules[name]
        raise  # the user's module raised while loading: its traceback is the useful report
    _FILE_MODULES[key] = module
    return module


def load_object(spec: str, what: str = "object") -> Any:
    """The object named by ``"package.module:name"`` or ``"path/to/file.py:name"``.

    A path is recognized by its ``.py`` ending or a ``/``; it is loaded as a module of its own
    (relative paths from the working directory). Every naming mistake is a one-line ``ValueError``
    that names ``what`` and ``spec``.
    """
    target, _, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    if target == "__main__" or "<" in attr:  # how credit.fit records a script's function or a lambda
        raise ValueError(f"{what} '{spec}' is a function that was given from Python (credit.fit) and defined in a "
                         "script, or a lambda: it cannot be imported from here. Continue the run with credit.fit(..., "
                         "reward=<the function>, resume=True), or move the function into a module and name it "
                         "'module:function'")
    if not target or not attr.isidentifier():
        raise ValueError(f"{what} must look like 'package.module:name' or 'path/to/file.py:name', got {spec!r}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_file(target, spec, what)
    else:
        try:
            module = importlib.import_module(target)
        except SyntaxError as e:
            raise ValueError(f"{what} '{spec}': {e.filename}:{e.lineno}: {e.msg}") from None
        except ImportError as e:
            raise ValueError(f"{what} '{spec}': cannot import module '{target}' ({e}); "
                             f"install it, put its folder on PYTHONPATH, or give a path 'file.py:{attr}'") from None
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        hint = f"; it defines {', '.join(public[:8])}" if public else ""
        raise ValueError(f"{what} '{spec}': '{target}' has no attribute '{attr}'{hint}")
    return getattr(module, attr)


def load_task_class(spec: str) -> type[BaseTask]:
    """``task.name: "module:Class"``: the class, checked to be a ``BaseTask`` subclass."""
    cls = load_object(spec, "task class")
    if not (isinstance(cls, type) and issubclass(cls, BaseTask)):
        kind = f"class {cls.__qualname__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ValueError(f"task class '{spec}' is {kind}, not a subclass of credit.tasks.BaseTask")
    return cls


def load_reward(spec: str | RewardFn) -> tuple[str, RewardFn]:
    """``(label, function)`` for one reward entry, its signature checked against the three lists."""
    fn = spec if callable(spec) else load_object(spec, "reward function")
    # a callable is labelled as credit.fit records it in config.yaml, so its metrics keep their name on resume
    label = spec if isinstance(spec, str) else \
        f"{getattr(spec, '__module__', None) or '__main__'}:{getattr(spec, '__qualname__', repr(spec))}"
    if not callable(fn):
        raise ValueError(f"reward function '{label}' is a {type(fn).__name__}, not callable")
    try:
        inspect.signature(fn).bind([], [], [])
    except TypeError:
        raise ValueError(f"reward function '{label}' must accept (prompts, responses, examples); "
                         f"its signature is {inspect.signature(fn)}") from None
    except ValueError:  # builtins without a signature: trust them
        pass
    return label, fn


# --------------------------------------------------------------------------------------------
# Calling rewards
# --------------------------------------------------------------------------------------------


def _describe(value: Any, limit: int = 60) -> str:
    text = repr(value)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(value).__name__} {text}"


def _number(value: Any) -> float | None:
    """A finite float from an int/float (numpy scalars included), else None; ``bool`` is refused
    because ``True`` as a reward is almost always a forgotten ``float(...)`` of something else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _parse_one(label: str, i: int, item: Any) -> tuple[float, str, dict]:
    def bad(why: str = "") -> ValueError:
        return ValueError(f"reward function '{label}' returned {_describe(item)} at index {i}{why}; "
                          f"expected {_RETURN_FORMS}")

    feedback, info = "", {}
    if isinstance(item, dict):
        unknown = set(item) - {"reward", "feedback", "info"}
        if "reward" not in item or unknown:
            raise bad(f" (unknown keys {sorted(map(str, unknown))})" if unknown else " (no 'reward' key)")
        reward, feedback, info = item["reward"], item.get("feedback", ""), item.get("info", {})
    elif isinstance(item, tuple):
        if len(item) != 2:
            raise bad()
        reward, feedback = item
    else:
        reward = item
    value = _number(reward)
    if value is None:
        raise bad(" (the reward must be a finite number)")
    if feedback is None:
        feedback = ""
    if not isinstance(feedback, str):
        raise bad(" (the feedback must be a string)")
    if not isinstance(info, dict):
        raise bad(" (the info must be a dict)")
    return value, feedback, info


def call_reward(label: str, fn: Callable, prompts: list[str], responses: list[str],
                rows: list[dict]) -> list[tuple[float, str, dict]]:
    """Call one reward function on a batch; ``(reward, feedback, info)`` per response, validated."""
    try:
        out = fn(prompts, responses, rows)
    except Exception as e:
        raise RewardFunctionError(f"reward function '{label}' raised {type(e).__name__}: {e}") from e
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__") or not hasattr(out, "__iter__"):
        raise ValueError(f"reward function '{label}' returned {_describe(out)}; expected a list with one "
                         f"entry per response ({len(responses)})")
    out = list(out)
    if len(out) != len(responses):
        raise ValueError(f"reward function '{label}' returned {len(out)} entries for {len(responses)} responses; "
                         f"expected one per response")
    return [_parse_one(label, i, item) for i, item in enumerate(out)]


def _same_answer(got: str, gold: str) -> bool:
    got, gold = " ".join(got.split()), " ".join(gold.split())
    if got == gold:
        return True
    try:
        return Decimal(got.replace(",", "")) == Decimal(gold.replace(",", ""))
    except InvalidOperation:
        return False


def answer_match(answer_field: str) -> Callable:
    """The default reward: 1 iff the last ``<answer>`` tag equals ``row[answer_field]``; format
    errors are the feedback (the answer itself is never revealed)."""

    def reward(prompts: list[str], responses: list[str], examples: list[dict]) -> list[dict]:
        out = []
        for response, row in zip(responses, examples):
            text = _io.guard_response(response)
            if isinstance(text, Outcome):
                out.append({"reward": 0.0, "feedback": text.feedback, "info": {**text.info, "extracted": None}})
                continue
            got = _io.last_answer_tag(text)
            if got is None:  # extracted None: no answer to vote for in maj@n
                out.append({"reward": 0.0, "feedback": "Format error: no <answer>…</answer> tag found. Put only "
                            "the final answer inside <answer></answer> at the end.",
                            "info": {"format_error": "no_answer_tag", "extracted": None}})
                continue
            out.append({"reward": float(_same_answer(got, str(row[answer_field]))), "info": {"extracted": got}})
        return out

    reward.__qualname__ = f"answer_match({answer_field!r})"
    return reward


# --------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------

# One row as read and where it came from: (row, place for DataError, line or None, default id).
Row = tuple[dict[str, Any], str, Any, str]


def _read_rows(path: str, split: str) -> tuple[list[Row], dict[str, list[Row]] | None]:
    """The rows of ``path`` (for a ``DatasetDict`` folder: of its ``split``), and for a
    ``DatasetDict`` every split's rows, so the caller can find a test split there (else None)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _read_datasets_folder(p, path, split)
    if not p.exists():
        raise DataError(path, None, None, f"no such file or folder{searched(p)}")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return [(row, path, line, f"line{line}") for line, row in _io.read_json_rows(p)], None
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(path, None, None, f"cannot read as Parquet ({e})") from None
        return [(row, f"{path}: row {i}", None, f"row{i}") for i, row in enumerate(rows)], None
    raise DataError(path, None, None, "unknown format: give a .jsonl/.json file, a .parquet file or a folder "
                    "written by datasets' save_to_disk")


def _read_datasets_folder(p: Path, path: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(path, None, None, f"not a folder written by datasets' save_to_disk ({e})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = {name: loaded[name] for name in loaded}
    else:
        splits = {None: loaded}
    rows = {}
    for name, ds in splits.items():
        where = path if name is None else f"{path} (split '{name}')"
        rows[name] = [(row, f"{where}: row {i}", None, f"row{i}" if name is None else f"{name}-row{i}")
                      for i, row in enumerate(ds.to_list())]
    if None in rows:
        return rows[None], None
    if split not in rows:
        raise DataError(path, None, None, f"has no split '{split}' (it has {', '.join(sorted(rows))}); "
                        f"set the task option split")
    return rows[split], rows


def _messages(value: Any, where: str, line: int | None, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(where, line, name, "is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        kind = "an empty list" if isinstance(value, list) else _io._json_type(type(value))
        raise DataError(where, line, name, f"expected a string or a chat (a list of {{role, content}}), got {kind}")
    chat = []
    for k, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(where, line, f"{name}[{k}]", f"expected an object {{role, content}}, got "
                            f"{_io._json_type(type(m))}")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise DataError(where, line, f"{name}[{k}].role", f"must be one of {', '.join(_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(where, line, f"{name}[{k}].content", f"expected a string, got {_io._json_type(type(content))}")
        chat.append({"role": role, "content": content})
    if chat[-1]["role"] != "user" or not chat[-1]["content"].strip():
        raise DataError(where, line, f"{name}[{len(chat) - 1}]", "the last message must be a non-empty user turn "
                        "(the question the model answers)")
    return chat


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class PromptTask(BaseTask):
    """Your prompts and your reward function(s); see the module docstring for every option."""

    name = "prompts"

    def __init__(self, path: str | None = None, *, reward: str | Callable | list | None = None,
                 reward_weights: list[float] | None = None, prompt_field: str = "prompt",
                 answer_field: str | None = None, id_field: str | None = None, system_prompt: str | None = None,
                 test_path: str | None = None, split: str = "train", test_split: str = "test",
                 n_test: int | float | None = None, seed: int = 0):
        if not isinstance(path, str) or not path:
            raise ValueError("the prompts task needs path: a .jsonl/.json or .parquet file, or a datasets folder")
        for key, value in (("prompt_field", prompt_field), ("split", split), ("test_split", test_split)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a non-empty string, got {value!r}")
        for key, value in (("answer_field", answer_field), ("id_field", id_field), ("system_prompt", system_prompt),
                           ("test_path", test_path)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key} must be a non-empty string or null, got {value!r}")
        _io.check_seed(seed)
        if n_test is not None:
            _io.check_n_test(n_test)
        self.path, self.prompt_field, self.answer_field, self.id_field = path, prompt_field, answer_field, id_field
        self.system_prompt, self.seed = system_prompt, seed
        self.rewards = self._rewards(reward, reward_weights)

        train_rows, folder_splits = _read_rows(path, split)
        test_rows = None
        if test_path is not None:
            test_rows, _ = _read_rows(test_path, test_split)
            # line numbers restart in the second file: prefix its default ids so they stay unique
            test_rows = [(row, where, line, f"test:{rid}") for row, where, line, rid in test_rows]
        elif folder_splits is not None and test_split in folder_splits and test_split != split:
            test_rows = folder_splits[test_split]
        if test_rows is not None and n_test is not None:
            given = test_path if test_path is not None else f"split '{test_split}' of {path}"
            raise ValueError(f"n_test={n_test} would hold prompts out of {path}, but the test split is already "
                             f"given ({given}); drop n_test")
        train = [self._example(*r) for r in train_rows]
        if not train:
            raise DataError(path, None, None, "no rows")
        if test_rows is None:
            train, test = _io.split_items(train, 0.1 if n_test is None else n_test, seed,
                                          key=lambda e: e.prompt, source=path)
        else:
            test = [self._example(*r) for r in test_rows]
        self._check_unique_ids(train + test)
        self._splits = {"train": train, "test": test}

    def _rewards(self, reward, weights) -> list[tuple[str, Callable, float]]:
        if reward is None:
            if self.answer_field is None:
                raise ValueError("the prompts task needs reward: 'module:function' (or 'file.py:function'), "
                                 "or answer_field for the built-in <answer>-tag match")
            entries = [(f"answer_match({self.answer_field!r})", answer_match(self.answer_field))]
        else:
            specs = reward if isinstance(reward, list) else [reward]
            if not specs:
                raise ValueError("reward is an empty list; give at least one 'module:function'")
            entries = [load_reward(s) for s in specs]
        if weights is None:
            weights = [1.0] * len(entries)
        if not isinstance(weights, list) or len(weights) != len(entries) or any(_number(w) is None for w in weights):
            raise ValueError(f"reward_weights must be a list of {len(entries)} finite number(s), one per reward "
                             f"function, got {weights!r}")
        return [(label, fn, float(w)) for (label, fn), w in zip(entries, weights)]

    def _example(self, row: dict[str, Any], where: str, line: int | None, default_id: str) -> Example:
        if self.prompt_field not in row:
            raise DataError(where, line, self.prompt_field, "missing")
        messages = _messages(row[self.prompt_field], where, line, self.prompt_field)
        if self.system_prompt is not None:
            if messages[0]["role"] == "system":
                raise DataError(where, line, self.prompt_field, "has its own system message while the task option "
                                "system_prompt is set; drop one of them")
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        meta: dict[str, Any] = {"row": row}
        if self.answer_field is not None:
            answer = _io.field(row, self.answer_field, (str, int, float), where, line)
            meta["answer"] = str(answer)
        rid = default_id
        if self.id_field is not None:
            rid = str(_io.field(row, self.id_field, (str, int), where, line))
        return Example(id=rid, messages=messages, meta=meta)

    def _check_unique_ids(self, examples: list[Example]) -> None:
        seen: dict[str, Example] = {}
        for e in examples:
            if e.id in seen:
                raise ValueError(f"{self.path}: id {e.id!r} (field '{self.id_field}') appears twice; ids must be "
                                 f"unique across the train and test splits")
            seen[e.id] = e

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Outcome]:
        prompts = [e.prompt for e in examples]
        responses = list(responses)
        totals = [0.0] * len(responses)
        feedback: list[list[str]] = [[] for _ in responses]
        infos: list[dict[str, Any]] = [{} for _ in responses]
        per_function: list[dict[str, float]] = [{} for _ in responses]
        for label, fn, weight in self.rewards:
            rows = [dict(e.meta["row"]) for e in examples]  # a copy per call: a function cannot edit the data
            for i, (r, fb, info) in enumerate(call_reward(label, fn, prompts, responses, rows)):
                totals[i] += weight * r
                if fb.strip():
                    feedback[i].append(fb)
                infos[i].update(info)
                per_function[i][label] = r
        return [Outcome(t, "\n\n".join(fb), {**info, "rewards": per})
                for t, fb, info, per in zip(totals, feedback, infos, per_function)]

    def score(self, example: Example, response: str) -> Outcome:
        return self.score_batch([example], [response])[0]


__all__ = ["PromptTask", "RewardFunctionError", "answer_match", "call_reward", "load_object", "load_reward",
           "load_task_class"]
