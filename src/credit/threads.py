"""CPU threads on a shared machine: as many intra-op threads as there are cores nobody else is using.

With as many OpenMP threads as cores, every parallel region waits for its slowest thread; when another
process takes a core, that thread runs at a fraction of its speed and the whole step slows down by far
more than the share of the machine that was lost (BENCHMARKS.md: 2–6× beside one light process).
``threads: auto`` asks, before each step, how many of this process's cores the *other* processes kept
busy during the last step (``/proc/stat`` for the cores this process may run on, minus this process's
own CPU time) and runs the step with the rest — all cores on an idle machine, one fewer beside a
busy neighbour, never fewer than one, and never more than ``OMP_NUM_THREADS`` when the environment
sets it (so a sweep's one-thread runs stay at one). It is the default.

The other half of surviving a busy machine is OpenMP's wait policy, which must be set before torch
loads: by default an idle OpenMP thread spins before it sleeps, and a spinning thread steals the core
a neighbour needed. The ``credit`` command sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment
already sets it (``credit.cli``). Beside a one-thread busy loop an SDPO step on two cores then took
1.5× its idle time instead of 3.1×, for 6% on the idle machine (BENCHMARKS.md §5).
"""

from __future__ import annotations

import os
import time

import torch


def _busy_seconds(cores: set[int]) -> float | None:
    """CPU seconds the given cores spent busy since boot (all processes), or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


class ThreadPolicy:
    """``threads``: an int (fixed), None (torch's default) or ``"auto"`` (re-chosen by ``before_step``)."""

    def __init__(self, threads: int | str | None):
        self.threads = threads
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        self.most = ceiling(len(self.cores))
        if isinstance(threads, int):
            torch.set_num_threads(threads)
        self._last = self._sample()

    def _sample(self) -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(set(self.cores)), time.process_time()

    def others_busy(self) -> float | None:
        """Cores the other processes kept busy since the last call (0 … len(cores)), or None if unknown."""
        (wall0, busy0, own0), (wall1, busy1, own1) = self._last, self._sample()
        self._last = (wall1, busy1, own1)
        if busy0 is None or busy1 is None or wall1 - wall0 < 0.05:
            return None
        return min(max((busy1 - busy0 - (own1 - own0)) / (wall1 - wall0), 0.0), float(len(self.cores)))

    def before_step(self) -> int:
        """Set and return the threads for the next step."""
        if self.threads == "auto":
            others = self.others_busy()
            if others is not None:
                torch.set_num_threads(min(self.most, choose(len(self.cores), others)))
        return torch.get_num_threads()


def ceiling(cores: int) -> int:
    """auto's most threads: ``OMP_NUM_THREADS`` when set (its first number, as OpenMP reads "4,2"), else the cores."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return max(1, int(first)) if first.isdigit() else cores


def choose(cores: int, others_busy: float) -> int:
    """Threads for ``cores`` cores of which ``others_busy`` are taken: the free ones, at least one.
    A neighbour that used more than a fifth of a core counts as a taken core."""
    return max(1, min(cores, cores - int(others_busy + 0.8)))
