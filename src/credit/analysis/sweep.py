"""``credit sweep STUDY.yaml``: a grid of config overrides × seeds, run N at a time, resumable, one aggregate.

A study file (paths are relative to the working directory, like ``out_dir`` in a config)::

    name: addition                  # default: the file's stem
    base: configs/quickstart.yaml   # the config every run starts from
    runs: study/runs                # run directories: <runs>/<cell>/seed<k>
    out: study/addition             # aggregate.json and report/ (default: <study file's folder>/<name>)
    seeds: [0, 1, 2]
    common: [eval.every=10]         # overrides of every cell
    cells:                          # name -> overrides, section.key=value exactly as `credit train` takes them
      grpo: [method=grpo]
      sdpo: [method=sdpo, credit.grpo_weight=0]
    compare:                        # optional: paired bootstrap of A − B (credit.analysis.stats)
      - [credit, sdpo]

Each run is ``credit train BASE common... cell... seed=k out_dir=<runs>/<cell>/seed<k> --resume`` in a
subprocess with one OpenMP/MKL thread (several multi-threaded processes on a few cores slow each other
down by an order of magnitude), its stdout and stderr appended to ``train.log`` in its directory.
``--resume`` is always passed: it continues an interrupted run from its checkpoint and starts a new
(or checkpoint-less) one from scratch. A run whose ``summary.json`` holds ``eval_after`` is finished
and skipped, so rerunning the same command continues a study. Runs are ordered seed-major (every
cell's seed 0 first), so a study stopped half-way already pairs cells on the seeds it finished;
``--cells A,B`` and ``--seeds 1,2`` start only those runs (the aggregate still reads all finished ones).

Before anything starts every run's config is validated, and a run directory whose ``config.yaml``
disagrees with what its cell now asks for is an error: a study never mixes two settings in one cell.

Per run the aggregate reads ``summary.json`` (held-out ``mean@n`` before and after training, per-item
results for the paired bootstrap) and ``metrics.jsonl`` (best periodic ``eval/mean@n``, which needs
``eval.every``; the median ``perf/step_s``), then per cell mean ± sample std over seeds. Runs that did
not finish are listed per cell as ``failed`` (an error, or no ``eval_after``) or ``interrupted`` (stopped
by SIGINT/SIGTERM after a checkpoint); either makes ``credit sweep`` exit 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credit.errors import UserError, cli_entry, one_line
from credit.analysis.report import flatten_config

#: The command a run is started with; tests inject a fake one.
TRAIN_COMMAND: tuple[str, ...] = (sys.executable, "-m", "credit.cli", "train")
#: Keys the runner sets itself for every run.
RESERVED_KEYS = ("seed", "out_dir")
#: One thread per run (see the module docstring); HF_HUB_OFFLINE: nothing is downloaded at run time.
RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Settings that change how a run is executed, never what it computes here: every run of a sweep gets
# OMP_NUM_THREADS=1 (RUN_ENV), so any `threads` value (unset, auto, a number) computes on one thread.
# A run that differs from its cell only in these is resumed, not refused.
EXECUTION_ONLY = frozenset({"threads"})
LOG_NAME = "train.log"
# Exit statuses of a run stopped by SIGINT or SIGTERM: `credit train` checkpoints after the current step
# and exits 128 + the signal (a child killed outright by one reports it negative). The next sweep resumes
# such a run, so the aggregate lists it as interrupted, not failed.
INTERRUPTED_EXITS = frozenset({130, 143, -2, -15})
CELL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ----------------------------------------------------------------------------- the study file


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    base: Path
    runs: Path
    out: Path
    seeds: tuple[int, ...]
    common: tuple[str, ...]
    cells: dict[str, tuple[str, ...]]
    compare: tuple[tuple[str, str], ...] = ()
    lines: dict[str, int] = field(default_factory=dict, compare=False)  # field -> line in the study file


@dataclass(frozen=True)
class RunSpec:
    cell: str
    seed: int
    out_dir: Path
    overrides: tuple[str, ...]  # common + cell, without seed and out_dir

    @property
    def label(self) -> str:
        return f"{self.cell} seed{self.seed}"


def _yaml_with_lines(path: Path) -> tuple[Any, dict[str, int]]:
    """The parsed file and the line of each top-level key and each ``cells.<name>``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: study file does not exist") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({one_line(e)})") from None
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[str(key.value)] = key.start_mark.line + 1
            if key.value == "cells" and isinstance(value, yaml.MappingNode):
                for ck, _ in value.value:
                    lines[f"cells.{ck.value}"] = ck.start_mark.line + 1
    return data, lines


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every problem is a one-line ``UserError`` naming file, line and field."""
    path = Path(path)
    data, lines = _yaml_with_lines(path)

    def fail(key: str, msg: str) -> UserError:
        line = lines.get(key) or lines.get(key.split(".")[0])
        return UserError(f"{path}:{line}: field '{key}': {msg}" if line else f"{path}: field '{key}': {msg}")

    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with base, seeds and cells at the top level")
    known = {"name", "base", "runs", "out", "seeds", "common", "cells", "compare"}
    for key in data:
        if key not in known:
            raise fail(str(key), f"unknown field; expected one of {', '.join(sorted(known))}")
    for key in ("base", "seeds", "cells"):
        if key not in data:
            raise UserError(f"{path}: field '{key}' is missing")

    def overrides(key: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(key, "expected a list of section.key=value strings")
        for item in value:
            name = item.split("=", 1)[0].strip()
            if "=" not in item or not name:
                raise fail(key, f"override {item!r} must look like section.key=value")
            if name in RESERVED_KEYS:
                raise fail(key, f"{name} is set by the sweep (seeds, runs); remove {item!r}")
        return tuple(value)

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not CELL_NAME.match(name):
        raise fail("name", f"expected a plain name (letters, digits, . _ + -), got {name!r}")
    for key in ("base", "runs", "out"):
        if key in data and not isinstance(data[key], str):
            raise fail(key, f"expected a path, got {data[key]!r}")
    base = Path(data["base"])
    if not base.is_file():
        raise fail("base", f"config file {base} does not exist (paths are relative to the working directory)")
    seeds = data["seeds"]
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise fail("seeds", f"expected a non-empty list of distinct integers, got {seeds!r}")
    common = overrides("common", data.get("common"))
    cells_raw = data["cells"]
    if not isinstance(cells_raw, dict) or not cells_raw:
        raise fail("cells", "expected a mapping of cell name -> list of overrides")
    cells = {}
    for cell, value in cells_raw.items():
        if not isinstance(cell, str) or not CELL_NAME.match(cell):
            raise fail(f"cells.{cell}", "a cell name is a directory name: letters, digits, . _ + - only")
        cells[cell] = overrides(f"cells.{cell}", value)
    compare = []
    for pair in data.get("compare") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in cells for p in pair)):
            raise fail("compare", f"each entry is [cell A, cell B] naming two cells of this study, got {pair!r}")
        compare.append((pair[0], pair[1]))
    return Study(path=path, name=name, base=base, runs=Path(data.get("runs", "study/runs")),
                 out=Path(data.get("out", path.parent / name)), seeds=tuple(seeds), common=common,
                 cells=cells, compare=tuple(compare), lines=lines)


def expand(study: Study) -> list[RunSpec]:
    """Every (cell, seed) run, seed-major: every cell's first seed before any cell's second."""
    return [RunSpec(cell, seed, study.runs / cell / f"seed{seed}", study.common + overrides)
            for seed in study.seeds for cell, overrides in study.cells.items()]


def check_configs(study: Study, specs: Sequence[RunSpec]) -> None:
    """Validate every run's config before anything starts, and refuse a run directory whose
    ``config.yaml`` disagrees with its cell (keys missing from an older file, and EXECUTION_ONLY
    settings, are not compared)."""
    import yaml

    from credit.config import load_config

    for spec in specs:
        try:
            cfg = load_config(study.base, [*spec.overrides, f"seed={spec.seed}", f"out_dir={spec.out_dir}"])
        except ValueError as e:
            line = study.lines.get(f"cells.{spec.cell}")
            where = f"{study.path}:{line}" if line else str(study.path)
            raise UserError(f"{where}: cell '{spec.cell}': {one_line(e)}") from None
        existing = spec.out_dir / "config.yaml"
        if not existing.is_file():
            continue
        try:
            old = flatten_config(yaml.safe_load(existing.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as e:
            raise UserError(f"{existing}: not valid YAML ({one_line(e)})") from None
        new = flatten_config(json.loads(json.dumps(cfg.model_dump(mode="json"))))
        differ = [k for k in sorted(new) if k in old and old[k] != new[k] and k not in EXECUTION_ONLY]
        if differ:
            shown = ", ".join(f"{k}: {old[k]!r} in the run, {new[k]!r} now" for k in differ[:3])
            raise UserError(f"{existing}: this run was made with other settings than cell '{spec.cell}' asks for "
                            f"({shown}); move the run directory away or restore the study file")


# ----------------------------------------------------------------------------- one run's numbers


def read_summary(out_dir: Path) -> dict | None:
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a run killed while writing: treated as unfinished (train writes it atomically)
    return data if isinstance(data, dict) else None


def is_finished(out_dir: Path) -> bool:
    summary = read_summary(out_dir)
    return bool(summary) and "eval_after" in summary


def prune_checkpoints(out_dir: Path) -> int:
    """Delete a finished run's resume checkpoints (``checkpoint.pt``, ``checkpoints/step-*``: weights,
    teacher and optimizer, ~16 bytes a parameter); keep ``final/`` and ``checkpoint-best.pt``. Bytes freed."""
    from credit import checkpoint

    if not is_finished(out_dir):
        raise ValueError(f"{out_dir}: not finished; its checkpoint is what --resume continues from")
    return checkpoint.remove_resume_state(out_dir)


def _metric_key(evaluation: Mapping | None) -> str | None:
    return next((k for k in (evaluation or {}) if k.startswith("mean@")), None)


def read_metrics(out_dir: Path) -> list[dict]:
    """``metrics.jsonl`` rows; a torn last line (a run killed mid-write) is dropped, not an error."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def best_within_run(rows: Sequence[Mapping], key: str) -> tuple[float | None, int | None]:
    """(best held-out ``eval/<key>``, training steps done when it was measured), over the periodic
    evaluations and the final one, not the one before training.

    How train.py logs them: the evaluation before training is a row of ``eval/*`` only at step 0; a
    periodic one rides on the row of the step after whose update it ran (``step`` = steps done − 1);
    the final one is a row of ``eval/*`` only at ``step`` = steps done.
    """
    best: tuple[float | None, int | None] = (None, None)
    for row in rows:
        value = row.get(f"eval/{key}")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        eval_only = all(k in ("step", "time_s") or k.startswith("eval/") for k in row)
        if eval_only and row["step"] == 0:
            continue  # before training
        done = int(row["step"]) if eval_only else int(row["step"]) + 1
        if best[0] is None or value > best[0]:
            best = (float(value), done)
    return best


def run_record(spec: RunSpec) -> dict[str, Any]:
    """What a run directory says about the run (status filled in by the caller)."""
    summary = read_summary(spec.out_dir) or {}
    rows = read_metrics(spec.out_dir)
    after, before = summary.get("eval_after"), summary.get("eval_before")
    key = _metric_key(after) or _metric_key(before)
    best, best_step = best_within_run(rows, key) if key else (None, None)
    step_s = [r["perf/step_s"] for r in rows if isinstance(r.get("perf/step_s"), (int, float))]
    return {
        "cell": spec.cell, "seed": spec.seed, "dir": str(spec.out_dir), "metric": key,
        "before": before.get(key) if before and key else None,
        "after": after.get(key) if after and key else None,
        "best": best, "best_step": best_step,
        "steps_logged": len(step_s),
        "step_s_median": statistics.median(step_s) if step_s else None,
        "train_wall_s": summary.get("train_wall_s"),
        "resumed_from_step": summary.get("resumed_from_step"),
    }


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_line(rec: Mapping[str, Any]) -> str:
    """The one line printed when a run ends (or is found finished)."""
    head = f"{rec['cell']} seed{rec['seed']}"
    if rec["status"] == "busy":
        return f"{head}: running in another sweep (its lock is held), left alone"
    if rec["status"] == "failed":
        return (f"{head}: FAILED (exit {rec['returncode']}) after {rec['wall_s']:.0f} s: {rec.get('error') or '?'} "
                f"(log: {rec['log']})")
    if rec["status"] == "incomplete":
        return f"{head}: exited 0 but wrote no eval_after in summary.json (log: {rec['log']})"
    if rec["status"] == "interrupted":
        return (f"{head}: interrupted after {rec['wall_s']:.0f} s: {rec.get('error') or '?'} "
                f"(the next sweep resumes it; log: {rec['log']})")
    wall = rec.get("wall_s") if rec["status"] == "ran" else rec.get("train_wall_s")
    best = f"best {_fmt(rec['best'])} @ step {rec['best_step']}" if rec["best"] is not None else "best -"
    step_s = f"{rec['step_s_median']:.1f} s/step" if rec["step_s_median"] is not None else "- s/step"
    done = " (finished earlier)" if rec["status"] == "skipped" else ""
    if rec["status"] == "ran" and rec.get("resumed_from_step"):  # this sweep's process ran only the rest
        done = f" (resumed at step {rec['resumed_from_step']})"
    return (f"{head}: held-out {rec['metric']} {_fmt(rec['before'])} -> {_fmt(rec['after'])}, {best}, {step_s}, "
            f"wall {_fmt(wall, 0)} s{done}")


# ----------------------------------------------------------------------------- running


def command(spec: RunSpec, base: Path, train_cmd: Sequence[str] = TRAIN_COMMAND) -> list[str]:
    return [*train_cmd, str(base), *spec.overrides, f"seed={spec.seed}", f"out_dir={spec.out_dir}", "--resume"]


def _last_line(path: Path) -> str | None:
    """The last non-empty line of a log (the error ``credit train`` printed, or a traceback's last line)."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return None
    return lines[-1].split("\r")[-1][:300] if lines else None


def _lock_path(out_dir: Path) -> Path:
    """A lock per run directory, outside the study tree (nothing to commit or clean up there)."""
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "credit-sweep-locks"
    folder.mkdir(exist_ok=True)
    return folder / f"{digest}.lock"


def _run_one(spec: RunSpec, argv: list[str]) -> tuple[int | None, float]:
    """(exit status, wall seconds); status None when another sweep holds this run (two studies may
    share a cell's directories, and two trainings in one directory would corrupt it)."""
    from filelock import FileLock, Timeout

    lock = FileLock(_lock_path(spec.out_dir), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None, 0.0
    try:
        if is_finished(spec.out_dir):  # finished by another sweep while this one waited for a slot
            return 0, 0.0
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **RUN_ENV}
        with open(spec.out_dir / LOG_NAME, "a", encoding="utf-8") as log:  # a resumed run appends
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} credit sweep: {shlex.join(argv)}\n")
            log.flush()
            t0 = time.monotonic()
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return proc.returncode, time.monotonic() - t0
    finally:
        lock.release()


def select(study: Study, specs: Sequence[RunSpec], cells: Sequence[str] | None = None,
           seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """The runs of ``specs`` in ``cells`` and ``seeds`` (None: all), in the study's order."""
    for name in cells or ():
        if name not in study.cells:
            raise UserError(f"--cells {name}: {study.path} has no such cell (cells: {', '.join(study.cells)})")
    for seed in seeds or ():
        if seed not in study.seeds:
            raise UserError(f"--seeds {seed}: {study.path} runs seeds {', '.join(map(str, study.seeds))}")
    return [s for s in specs if (cells is None or s.cell in cells) and (seeds is None or s.seed in seeds)]


def run_sweep(study: Study, *, jobs: int = 2, dry_run: bool = False, start: bool = True,
              cells: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              train_cmd: Sequence[str] | None = None, report: bool = True, prune: bool = False,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every unfinished run of ``study``, ``jobs`` at a time; write and return the aggregate.

    ``cells`` / ``seeds`` start only those runs (the aggregate still reads every finished run).
    ``dry_run`` prints the commands (and which runs are finished) and starts nothing. ``start=False``
    writes the aggregate of the runs finished so far and starts nothing (e.g. while another sweep
    runs). ``train_cmd`` replaces ``credit train`` (default ``TRAIN_COMMAND``, read at call time so
    tests can patch it). ``prune`` deletes the resume checkpoints of each run this sweep finishes
    (``prune_checkpoints``): a study of many runs otherwise keeps a full training state per run.
    """
    train_cmd = TRAIN_COMMAND if train_cmd is None else train_cmd
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give at least 1")
    specs = expand(study)
    check_configs(study, specs)
    todo = [s for s in select(study, specs, cells, seeds) if not is_finished(s.out_dir)]
    env_prefix = " ".join(f"{k}={v}" for k, v in RUN_ENV.items())
    if dry_run:
        for s in specs:
            if is_finished(s.out_dir) or s not in todo:
                state = "finished" if is_finished(s.out_dir) else "not selected"
                echo(f"# {state}, skipped: {s.label} ({s.out_dir})")
            else:
                resumed = " # resumes" if s.out_dir.exists() else ""
                echo(f"{env_prefix} {shlex.join(command(s, study.base, train_cmd))} > {s.out_dir / LOG_NAME} 2>&1{resumed}")
        echo(f"# {len(todo)} of {len(specs)} runs to do, {jobs} at a time")
        return {}

    records: dict[RunSpec, dict] = {}
    finished = [s for s in specs if is_finished(s.out_dir)]
    for s in specs:
        if s in finished:
            records[s] = {**run_record(s), "status": "skipped"}
            echo(run_line(records[s]))
        elif s not in todo or not start:
            records[s] = {**run_record(s), "status": "not run"}
    if not start:
        echo(f"{study.name}: {len(finished)} of {len(specs)} runs finished; started nothing")
        todo = []
    else:
        echo(f"{study.name}: {len(todo)} of {len(specs)} runs to do, {jobs} at a time (logs: <run dir>/{LOG_NAME})")
    done = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, s, command(s, study.base, train_cmd)): s for s in todo}
        try:
            for fut in as_completed(futures):
                s = futures[fut]
                returncode, wall = fut.result()
                rec = {**run_record(s), "returncode": returncode, "wall_s": wall, "log": str(s.out_dir / LOG_NAME)}
                if returncode is None:
                    rec["status"] = "busy"
                elif returncode in INTERRUPTED_EXITS:
                    rec.update(status="interrupted", error=_last_line(s.out_dir / LOG_NAME))
                elif returncode != 0:
                    rec.update(status="failed", error=_last_line(s.out_dir / LOG_NAME))
                else:
                    rec["status"] = "ran" if rec["after"] is not None else "incomplete"
                records[s] = rec
                done += 1
                echo(f"[{done}/{len(todo)}] {run_line(rec)}")
                if prune and rec["status"] == "ran":
                    echo(f"  pruned {prune_checkpoints(s.out_dir) / 2**30:.1f} GiB of resume checkpoints in {s.out_dir}")
        except KeyboardInterrupt:
            # the runs got the same SIGINT (one process group); what they checkpointed resumes next time
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for s in specs:  # runs another sweep finished while these ran count too
        if s not in todo and start:
            records[s] = {**run_record(s), "status": "skipped" if is_finished(s.out_dir) else "not run"}
    agg = aggregate(study, [records[s] for s in specs])
    write_aggregate(study, agg, report=report, echo=echo)
    return agg


# ----------------------------------------------------------------------------- the aggregate


def aggregate(study: Study, records: Sequence[Mapping[str, Any]], n_boot: int = 10_000) -> dict[str, Any]:
    """Per cell mean ± sample std over finished seeds; paired bootstrap intervals for ``compare``."""
    from credit.analysis import stats

    finished = [r for r in records if r["status"] in ("ran", "skipped") and r["after"] is not None]
    cells = {}
    for cell, overrides in study.cells.items():
        mine = [r for r in finished if r["cell"] == cell]
        cells[cell] = {
            "overrides": list(study.common + overrides),
            "seeds": [r["seed"] for r in mine],
            "metric": sorted({r["metric"] for r in mine}),
            "before": stats.mean_std([r["before"] for r in mine if r["before"] is not None]),
            "after": stats.mean_std([r["after"] for r in mine]),
            "best": stats.mean_std([r["best"] for r in mine if r["best"] is not None]),
            "step_s_median": stats.mean_std([r["step_s_median"] for r in mine if r["step_s_median"] is not None]),
            "failed": [r["seed"] for r in records if r["cell"] == cell and r["status"] in ("failed", "incomplete")],
            "interrupted": [r["seed"] for r in records if r["cell"] == cell and r["status"] == "interrupted"],
        }
    comparisons = []
    for a, b in study.compare:
        by_cell = {c: {r["seed"]: read_summary(Path(r["dir"])) for r in finished if r["cell"] == c} for c in (a, b)}
        entry: dict[str, Any] = {"a": a, "b": b}
        try:
            scores = stats.aligned_item_scores(by_cell)
            iv = stats.paired_bootstrap(scores.get(a, {}), scores.get(b, {}), n_boot=n_boot)
        except ValueError as e:  # e.g. no seed finished in both cells yet
            entry["error"] = one_line(e)
        else:
            entry.update(iv.as_dict(), verdict=stats.verdict(iv, a, b))
        comparisons.append(entry)
    return {"study": study.name, "study_file": str(study.path), "base": str(study.base), "runs_root": str(study.runs),
            "seeds": list(study.seeds), "cells": cells, "comparisons": comparisons, "runs": list(records)}


def comparison_line(cmp: Mapping[str, Any]) -> str:
    """One line for a comparison of the aggregate: A − B, its interval and verdict (or why it is missing)."""
    if "error" in cmp:
        return f"{cmp['a']} − {cmp['b']}: not computed ({cmp['error']})"
    line = (f"{cmp['a']} − {cmp['b']}: {cmp['diff']:+.3f}, {cmp['level']:.0%} CI [{cmp['low']:+.3f}, "
            f"{cmp['high']:+.3f}] over {cmp['n_seeds']} seed(s) × {cmp['n_items']} items → {cmp['verdict']}")
    if cmp["n_seeds"] == 1:  # resampling items alone: a second seed can move the difference by more
        line += " (one seed: the interval holds item noise only, not seed-to-seed spread)"
    return line


def _pm(s: Mapping[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "") + f" (n={s['n']})"


def write_aggregate(study: Study, agg: Mapping[str, Any], *, report: bool = True,
                    echo: Callable[[str], None] = print) -> None:
    """``<out>/aggregate.json``, a table on stdout, and the ``credit report`` page over every run with metrics."""
    study.out.mkdir(parents=True, exist_ok=True)
    path = study.out / "aggregate.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(agg, indent=2), encoding="utf-8")
    tmp.replace(path)
    metric = "/".join(sorted({m for c in agg["cells"].values() for m in c["metric"]})) or "held-out"
    echo(f"{'cell':<20} {metric + ' before':<24} {'after (mean ± std)':<24} {'best within run':<24} {'s/step':<7} failed")
    for cell, c in agg["cells"].items():
        step_s = _fmt(c["step_s_median"]["mean"], 1)
        failed = ", ".join(f"seed{s}" for s in c["failed"])
        echo(f"{cell:<20} {_pm(c['before']):<24} {_pm(c['after']):<24} {_pm(c['best']):<24} {step_s:<7} {failed}")
    for cmp in agg["comparisons"]:
        echo(comparison_line(cmp))
    echo(f"wrote {path}")
    failed = [r for r in agg["runs"] if r["status"] in ("failed", "incomplete")]
    if failed:
        echo(f"{len(failed)} run(s) did not finish: " + ", ".join(f"{r['cell']} seed{r['seed']}" for r in failed))
    interrupted = [r for r in agg["runs"] if r["status"] == "interrupted"]
    if interrupted:
        echo(f"{len(interrupted)} run(s) interrupted (checkpointed; the next sweep resumes them): "
             + ", ".join(f"{r['cell']} seed{r['seed']}" for r in interrupted))
    partial = [r for r in agg["runs"] if r["status"] == "not run" and r["steps_logged"]]
    if partial:
        echo(f"{len(partial)} run(s) started and not finished (the next sweep resumes them): "
             + ", ".join(f"{r['cell']} seed{r['seed']} ({r['steps_logged']} steps logged)" for r in partial))
    busy = [r for r in agg["runs"] if r["status"] == "busy"]
    if busy:
        echo(f"{len(busy)} run(s) still running in another sweep: " + ", ".join(f"{r['cell']} seed{r['seed']}" for r in busy))
    if not report:
        return
    dirs = [r["dir"] for r in agg["runs"] if read_metrics(Path(r["dir"]))]
    if not dirs:
        return
    from credit.analysis.report import make_report

    try:
        paths = make_report(dirs, study.out / "report")
    except ValueError as e:  # a run directory the report cannot read is named; the aggregate stands
        echo(f"report not written: {one_line(e)}")
    else:
        echo(f"wrote {paths['html']}")


# ----------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a study: a grid of config overrides × seeds, N at a time, resumable",
                       description="Run every cell × seed of a study file as `credit train ... --resume` (one "
                                   "thread each, N at a time; finished runs are skipped), print a line per run, "
                                   "then write <out>/aggregate.json and the credit report page.")
    p.add_argument("study", metavar="STUDY.yaml", help="study file (see `credit.analysis.sweep`'s docstring)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and start nothing")
    p.add_argument("--aggregate-only", action="store_true",
                   help="start nothing: write the aggregate (and report) of the runs finished so far")
    p.add_argument("--no-report", action="store_true", help="write aggregate.json only, no report page")
    p.add_argument("--prune-checkpoints", action="store_true",
                   help="when a run finishes, delete its resume checkpoints (checkpoint.pt, checkpoints/; "
                        "weights + teacher + optimizer), keeping final/ and checkpoint-best.pt")
    p.add_argument("--cells", type=_names, metavar="A,B", help="start only these cells (default: all)")
    p.add_argument("--seeds", type=_seeds, metavar="0,1", help="start only these seeds (default: all)")
    p.set_defaults(func=run, command="sweep")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as integers, e.g. 1,2") from None


@cli_entry
def run(args) -> int:
    agg = run_sweep(load_study(args.study), jobs=args.jobs, dry_run=args.dry_run, start=not args.aggregate_only,
                    cells=args.cells, seeds=args.seeds, report=not args.no_report, prune=args.prune_checkpoints)
    unfinished = [r for r in agg.get("runs", []) if r["status"] in ("failed", "incomplete", "interrupted")]
    return 1 if unfinished else 0
