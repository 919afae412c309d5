"""Atomic checkpoints: every file is written beside its final name, flushed to disk, then renamed over it.

Layout in the run directory:
  checkpoints/step-000010.pt   the last ``keep`` checkpoints, named by the number of completed steps
  checkpoints/step-000010.shards/
                               a sharded run's weights, teacher and optimizer state: every process
                               writes its own shards there (``write_shards``), and its step file holds
                               the rest (step, schedule, config, RNG) and the folder's name
  checkpoint.pt                the latest of them (a hard link: same bytes, no extra disk, and it
                               survives the pruning of its step file)
  checkpoint-best.pt           the student's weights at the best held-out accuracy (``save_best``)

A crash (even SIGKILL) during a write leaves the previous checkpoint intact: the new file or folder
becomes visible only by ``os.replace``, a step file is written only after its shards folder is
complete, and ``checkpoint.pt`` is repointed only after its step file is. A resumed
run reloads weights, teacher, optimizer, schedule, RNG and step, and because every random draw of a
step is seeded by (seed, step) it continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from credit.errors import SetupError, UserError

CHECKPOINT = "checkpoint.pt"
BEST = "checkpoint-best.pt"
STEP_DIR = "checkpoints"


def step_name(done_steps: int) -> str:
    return f"step-{done_steps:06d}.pt"


def _shards_of(step_file: Path) -> Path:
    return step_file.with_suffix(".shards")


def remove_entry(path: Path) -> None:
    """Delete a file or a folder with what it holds (a link: the link alone); nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry itself is data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointWriteError(SetupError):
    """A checkpoint could not be written (a full disk, a quota): one line naming the file, the free
    space and the checkpoint a ``--resume`` continues from, which the failed write did not touch."""


def _write_atomic(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a short write as a RuntimeError
            raise CheckpointWriteError(_write_failure(path, e)) from e
        raise
    _fsync_dir(path.parent)


def _write_failure(path: Path, error: BaseException) -> str:
    run_dir = path.parent.parent if path.parent.name == STEP_DIR else path.parent
    free = shutil.disk_usage(path.parent).free / 2**30
    latest = run_dir / CHECKPOINT
    kept = f"{latest} is intact: free space, then rerun with --resume" if latest.exists() else \
        "no earlier checkpoint exists: free space, then rerun"
    return (f"{path}: writing the checkpoint failed ({type(error).__name__}: {str(error).strip()}); "
            f"{free:.1f} GiB free on its disk; {kept}")


def _point_latest(run_dir: Path, target: Path) -> None:
    """``checkpoint.pt`` := ``target``, atomically: a hard link made under a temporary name, renamed
    over the old one (a copy where the file system has no hard links)."""
    tmp = run_dir / f".{CHECKPOINT}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, run_dir / CHECKPOINT)
    _fsync_dir(run_dir)


def write_shards(run_dir: str | Path, done_steps: int, write: Callable[[Path], None], main: bool,
                 barrier: Callable[[], None]) -> str:
    """A sharded checkpoint's folder ``checkpoints/step-<done_steps>.shards``: every process writes its shards
    into a temporary folder (``write(folder)``, a collective), then the main process renames it into place.
    Every process calls it; returns the folder's name, which ``save``'s step file then records."""
    steps_dir = Path(run_dir) / STEP_DIR
    final = _shards_of(steps_dir / step_name(done_steps))
    tmp = steps_dir / f".{final.name}.tmp"
    if main:
        steps_dir.mkdir(parents=True, exist_ok=True)
        remove_entry(tmp)
    barrier()
    try:
        write(tmp)
    except BaseException as e:  # torch.distributed.checkpoint raises its CheckpointException, a BaseException
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointWriteError(_write_failure(final, e)) from e
    barrier()  # every shard is on disk
    if main:
        old = steps_dir / f".{final.name}.old"
        if final.exists():  # the same step saved again (a run resumed from an earlier checkpoint)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(steps_dir)
        remove_entry(old)
    return final.name


def save(run_dir: str | Path, state: dict, keep: int = 1) -> Path:
    """Write ``state`` (with ``state["step"]`` the 0-based last completed step) as
    ``checkpoints/step-<step+1>.pt``, point ``checkpoint.pt`` at it, keep the newest ``keep`` step files
    (with their shards folders: ``write_shards``, written before)."""
    run_dir = Path(run_dir)
    steps_dir = run_dir / STEP_DIR
    steps_dir.mkdir(parents=True, exist_ok=True)
    for stale in steps_dir.glob(".*.tmp"):  # what a process killed mid-write left; only one process writes here
        remove_entry(stale)
    path = steps_dir / step_name(state["step"] + 1)
    _write_atomic(path, state)
    _point_latest(run_dir, path)
    for old in sorted(steps_dir.glob("step-*.pt"))[:-keep]:
        if old != path:
            old.unlink()
    for shards in steps_dir.glob("step-*.shards"):  # pruned with its step file, or never given one (a crash)
        if not shards.with_suffix(".pt").exists():
            shutil.rmtree(shards)
    return run_dir / CHECKPOINT


def remove_resume_state(run_dir: str | Path) -> int:
    """Delete ``checkpoint.pt`` and ``checkpoints/step-*.pt`` (weights, teacher, optimizer: what
    ``--resume`` needs), keeping ``checkpoint-best.pt``; the bytes freed (a hard link counted once)."""
    run_dir = Path(run_dir)
    paths = [p for p in (run_dir / CHECKPOINT, *(run_dir / STEP_DIR).glob("step-*.pt")) if p.is_file()]
    shards = [p for p in (run_dir / STEP_DIR).glob("step-*.shards") if p.is_dir()]
    files = paths + [f for folder in shards for f in folder.rglob("*") if f.is_file()]
    sizes = {(st.st_dev, st.st_ino): st.st_size for st in map(Path.stat, files)}
    for path in paths:
        path.unlink()
    for folder in shards:
        shutil.rmtree(folder)
    return sum(sizes.values())


def save_best(run_dir: str | Path, state: dict) -> Path:
    """``checkpoint-best.pt``: only what ``credit eval --model`` needs (step, weights, config, eval)."""
    path = Path(run_dir) / BEST
    _write_atomic(path, state)
    return path


def load_file(path: str | Path) -> dict:
    """A checkpoint written by ``save``; an unreadable file is a one-line error naming it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - atomic renames mean we never leave a partial file; this one is foreign
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); give another checkpoint "
                        "(--resume PATH) or start over with --overwrite") from None
    if not isinstance(state, dict) or "step" not in state or not ("model" in state or "shards" in state):
        raise UserError(f"{path}: not a training checkpoint (no 'step' and 'model'); give the run's checkpoint.pt")
    if "shards" in state:  # a sharded run's: its step file and shards folder sit in checkpoints/
        where = [path.parent / STEP_DIR, path.parent]
        folder = next((d / state["shards"] for d in where if (d / state["shards"]).is_dir()), None)
        if folder is None:
            raise UserError(f"{path}: the folder of its shards, {state['shards']}, is in neither "
                            f"{where[0]} nor {where[1]}; give a checkpoint whose folder is there")
        state["shards"] = folder
    return state


def load(run_dir: str | Path) -> dict | None:
    """The latest checkpoint of a run directory, or None when it has none."""
    path = Path(run_dir) / CHECKPOINT
    return load_file(path) if path.exists() else None
