"""credit sweep: study files, grid expansion, skip/resume, N at a time, failures, the aggregate.

The runner is driven with a fake ``credit train`` (tests/_fake_train.py) that writes what a run writes
with planned numbers, so the aggregate can be checked by hand; one smoke test runs the real command
on the tiny model.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from credit.analysis import sweep
from credit.cli import main as cli_main
from credit.errors import UserError

FAKE = [sys.executable, str(Path(__file__).parent / "_fake_train.py")]
BASE_CONFIG = {"method": "credit", "steps": 4, "eval": {"samples": 4}, "log": {"progress": False}}


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    """A working directory with a base config; the fake's state folder in $FAKE_TRAIN_DIR."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE_CONFIG))
    (tmp_path / "fake").mkdir()
    monkeypatch.setenv("FAKE_TRAIN_DIR", str(tmp_path / "fake"))
    monkeypatch.delenv("FAKE_BARRIER", raising=False)
    monkeypatch.setattr(sweep, "TRAIN_COMMAND", tuple(FAKE))  # what `credit sweep` on the CLI starts
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run locks: not in the machine's /tmp
    return tmp_path


def write_study(path: Path, **fields) -> Path:
    study = {"name": "t", "base": "base.yaml", "runs": "runs", "seeds": [0, 1], "common": ["eval.every=2"],
             "cells": {"a": ["method=grpo"], "b": ["method=sdpo", "credit.grpo_weight=0.9"]}, **fields}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def plan(study_dir: Path, entries: dict) -> None:
    (study_dir / "fake" / "plan.json").write_text(json.dumps(entries))


def calls(study_dir: Path) -> list[dict]:
    folder = study_dir / "fake" / "calls"
    return [json.loads(p.read_text()) for p in sorted(folder.iterdir())] if folder.exists() else []


def run(study_path: Path, lines: list[str], **kw) -> dict:
    return sweep.run_sweep(sweep.load_study(study_path), train_cmd=FAKE, report=False, echo=lines.append, **kw)


# ----------------------------------------------------------------------------- the study file


def test_grid_expands_seed_major_with_common_overrides(study_dir):
    study = sweep.load_study(write_study(study_dir / "s.yaml", seeds=[3, 5]))
    specs = sweep.expand(study)
    assert [(s.cell, s.seed) for s in specs] == [("a", 3), ("b", 3), ("a", 5), ("b", 5)]
    assert specs[1].out_dir == Path("runs/b/seed3")
    assert specs[1].overrides == ("eval.every=2", "method=sdpo", "credit.grpo_weight=0.9")
    assert sweep.command(specs[1], study.base, ["credit", "train"]) == [
        "credit", "train", "base.yaml", "eval.every=2", "method=sdpo", "credit.grpo_weight=0.9", "seed=3",
        "out_dir=runs/b/seed3", "--resume"]
    assert study.out == study_dir / "t"  # <study file's folder>/<name>


@pytest.mark.parametrize("change, message", [
    ({"cells": {"a": ["method grpo"]}}, r"s.yaml:\d+: field 'cells.a': override 'method grpo' must look like"),
    ({"cells": {"a": ["seed=4"]}}, r"s.yaml:\d+: field 'cells.a': seed is set by the sweep"),
    ({"cells": {"a b": []}}, r"field 'cells.a b': a cell name is a directory name"),
    ({"seeds": [0, 0]}, r"s.yaml:4: field 'seeds': expected a non-empty list of distinct integers"),
    ({"base": "missing.yaml"}, r"s.yaml:2: field 'base': config file missing.yaml does not exist"),
    ({"compare": [["a", "c"]]}, r"field 'compare': each entry is \[cell A, cell B\]"),
    ({"seed": [0]}, r"s.yaml:\d+: field 'seed': unknown field"),
    ({"cells": {"a": ["credit.lamda=0.3"]}}, r"s.yaml:\d+: cell 'a': .*credit.lamda: unknown key"),
])
def test_bad_study_is_one_line_naming_file_line_and_field(study_dir, change, message, capsys):
    path = write_study(study_dir / "s.yaml", **change)
    assert cli_main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credit sweep: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert calls(study_dir) == []


# ----------------------------------------------------------------------------- running


def test_runs_every_cell_and_seed_with_one_thread_and_logs(study_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the runner must override what the caller had
    lines = []
    agg = run(write_study(study_dir / "s.yaml"), lines, jobs=2)
    got = calls(study_dir)
    assert sorted(c["key"] for c in got) == ["a/seed0", "a/seed1", "b/seed0", "b/seed1"]
    assert all(c["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"} for c in got)
    assert all(c["argv"][-1] == "--resume" for c in got)
    log = (study_dir / "runs/b/seed1/train.log").read_text()
    assert "credit sweep:" in log and "fake train b/seed1" in log  # the header, then the run's stdout
    assert sum(ln.startswith("[") for ln in lines) == 4  # one line per finished run
    assert {r["status"] for r in agg["runs"]} == {"ran"}
    assert (study_dir / "t" / "aggregate.json").exists()


def test_finished_runs_are_skipped_and_unfinished_resumed(study_dir):
    path = write_study(study_dir / "s.yaml", seeds=[0])
    run(path, [])
    assert len(calls(study_dir)) == 2
    # seed 1 of cell b was interrupted: it logged steps but has no eval_after
    partial = study_dir / "runs/b/seed1"
    partial.mkdir(parents=True)
    (partial / "metrics.jsonl").write_text('{"step": 0, "eval/mean@4": 0.25}\n')
    (partial / "summary.json").write_text('{"eval_before": {"mean@4": 0.25}}')
    write_study(path, seeds=[0, 1])
    lines = []
    agg = run(path, lines)
    second = [c for c in calls(study_dir) if c["key"].endswith("seed1")]
    assert len(calls(study_dir)) == 4  # seed 0 of both cells was not run again
    assert sorted(c["key"] for c in second) == ["a/seed1", "b/seed1"]
    resumed = next(c for c in second if c["key"] == "b/seed1")
    assert resumed["existed"] and resumed["argv"][-1] == "--resume"
    assert sum("(finished earlier)" in ln for ln in lines) == 2
    assert [ln for ln in lines if "resumed" in ln] == [next(ln for ln in lines if "b seed1:" in ln)]
    assert "(resumed at step 1)" in next(ln for ln in lines if "b seed1:" in ln)
    assert [r["status"] for r in agg["runs"]] == ["skipped", "skipped", "ran", "ran"]
    # nothing left: a third sweep starts nothing
    run(path, [])
    assert len(calls(study_dir)) == 4


def test_n_runs_at_a_time(study_dir, monkeypatch):
    path = write_study(study_dir / "s.yaml", seeds=[0, 1, 2], cells={"a": []})
    # each run waits until two runs have started: with --jobs 2 the first two meet while both run
    monkeypatch.setenv("FAKE_BARRIER", "2")
    run(path, [], jobs=2)
    got = calls(study_dir)
    assert max(c["running_seen"] for c in got) == 2  # two overlapped ...
    assert all(c["running_at_start"] <= 2 for c in got)  # ... never three
    # --jobs 1: every run starts alone
    monkeypatch.delenv("FAKE_BARRIER")
    for sub in ("calls", "started", "running"):
        for p in (study_dir / "fake" / sub).iterdir():
            p.unlink()
    write_study(path, seeds=[0, 1, 2], cells={"c": []})
    run(path, [], jobs=1)
    assert [c["running_seen"] for c in calls(study_dir)] == [1, 1, 1]


def test_failed_run_is_reported_and_the_rest_still_run(study_dir, capsys):
    plan(study_dir, {"b/seed0": {"exit": 3}})
    path = write_study(study_dir / "s.yaml")
    assert cli_main(["sweep", str(path), "--no-report"]) == 1  # a failure shows in the exit status
    out = capsys.readouterr().out
    failed = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert len(failed) == 1
    assert "b seed0: FAILED (exit 3)" in failed[0] and "credit train: error: boom" in failed[0]
    assert "runs/b/seed0/train.log" in failed[0]
    assert "1 run(s) did not finish: b seed0" in out
    agg = json.loads((study_dir / "t" / "aggregate.json").read_text())
    assert agg["cells"]["b"]["failed"] == [0] and agg["cells"]["b"]["seeds"] == [1]
    assert agg["cells"]["a"]["seeds"] == [0, 1]
    # the next sweep tries the failed run again (it is not finished), and only it
    plan(study_dir, {})
    assert cli_main(["sweep", str(path), "--no-report"]) == 0
    assert sorted(c["key"] for c in calls(study_dir)).count("b/seed0") == 2
    assert len(calls(study_dir)) == 5


@pytest.mark.parametrize("signum", [2, 15])
def test_an_interrupted_run_is_listed_as_interrupted_not_failed(study_dir, signum, capsys):
    plan(study_dir, {"b/seed0": {"signal": signum}})
    path = write_study(study_dir / "s.yaml")
    assert cli_main(["sweep", str(path), "--no-report"]) == 1  # the study is not finished
    out = capsys.readouterr().out
    assert "FAILED" not in out and "did not finish" not in out
    line = next(ln for ln in out.splitlines() if "b seed0:" in ln)
    assert "interrupted after" in line and "the next sweep resumes it" in line and f"signal {signum}" in line
    assert "1 run(s) interrupted (checkpointed; the next sweep resumes them): b seed0" in out
    agg = json.loads((study_dir / "t" / "aggregate.json").read_text())
    assert agg["cells"]["b"]["interrupted"] == [0] and agg["cells"]["b"]["failed"] == []
    assert [r["status"] for r in agg["runs"] if r["cell"] == "b"] == ["interrupted", "ran"]
    plan(study_dir, {})  # the next sweep resumes it, and only it
    assert cli_main(["sweep", str(path), "--no-report"]) == 0
    assert [c["key"] for c in calls(study_dir)].count("b/seed0") == 2 and len(calls(study_dir)) == 5


def test_prune_checkpoints_deletes_only_finished_runs_resume_state(study_dir, capsys):
    plan(study_dir, {"b/seed0": {"signal": 15}})
    path = write_study(study_dir / "s.yaml", seeds=[0])
    assert cli_main(["sweep", str(path), "--no-report", "--prune-checkpoints"]) == 1
    out = capsys.readouterr().out
    assert [ln.strip() for ln in out.splitlines() if "pruned" in ln] == ["pruned 0.0 GiB of resume checkpoints in runs/a/seed0"]
    finished = study_dir / "runs/a/seed0"
    assert not (finished / "checkpoint.pt").exists() and not list((finished / "checkpoints").iterdir())
    assert (finished / "checkpoint-best.pt").exists() and (finished / "summary.json").exists()
    with pytest.raises(ValueError, match="not finished"):  # an unfinished run keeps what it resumes from
        sweep.prune_checkpoints(study_dir / "runs/b/seed0")
    plan(study_dir, {})
    run(path, [])  # without the flag, b's finished run keeps its checkpoints
    assert (study_dir / "runs/b/seed0/checkpoint.pt").exists()
    assert sweep.prune_checkpoints(study_dir / "runs/b/seed0") == 1000  # one file, two links: counted once


def test_a_run_held_by_another_sweep_is_left_alone(study_dir):
    from filelock import FileLock

    path = write_study(study_dir / "s.yaml", seeds=[0])
    lines = []
    with FileLock(sweep._lock_path(Path("runs/b/seed0"))):  # another sweep is training b seed0
        agg = run(path, lines)
    assert [c["key"] for c in calls(study_dir)] == ["a/seed0"]
    assert any("b seed0: running in another sweep" in ln for ln in lines)
    assert [r["status"] for r in agg["runs"]] == ["ran", "busy"] and agg["cells"]["b"]["seeds"] == []
    run(path, [])  # released: the next sweep runs it
    assert sorted(c["key"] for c in calls(study_dir)) == ["a/seed0", "b/seed0"]


def test_aggregate_only_starts_nothing(study_dir, capsys):
    path = write_study(study_dir / "s.yaml", seeds=[0])
    plan(study_dir, {"a/seed0": {"after": 0.75}})
    run(path, [])
    write_study(path, seeds=[0, 1])
    partial = study_dir / "runs/b/seed1"  # a run another sweep stopped after two steps
    partial.mkdir(parents=True)
    (partial / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "perf/step_s": 1.0}) + "\n" for i in range(2)))
    assert cli_main(["sweep", str(path), "--aggregate-only", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "t: 2 of 4 runs finished; started nothing" in out
    assert "1 run(s) started and not finished (the next sweep resumes them): b seed1 (2 steps logged)" in out
    assert len(calls(study_dir)) == 2
    agg = json.loads((study_dir / "t" / "aggregate.json").read_text())
    assert agg["cells"]["a"]["after"] == {"mean": 0.75, "std": None, "n": 1}
    assert [r["status"] for r in agg["runs"]] == ["skipped", "skipped", "not run", "not run"]


def test_dry_run_prints_commands_and_starts_nothing(study_dir, capsys):
    path = write_study(study_dir / "s.yaml", seeds=[0])
    run(path, [])
    write_study(path, seeds=[0, 1])
    assert cli_main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# finished, skipped: a seed0 (runs/a/seed0)"
    cmd = next(ln for ln in out if "out_dir=runs/b/seed1" in ln)
    assert cmd.startswith("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ")
    assert (f"{shlex.join(FAKE)} base.yaml eval.every=2 method=sdpo credit.grpo_weight=0.9 seed=1 "
            "out_dir=runs/b/seed1 --resume > runs/b/seed1/train.log 2>&1") in cmd
    assert out[-1] == "# 2 of 4 runs to do, 2 at a time"
    assert len(calls(study_dir)) == 2 and not (study_dir / "runs/a/seed1").exists()


def test_a_run_made_with_other_settings_is_refused(study_dir):
    path = write_study(study_dir / "s.yaml", seeds=[0])
    run(path, [])
    write_study(path, seeds=[0], cells={"a": ["method=grpo", "optim.lr=0.001"], "b": ["method=sdpo"]})
    with pytest.raises(UserError, match=r"runs/a/seed0/config.yaml: .* cell 'a' .*optim.lr: 1e-05 in the run, 0.001 now"):
        run(path, [])
    assert len(calls(study_dir)) == 2


def test_a_run_that_differs_only_in_threads_is_not_refused(study_dir):
    """Every sweep run computes on one thread (OMP_NUM_THREADS=1), so a thread setting changed since the
    run was made (the default went from unset to auto) must not strand it; any other setting still must."""
    path = write_study(study_dir / "s.yaml", seeds=[0], cells={"a": ["method=grpo", "threads=null"]})
    run(path, [])
    assert yaml.safe_load((study_dir / "runs/a/seed0/config.yaml").read_text())["threads"] is None
    write_study(path, seeds=[0], cells={"a": ["method=grpo"]})  # threads: auto, the default
    run(path, [])
    assert len(calls(study_dir)) == 1  # finished, so skipped, and not refused
    write_study(path, seeds=[0], cells={"a": ["method=grpo", "threads=2"]})
    run(path, [])
    write_study(path, seeds=[0], cells={"a": ["method=grpo", "steps=5"]})
    with pytest.raises(UserError, match=r"steps: 4 in the run, 5 now"):
        run(path, [])


REPO = Path(__file__).parents[1]
STUDY_FILES = sorted(REPO.glob("study/*.yaml"))


def test_the_committed_study_files_are_found():
    assert {p.stem for p in STUDY_FILES} >= {"addition", "addition-explore", "multiplication"}


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_the_committed_studies_still_describe_their_committed_runs(path, monkeypatch):
    """STUDY.md's figures come from the run directories under study/runs/ and are reproduced by
    `credit sweep study/<name>.yaml`. A config default or field changed since (or a study file edited)
    would make that command mean other settings than the ones measured: check_configs refuses it."""
    monkeypatch.chdir(REPO)  # study files name their base config and run folders from the repo root
    study = sweep.load_study(path)
    specs = sweep.expand(study)
    assert any((s.out_dir / "config.yaml").is_file() for s in specs), \
        f"{path}: no committed run directory (study/runs/...) to check against"
    sweep.check_configs(study, specs)


# ----------------------------------------------------------------------------- the aggregate


def test_best_within_run_skips_the_evaluation_before_training():
    rows = [{"step": 0, "time_s": 0, "eval/mean@4": 0.9},  # before training: not a result of the run
            {"step": 0, "perf/step_s": 1.0},
            {"step": 1, "perf/step_s": 1.0, "eval/mean@4": 0.5},  # after the update of step 1: 2 steps done
            {"step": 3, "perf/step_s": 1.0, "eval/mean@4": 0.75},  # 4 steps done
            {"step": 4, "time_s": 9, "eval/mean@4": 0.7}]  # the final evaluation, 4 steps done
    assert sweep.best_within_run(rows, "mean@4") == (0.75, 4)
    assert sweep.best_within_run(rows[:3], "mean@4") == (0.5, 2)
    assert sweep.best_within_run(rows[:2], "mean@4") == (None, None)


def test_aggregate_numbers_by_hand(study_dir):
    plan(study_dir, {
        # cell a: after 0.5 and 0.7 -> mean 0.6, sample std sqrt((0.1² + 0.1²) / 1) = 0.1414
        "a/seed0": {"before": 0.9, "after": 0.5, "periodic": {1: 0.6}, "step_s": [1, 3, 2, 10],
                    "items": [[1, 1], [0, 0], [1, 0]]},
        "a/seed1": {"after": 0.7, "periodic": {1: 0.8, 3: 0.1}, "step_s": [4, 4, 5, 100],
                    "items": [[1, 1], [1, 0], [1, 0]]},
        # cell b: every item 0.5 lower than a's, on both seeds
        "b/seed0": {"after": 0.25, "items": [[0.5, 0.5], [0, 0], [0, 0]]},
        "b/seed1": {"after": 0.25, "items": [[0.5, 0.5], [0, 0], [0, 0]]},
    })
    lines = []
    agg = run(write_study(study_dir / "s.yaml", compare=[["a", "b"]]), lines)
    a = agg["cells"]["a"]
    assert a["after"]["mean"] == pytest.approx(0.6, abs=1e-15) and a["after"]["n"] == 2
    assert a["after"]["std"] == pytest.approx(math.sqrt(0.02), abs=1e-15)
    assert a["before"]["mean"] == pytest.approx((0.9 + 0.25) / 2, abs=1e-15)
    # best: seed 0 max(0.6 periodic, 0.5 final) = 0.6 (its 0.9 before training does not count);
    # seed 1 max(0.8, 0.1, 0.7) = 0.8 -> mean 0.7
    assert [r["best"] for r in agg["runs"] if r["cell"] == "a"] == [0.6, 0.8]
    assert a["best"]["mean"] == pytest.approx(0.7, abs=1e-15)
    # median step time: seed 0 median(1, 3, 2, 10) = 2.5, seed 1 median(4, 4, 5, 100) = 4.5 -> mean 3.5
    assert a["step_s_median"]["mean"] == 3.5
    assert a["overrides"] == ["eval.every=2", "method=grpo"]
    # a − b per item: seed 0 (1−0.5, 0−0, 0.5−0), seed 1 (1−0.5, 0.5−0, 0.5−0) -> mean 2.5/6
    (cmp,) = agg["comparisons"]
    assert cmp["diff"] == pytest.approx(2.5 / 6, abs=1e-15)
    assert cmp["n_seeds"] == 2 and cmp["n_items"] == 3
    # every difference is >= 0 and a replicate is 0 only if it draws seed 0 twice and item 1 thrice
    # (probability 1/4 · 1/27 < 2.5%), so the interval is above 0 and below the largest difference
    assert 0 < cmp["low"] <= cmp["diff"] <= cmp["high"] <= 0.5
    assert cmp["verdict"] == "a > b"
    # the printed line of a finished run
    line = next(ln for ln in lines if "a seed0:" in ln)
    assert "held-out mean@4 0.900 -> 0.500, best 0.600 @ step 2, 2.5 s/step" in line
    assert json.loads((study_dir / "t" / "aggregate.json").read_text())["cells"]["a"]["best"]["n"] == 2


def test_comparison_without_a_common_seed_is_reported_not_raised(study_dir):
    plan(study_dir, {"b/seed0": {"exit": 1}})
    lines = []
    agg = run(write_study(study_dir / "s.yaml", seeds=[0], compare=[["a", "b"]]), lines)
    assert "share no seed" in agg["comparisons"][0]["error"]
    assert any(ln.startswith("a − b: not computed") for ln in lines)


def test_a_one_seed_comparison_says_its_interval_is_item_noise_only(study_dir):
    plan(study_dir, {"a/seed0": {"items": [[1, 1], [1, 0]]}, "b/seed0": {"items": [[0, 0], [1, 0]]},
                     "a/seed1": {"items": [[1, 1], [1, 0]]}, "b/seed1": {"items": [[0, 0], [1, 0]]}})
    one, two = [], []
    run(write_study(study_dir / "one.yaml", seeds=[0], compare=[["a", "b"]]), one)
    run(write_study(study_dir / "two.yaml", seeds=[0, 1], compare=[["a", "b"]]), two)
    assert any(ln.startswith("a − b: +0.500") and "item noise only" in ln for ln in one)
    assert any(ln.startswith("a − b: +0.500") and "item noise" not in ln for ln in two)


# ----------------------------------------------------------------------------- the real command


def test_real_sweep_on_the_tiny_model(study_dir, tiny_model_dir):
    base = {"device": "cpu", "model": {"name": tiny_model_dir}, "steps": 2, "checkpoint_every": 0,
            "rollout": {"prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 4},
            "optim": {"micro_batch": 4}, "eval": {"every": 1, "limit": 2, "samples": 2},
            "log": {"progress": False, "tensorboard": False}}
    (study_dir / "base.yaml").write_text(yaml.safe_dump(base))
    path = write_study(study_dir / "s.yaml", seeds=[0], common=[], cells={"sdpo": ["method=sdpo"]})
    lines = []
    agg = sweep.run_sweep(sweep.load_study(path), jobs=1, report=True, echo=lines.append)
    (rec,) = agg["runs"]
    assert rec["status"] == "ran", (study_dir / "runs/sdpo/seed0/train.log").read_text()
    assert rec["metric"] == "mean@2" and 0 <= rec["after"] <= 1
    assert rec["best_step"] in (1, 2) and rec["steps_logged"] == 2
    assert (study_dir / "t" / "report" / "report.html").exists()


def test_cells_and_seeds_start_only_the_selected_runs(study_dir, capsys):
    path = write_study(study_dir / "s.yaml", seeds=[0, 1, 2])
    plan(study_dir, {"a/seed0": {"after": 0.5}})
    run(path, [], cells=["a"], seeds=[0])
    assert [c["key"] for c in calls(study_dir)] == ["a/seed0"]
    assert cli_main(["sweep", str(path), "--cells", "b", "--seeds", "1,2", "--no-report"]) == 0
    started = sorted(c["key"] for c in calls(study_dir))
    assert started == ["a/seed0", "b/seed1", "b/seed2"]
    agg = json.loads((study_dir / "t" / "aggregate.json").read_text())
    assert [r["status"] for r in agg["runs"]] == ["skipped", "not run", "not run", "ran", "not run", "ran"]
    with pytest.raises(UserError, match="--cells c: .* has no such cell"):
        run(path, [], cells=["c"])
    with pytest.raises(UserError, match="--seeds 7: .* runs seeds 0, 1, 2"):
        run(path, [], seeds=[7])


def test_runs_finished_by_another_sweep_meanwhile_are_aggregated(study_dir, monkeypatch):
    # two sweeps share a study (one per cell, as the addition study ran): each one's aggregate, written
    # when it ends, must include what the other finished in the meantime, not what was there at its start
    path = write_study(study_dir / "s.yaml", seeds=[0])
    plan(study_dir, {"a/seed0": {"after": 0.5}, "b/seed0": {"after": 0.25}})
    study = sweep.load_study(path)
    b0 = next(s for s in sweep.expand(study) if s.cell == "b")
    real = sweep._run_one

    def and_the_other_sweep(spec, argv):
        out = real(spec, argv)
        real(b0, sweep.command(b0, study.base, FAKE))  # meanwhile, the other sweep finishes b seed0
        return out

    monkeypatch.setattr(sweep, "_run_one", and_the_other_sweep)
    agg = run(path, [], cells=["a"])
    assert [(r["cell"], r["status"]) for r in agg["runs"]] == [("a", "ran"), ("b", "skipped")]
    assert agg["cells"]["b"]["after"]["mean"] == 0.25
