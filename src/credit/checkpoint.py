"""Atomic checkpoints: one file written beside its final name, flushed to disk, then renamed over it.

A crash (even SIGKILL) during a write leaves the previous checkpoint intact; a resumed run reloads
weights, teacher, optimizer, schedule and step, and because every random draw of a step is seeded by
(seed, step) it continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save(run_dir: str | Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file we did not write completely cannot exist (atomic rename)
        raise RuntimeError(f"{path}: unreadable checkpoint ({e}); move it away to start fresh") from e
