"""``credit train ARGS`` in this process, with a fault injected at an exact point (for test_resume.py).

    python _resume_worker.py HOOK N STEPS_FILE train ARGS...

HOOK, on the N-th (1-based) occurrence of its event:
  none               no fault
  kill-in-update     SIGKILL right after the N-th optimizer step (AdamW.step): the weights have taken a
                     mini-batch's update, the training step is not finished, nothing of it was saved
  kill-in-checkpoint SIGKILL after half of the N-th checkpoint's bytes reached its temporary file
  sigint-in-update   SIGINT to itself after the N-th optimizer step: the run must finish that step,
                     save a checkpoint and exit 130

Every training step this process runs is appended to STEPS_FILE (one 0-based step per line), counted
here, outside the code under test, so a test can tell a resume from a restart.
"""

import io
import os
import signal
import sys

import torch

HOOK, N, STEPS_FILE, ARGS = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
calls = {"optimizer": 0, "checkpoint": 0}

real_adamw_step = torch.optim.AdamW.step


def adamw_step(self, *args, **kwargs):
    out = real_adamw_step(self, *args, **kwargs)
    calls["optimizer"] += 1
    if calls["optimizer"] == N and HOOK == "kill-in-update":
        os.kill(os.getpid(), signal.SIGKILL)
    if calls["optimizer"] == N and HOOK == "sigint-in-update":
        os.kill(os.getpid(), signal.SIGINT)
    return out


real_save = torch.save


def save(obj, f, *args, **kwargs):
    is_checkpoint = isinstance(obj, dict) and "optimizer" in obj  # not checkpoint-best.pt or a model shard
    if is_checkpoint:
        calls["checkpoint"] += 1
    if is_checkpoint and HOOK == "kill-in-checkpoint" and calls["checkpoint"] == N:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.optim.AdamW.step = adamw_step
torch.save = save

import credit.train  # noqa: E402

real_run_step = credit.train.Trainer.run_step


def run_step(self, step, *args, **kwargs):
    with open(STEPS_FILE, "a") as fh:
        fh.write(f"{step}\n")
    return real_run_step(self, step, *args, **kwargs)


credit.train.Trainer.run_step = run_step

from credit.cli import main  # noqa: E402

sys.exit(main(ARGS))
