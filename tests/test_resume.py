"""Resume, proven: a run killed inside an update, killed inside a checkpoint write, or stopped by SIGINT or
SIGTERM continues from its last checkpoint (never from step 0) and ends bit-identical to a run that was
never interrupted: weights, EMA teacher, optimizer moments, schedule, and the global RNG.

The config is the hard case: warmup then linear decay (the schedule's position must be restored), two
epochs of two mini-batches (old log-probs, several optimizer steps per training step), gradient
accumulation, and attention dropout (the global RNG must be restored). Faults are injected at exact
points by ``_resume_worker.py`` (no timing); it also records which steps each process ran, outside
the code under test, so a restart from step 0 cannot pass for a resume.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from credit import checkpoint

WORKER = Path(__file__).parent / "_resume_worker.py"
STEPS = 4
OPT_STEPS_PER_STEP = 4  # optim.epochs=2 × optim.mini_batches=2
ARGS = ["device=cpu", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "optim.micro_batch=4", "optim.lr=1e-3", "task.options={answer_feedback: true}", "log.progress=false",
        "log.tensorboard=false", f"steps={STEPS}", "checkpoint_every=2", "optim.warmup_steps=2",
        "optim.schedule=linear", "optim.epochs=2", "optim.mini_batches=2", "eval.before=false",
        "eval.limit=2", "eval.samples=1"]


@pytest.fixture(scope="module")
def dropout_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with attention dropout, so that training draws from the global RNG."""
    import shutil

    path = tmp_path_factory.mktemp("tiny-dropout")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.1
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def start(model_dir, out: Path, hook: str = "none", n: int = 0, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), hook, str(n), str(out) + ".steps", "train", f"model.name={model_dir}",
         f"out_dir={out}", *ARGS, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def steps_run(out: Path) -> list[int]:
    """The steps every process that wrote into ``out`` ran, in order (recorded by the worker)."""
    path = Path(str(out) + ".steps")
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def metrics_rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss/total" in r]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    return {r["step"]: r for r in rows if "loss/total" in r}


def assert_same(a, b, where: str = "state") -> None:
    """Bit equality of two checkpoint trees (the computation is identical, so the bits must be)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):  # numpy's RNG state
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_resumed_exactly(ref: Path, out: Path) -> None:
    a, b = checkpoint.load(ref), checkpoint.load(out)
    assert a["step"] == b["step"] == STEPS - 1
    # what a resume must restore, each present (a comparison of two empty dicts proves nothing)
    assert a["teacher"] and a["optimizer"]["state"] and a["scheduler"]["last_epoch"] == STEPS * OPT_STEPS_PER_STEP
    assert a["rng"]["torch"].numel() > 0
    for key in ("model", "teacher", "optimizer", "scheduler", "rng", "skipped_steps"):
        assert_same(a[key], b[key], key)
    ra, rb = metrics_rows(ref), metrics_rows(out)
    assert sorted(rb) == list(range(STEPS))  # none missing, none twice
    for step in range(STEPS):
        assert ra[step]["loss/total"] == rb[step]["loss/total"], step
        assert ra[step]["loss/lr"] == rb[step]["loss/lr"], step


@pytest.fixture(scope="module")
def reference(dropout_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    code, err = finish(start(dropout_model_dir, out))
    assert code == 0, err[-3000:]
    assert steps_run(out) == list(range(STEPS))
    return out


def resume(model_dir, out: Path, *extra: str) -> tuple[str, dict]:
    before = len(steps_run(out))
    code, err = finish(start(model_dir, out, "none", 0, "--resume", *extra))
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return err, {"summary": summary, "ran": steps_run(out)[before:]}


def test_sigkill_inside_the_update_resumes_from_the_checkpoint_exactly(dropout_model_dir, reference, tmp_path):
    out = tmp_path / "run"
    # the 2nd optimizer step of step 2: its first mini-batch is already in the weights
    code, err = finish(start(dropout_model_dir, out, "kill-in-update", 2 * OPT_STEPS_PER_STEP + 2))
    assert code == -signal.SIGKILL, err[-3000:]
    assert steps_run(out) == [0, 1, 2]
    assert checkpoint.load(out)["step"] == 1  # checkpoint_every=2: the last one covers steps 0-1
    wall_at_kill = json.loads((out / "summary.json").read_text()).get("train_wall_s", 0.0)
    assert wall_at_kill > 0  # written with the checkpoint: a kill without warning keeps the run's time
    with open(out / "metrics.jsonl", "a") as f:  # what a crash in the middle of a write leaves
        f.write('{"step": 2, "task/rew')

    err, got = resume(dropout_model_dir, out)
    assert "resumed from" in err and f"at step 2 of {STEPS}" in err
    assert "torn last line" in err
    assert got["summary"]["resumed_from_step"] == 2
    assert got["ran"] == [2, 3]  # fewer steps than a restart, starting where the checkpoint ends
    assert got["summary"]["train_wall_s"] > wall_at_kill  # both processes' time
    assert_resumed_exactly(reference, out)


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(dropout_model_dir, reference, tmp_path):
    out = tmp_path / "run"
    code, err = finish(start(dropout_model_dir, out, "kill-in-checkpoint", 2))  # the write after step 3
    assert code == -signal.SIGKILL, err[-3000:]
    assert steps_run(out) == [0, 1, 2, 3]
    assert checkpoint.load(out)["step"] == 1  # the previous checkpoint still loads
    leftovers = list((out / "checkpoints").glob(".step-000004.pt.*.tmp"))
    assert leftovers and leftovers[0].stat().st_size > 0, "the kill did not land inside the write"
    assert not (out / "checkpoints" / "step-000004.pt").exists()

    err, got = resume(dropout_model_dir, out)
    assert got["summary"]["resumed_from_step"] == 2 and got["ran"] == [2, 3]
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert_resumed_exactly(reference, out)


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(dropout_model_dir, reference, tmp_path):
    out = tmp_path / "run"
    # Ctrl-C during the first optimizer step of step 2: the step is finished, then saved
    code, err = finish(start(dropout_model_dir, out, "sigint-in-update", 2 * OPT_STEPS_PER_STEP + 1))
    assert code == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("credit train: SIGINT: interrupted at step 3;") and "--resume" in last, last
    assert "Traceback" not in err
    assert steps_run(out) == [0, 1, 2]
    assert checkpoint.load(out)["step"] == 2

    err, got = resume(dropout_model_dir, out)
    assert got["summary"]["resumed_from_step"] == 3 and got["ran"] == [3]
    assert_resumed_exactly(reference, out)


def test_sigterm_from_outside_stops_after_the_current_step_with_exit_143(dropout_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(dropout_model_dir, out, "none", 0, "steps=100", "checkpoint_every=0")
    deadline = time.monotonic() + 300
    while len(steps_run(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143, err[-3000:]
    ran = steps_run(out)
    assert 2 <= len(ran) < 100
    # the step running when the signal came was finished and saved, with checkpoint_every=0
    assert checkpoint.load(out)["step"] == ran[-1]
    assert err.strip().splitlines()[-1].startswith(f"credit train: SIGTERM: interrupted at step {ran[-1] + 1};")
