"""A stand-in for ``credit train`` in tests/test_sweep.py: same arguments, writes what a run writes.

``python _fake_train.py BASE overrides... seed=K out_dir=DIR [--resume]``. It writes ``config.yaml``
(the real resolved config), ``metrics.jsonl`` and ``summary.json`` shaped as train.py writes them,
with numbers taken from ``$FAKE_TRAIN_DIR/plan.json`` keyed by ``<cell>/seed<k>`` (the last two
parts of out_dir), and records each call in ``$FAKE_TRAIN_DIR/calls/``.

Plan entry fields (all optional): ``exit`` (non-zero: print an error and fail), ``signal`` (exit
as ``credit train`` does when stopped by that signal), ``before``, ``after``,
``periodic`` ({step index: eval value}), ``step_s`` (one per training step), ``items`` (per-item
reward lists of the final evaluation). With ``$FAKE_BARRIER=n`` a run waits until n runs have
started (a run that saw the others running proves they overlapped, no clock involved).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from credit.config import dump, load_config


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--resume"]
    base, overrides = args[0], args[1:]
    cfg = load_config(base, overrides)
    out = Path(cfg.out_dir)
    key = f"{out.parent.name}/{out.name}"
    state = Path(os.environ["FAKE_TRAIN_DIR"])
    plan = json.loads((state / "plan.json").read_text()).get(key, {}) if (state / "plan.json").exists() else {}

    running, started = state / "running", state / "started"
    running.mkdir(exist_ok=True)
    started.mkdir(exist_ok=True)
    me = f"{out.parent.name}-{out.name}-{os.getpid()}"
    (running / me).touch()
    (started / me).touch()
    at_start = len(list(running.iterdir()))
    seen = at_start
    barrier = int(os.environ.get("FAKE_BARRIER", "0"))
    deadline = time.monotonic() + 120  # a safety net only: the test fails on what was seen, not on time
    while len(list(started.iterdir())) < barrier and time.monotonic() < deadline:
        seen = max(seen, len(list(running.iterdir())))
        time.sleep(0.02)
    seen = max(seen, len(list(running.iterdir())))

    resumed = (out / "metrics.jsonl").exists()  # what the real command resumes from (here: step 1)
    calls = state / "calls"
    calls.mkdir(exist_ok=True)
    (calls / f"{me}.json").write_text(json.dumps({
        "key": key, "argv": sys.argv[1:], "running_at_start": at_start, "running_seen": seen,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HF_HUB_OFFLINE")},
        "existed": resumed,
    }))
    print(f"fake train {key}")
    try:
        if plan.get("exit"):
            print("credit train: error: boom", file=sys.stderr)
            return int(plan["exit"])
        if plan.get("signal"):  # what the real command prints and returns after SIGTERM/SIGINT
            print(f"credit train: signal {plan['signal']}: interrupted at step 1; checkpoint saved", file=sys.stderr)
            return 128 + int(plan["signal"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump(cfg))
        n = f"mean@{cfg.eval.samples}"
        before, after = plan.get("before", 0.25), plan.get("after", 0.5)
        items = plan.get("items", [[1.0, 0.0]])
        rows = [{"step": 0, "time_s": 0.0, f"eval/{n}": before}]
        step_s = plan.get("step_s", [1.0] * cfg.steps)
        periodic = {int(k): v for k, v in plan.get("periodic", {}).items()}
        for step in range(cfg.steps):
            row = {"step": step, "time_s": 1.0, "task/reward_mean": 0.5, "perf/step_s": step_s[step]}
            if step in periodic:
                row[f"eval/{n}"] = periodic[step]
            rows.append(row)
        rows.append({"step": cfg.steps, "time_s": 2.0, f"eval/{n}": after})
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"eval_before": {n: before}, "eval_after": {n: after, "items": [
            {"id": f"q{i}", "rewards": r} for i, r in enumerate(items)]}, "train_wall_s": 7.0}
        if resumed:
            summary["resumed_from_step"] = 1
        (out / "summary.json").write_text(json.dumps(summary))
        (out / "checkpoints").mkdir(exist_ok=True)  # what `credit train` keeps: a step file, linked
        (out / "checkpoints" / "step-000004.pt").write_bytes(b"x" * 1000)
        (out / "checkpoint.pt").unlink(missing_ok=True)
        os.link(out / "checkpoints" / "step-000004.pt", out / "checkpoint.pt")
        (out / "checkpoint-best.pt").write_bytes(b"b" * 10)
        return 0
    finally:
        (running / me).unlink()


if __name__ == "__main__":
    sys.exit(main())
