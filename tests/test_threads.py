"""``threads: auto``: the cores other processes keep busy, read from /proc/stat, decide the next step's threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from credit import threads
from credit.threads import ThreadPolicy, choose


@pytest.mark.parametrize("cores, others, expected", [
    (2, 0.0, 2), (2, 0.1, 2), (2, 0.3, 1), (2, 1.0, 1), (2, 2.0, 1), (8, 1.0, 7), (8, 2.9, 5), (1, 1.0, 1),
])
def test_choose_leaves_the_busy_cores(cores, others, expected):
    assert choose(cores, others) == expected


def test_fixed_and_default_policies(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert ThreadPolicy(1).before_step() == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(before)
        assert ThreadPolicy(None).before_step() == before  # unset: torch's own choice, untouched
    finally:
        torch.set_num_threads(before)


def test_auto_counts_other_processes_not_itself(monkeypatch):
    # fake /proc/stat readings: 3 busy CPU-seconds over 2 s of wall, 1 of them this process's own
    clock = iter([0.0, 2.0])
    busy = iter([10.0, 13.0])
    own = iter([5.0, 6.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads, "_busy_seconds", lambda cores: next(busy))
    monkeypatch.setattr(threads.time, "process_time", lambda: next(own))
    policy = ThreadPolicy("auto")
    policy.cores = [0, 1]
    assert policy.others_busy() == pytest.approx(1.0)  # (13 - 10 - (6 - 5)) / 2


def test_busy_seconds_reads_this_machines_proc_stat():
    cores = set(ThreadPolicy("auto").cores)
    first = threads._busy_seconds(cores)
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(2_000_000))  # keep a core busy for a moment
    second = threads._busy_seconds(cores)
    assert 0 < first <= second
    assert threads._busy_seconds(set()) == 0.0  # only the cores asked for are counted


@pytest.mark.parametrize("env, expected", [(None, 2), ("1", 1), ("4,2", 4), (" 3 ", 3), ("0", 1), ("many", 2)])
def test_auto_never_exceeds_omp_num_threads(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert threads.ceiling(2) == expected


def test_auto_on_an_idle_machine_stays_at_omp_num_threads(monkeypatch):
    # a sweep runs each training with OMP_NUM_THREADS=1: auto must not take the idle second core
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(ThreadPolicy, "others_busy", lambda self: 0.0)
    before = torch.get_num_threads()
    try:
        policy = ThreadPolicy("auto")
        policy.cores = [0, 1, 2, 3]
        assert policy.before_step() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        policy = ThreadPolicy("auto")
        policy.cores = [0, 1, 2, 3]
        assert policy.before_step() == 3  # min(ceiling 3, 4 free cores)
    finally:
        torch.set_num_threads(before)


def test_auto_is_the_default():
    from credit.config import TrainConfig

    assert TrainConfig().threads == "auto"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_makes_openmp_threads_sleep_unless_told_otherwise(given, expected):
    # OpenMP reads the policy once, when torch loads: the credit command must set it before that
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, sys, credit.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [expected, "False"]
