"""Threads on a busy machine: a training step under candidate thread settings, alone and beside a competitor.

For each setting (threads = cores, cores − 1, or ``auto`` — re-chosen before each step from what
other processes used, ``credit.threads``; OpenMP's default spin-then-sleep wait or
``OMP_WAIT_POLICY=PASSIVE``) and each condition (idle; beside a one-thread busy loop; beside a second
one-thread `credit bench` standing in for another training run), one `credit bench` process times an
SDPO step on SmolLM2-135M-Instruct (rollout, teacher pass, update) and reports median seconds. The
competitor is started before and killed after each measurement; settings and conditions are
interleaved in rounds, so a drifting machine slows all alike.

Run it on an otherwise idle machine (it makes its own competition):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/contention.py --json benchmarks/results/contention_cpu.json

The table it prints is the one in BENCHMARKS.md; "worst / idle" is the figure a default should minimize.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the step each measurement times: `credit bench` method and batch
STEPS = {
    "sdpo": ("sdpo-token", ["-B", "4", "-G", "4", "--prompt-len", "32", "--response-len", "24"]),
    # the quickstart's shape: CREDIT (token, K = 1) on 8 prompts × 8 rollouts, 24 tokens, micro-batch 32
    "quickstart": ("credit-token-k1", ["-B", "8", "-G", "8", "--prompt-len", "16", "--response-len", "24",
                                       "--micro-batch", "32"]),
}
BENCH_ARGS = ["bench", "--warmup", "1"]
BENCH = [sys.executable, "-m", "credit.cli", *BENCH_ARGS]
# The `credit` command sets OMP_WAIT_POLICY=PASSIVE unless told otherwise; OpenMP reads it when torch loads,
# so a process that loads torch first keeps OpenMP's own spin-then-sleep default (the settings without ", passive").
BENCH_SPIN = [sys.executable, "-c", "import sys, torch; from credit.cli import main; sys.exit(main())", *BENCH_ARGS]
BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


def settings(cores: int) -> dict[str, tuple[dict[str, str], list[str]]]:
    """label -> (environment, extra `credit bench` arguments) of the measured process."""
    out = {}
    for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
        fixed = ["--threads", str(threads)]
        out[f"threads={threads}"] = ({"OMP_NUM_THREADS": str(threads)}, fixed)
        out[f"threads={threads}, passive"] = ({"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}, fixed)
    out["threads=auto"] = ({"OMP_NUM_THREADS": str(cores)}, ["--threads", "auto"])
    out["threads=auto, passive"] = ({"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "auto"])
    return out


def competitor(kind: str, model: str, step: str) -> subprocess.Popen | None:
    if kind == "idle":
        return None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = BUSY_LOOP if kind == "busy loop" else [*BENCH, *step_args(step), "--model", model, "--repeats", "1000"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3 if kind == "busy loop" else 20)  # let a bench competitor load its model and start stepping
    return proc


def step_args(step: str) -> list[str]:
    method, batch = STEPS[step]
    return ["--methods", method, *batch]


def measure(env: dict[str, str], extra: list[str], model: str, repeats: int, step: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        spin = "OMP_WAIT_POLICY" not in env
        argv = [*(BENCH_SPIN if spin else BENCH), *step_args(step), *extra, "--model", model, "--repeats", str(repeats),
                "--json", str(out)]
        base = {k: v for k, v in os.environ.items() if not (spin and k == "OMP_WAIT_POLICY")}
        subprocess.run(argv, env={**base, **env}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = json.loads(out.read_text())["methods"][STEPS[step][0]]["seconds"]
    return {"step": seconds["step"], "rollout": seconds["rollout"], "update": seconds["update"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (default 3)")
    ap.add_argument("--rounds", type=int, default=1, help="times each (setting, condition) is measured")
    ap.add_argument("--conditions", default="idle,busy loop,second run")
    ap.add_argument("--settings", help="only these labels, '|'-separated (default: all)")
    ap.add_argument("--step", choices=sorted(STEPS), default="sdpo", help="the step timed: an SDPO step at "
                    "B 4 × G 4 (the table's), or a CREDIT step at the quickstart's 8 × 8")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    conditions = tuple(args.conditions.split(","))
    chosen = settings(cores)
    if args.settings:
        chosen = {label: chosen[label] for label in args.settings.split("|")}
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for condition in conditions:
            for label, (env, extra) in chosen.items():
                proc = competitor(condition, args.model, args.step)
                try:
                    runs.setdefault((label, condition), []).append(measure(env, extra, args.model, args.repeats, args.step))
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
                r = runs[(label, condition)][-1]
                print(f"{label:22s} {condition:11s} step {r['step']:7.2f} s  rollout {r['rollout']:6.2f} s  "
                      f"update {r['update']:6.2f} s", flush=True)
    table = {}
    for label in chosen:
        row = {c: {k: statistics.median(r[k] for r in runs[(label, c)]) for k in ("step", "rollout", "update")}
               for c in conditions}
        idle = row["idle"]["step"]
        row["worst_over_idle"] = max(row[c]["step"] for c in conditions) / idle
        table[label] = row
    best_idle = min(t["idle"]["step"] for t in table.values())
    print(f"\n{cores} cores; seconds per {STEPS[args.step][0]} step (median of {args.repeats}); worst/idle = slowest condition / own idle")
    print(f"{'setting':22s}" + "".join(f"{c:>12s}" for c in conditions) + f"{'worst/idle':>12s}{'idle/best':>11s}")
    for label, t in table.items():
        print(f"{label:22s}" + "".join(f"{t[c]['step']:12.2f}" for c in conditions)
              + f"{t['worst_over_idle']:12.2f}{t['idle']['step'] / best_idle:11.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"cores": cores, "model": args.model, "repeats": args.repeats, "step": args.step,
                                                   "table": table}, indent=1))


if __name__ == "__main__":
    main()
