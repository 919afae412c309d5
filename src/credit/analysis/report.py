"""Run reports: training curves of one or more run directories, as PNGs and one HTML page.

A run directory holds ``config.yaml`` (the resolved config) and ``metrics.jsonl`` (one JSON object
per step with ``step`` and namespaced metrics, any of which may be missing on a given step).

Runs whose configs are equal in what changes the method form a *group* (``seed``, where a run writes,
how fast it runs and what it logs do not: ``NOT_THE_METHOD``; a key a run's config lacks, because
it was written before the key existed, counts as its default), within one study cell when the runs
sit in ``<cell>/seed<N>`` folders (``credit sweep``). A group of several runs is drawn as its mean
over seeds with a ±1 std band (at the steps every run of the group logged), a group of one as a plain
line. Groups are overlaid in every panel and labelled by their cell and every config key that differs
between them (e.g. ``credit-blend: method=credit, grpo_weight=0.9``), else by directory name.
Held-out accuracy measured only before and after training is drawn as two points, not a line.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credit.analysis import viz
from credit.errors import UserError

#: (file stem, title, metric keys). A key ending in "*" is a prefix: every metric that starts with it.
PANELS: list[tuple[str, str, list[str]]] = [
    ("reward", "Reward", ["task/reward_mean"]),
    ("heldout", "Held-out accuracy", ["eval/mean@*", "eval/pass@*", "eval/maj@*"]),
    ("signal_means", "Token signal: mean ΔV, S, G", ["signal/dv_mean", "signal/s_mean", "signal/g_mean"]),
    ("signal_spread", "Token signal: spread and pMI",
     ["signal/dv_std", "signal/s_std", "signal/pmi_mean", "signal/s_negative_fraction", "signal/pmi_reward_corr"]),
    ("loss", "Loss", ["loss/total", "loss/clip_fraction"]),
    ("perf", "Throughput", ["perf/rollout_tokens_per_s", "perf/step_s"]),
]


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.name

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) where ``key`` was logged as a finite number."""
        xs, ys = [], []
        for row in self.metrics:
            v = row.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(int(row["step"]))
                ys.append(float(v))
        return xs, ys

    def keys(self) -> set[str]:
        return {k for row in self.metrics for k in row if k not in ("step", "time_s")}


@dataclass
class RunGroup:
    label: str
    runs: list[Run]
    config: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[int], list[float], list[float] | None]:
        """(steps, mean, std) over the runs at the steps all of them logged ``key``; std None for one run."""
        per_run = [dict(zip(*r.series(key))) for r in self.runs]
        if len(per_run) == 1:
            xs = sorted(per_run[0])
            return xs, [per_run[0][x] for x in xs], None
        common = sorted(set.intersection(*(set(d) for d in per_run)))
        means, stds = [], []
        for x in common:
            vals = [d[x] for d in per_run]
            mu = sum(vals) / len(vals)
            means.append(mu)
            stds.append(math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)))  # sample std
        return common, means, stds


# ----------------------------------------------------------------------------- loading


def load_run(path: str | Path) -> Run:
    """Read a run directory; every problem is a ``UserError`` naming the file (and line)."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run directory (does not exist or is not a directory)")
    mfile = path / "metrics.jsonl"
    if not mfile.is_file():
        raise UserError(f"{path}: no metrics.jsonl in this directory; is it a run directory?")
    config: dict[str, Any] = {}
    cfile = path / "config.yaml"
    if cfile.is_file():
        try:
            loaded = yaml.safe_load(cfile.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise UserError(f"{cfile}: not valid YAML ({err})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{cfile}: expected a mapping at the top level")
        config = loaded or {}
    rows = []
    with mfile.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{mfile}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{mfile}:{lineno}: expected a JSON object")
            step = row.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                raise UserError(f"{mfile}:{lineno}: field 'step' is missing or not a number")
            rows.append(row)
    if not rows:
        raise UserError(f"{mfile}: holds no metrics (the run logged no step yet)")
    return Run(path, config, rows)


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: Config keys (and sections) that do not change what a run computes: the seed, where it writes, how
#: fast it runs (threads, micro-batches, decoding backend: the same distribution) and what it logs.
#: Runs that differ only in these are seeds of one group.
NOT_THE_METHOD = ("seed", "out_dir", "device", "threads", "log", "checkpoint_every", "checkpoint_keep",
                  "model.cache_dir", "model.gradient_checkpointing", "rollout.backend", "rollout.micro_batch",
                  "optim.micro_batch", "optim.share_prefix", "eval.every", "eval.before")


def _defaults() -> dict[str, Any]:
    from credit.config import TrainConfig

    return flatten_config(TrainConfig().model_dump(mode="json"))


def _normalized(run: Run, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The run's flattened config with the keys it lacks at their defaults (a config written before a
    key existed ran with that key's default behaviour), in the defaults' order."""
    own = flatten_config(run.config)
    out = {k: v for k, v in defaults.items() if k not in own and not any(o.startswith(k + ".") for o in own)}
    out.update(own)
    return {k: v for k, v in out.items() if k != "name" and not k.endswith(("output_dir", "run_dir"))}


def _is_method_key(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in NOT_THE_METHOD)


def cell_name(run: Run) -> str | None:
    """The study cell of a run kept as ``<cell>/seed<N>`` (``credit sweep``'s layout), else None."""
    import re

    return run.path.resolve().parent.name if re.fullmatch(r"seed\d+", run.path.name) else None


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def group_runs(runs: Sequence[Run]) -> list[RunGroup]:
    """Group runs whose configs are equal in what changes the method (``NOT_THE_METHOD`` aside), within
    one study cell; label each group by its cell and every key that differs between the groups."""
    defaults = _defaults()
    norm = {id(r): _normalized(r, defaults) for r in runs}
    groups: dict[str, list[Run]] = {}
    for r in runs:
        method = {k: v for k, v in norm[id(r)].items() if _is_method_key(k)}
        groups.setdefault(json.dumps([cell_name(r), method], sort_keys=True, default=str), []).append(r)
    # what differs: keys constant inside every group and not the same in all groups
    order = list(dict.fromkeys(k for r in runs for k in norm[id(r)]))
    per_group = []
    for members in groups.values():
        values = [{k: _show(norm[id(r)].get(k)) for k in order} for r in members]
        per_group.append({k: values[0][k] for k in order if all(v[k] == values[0][k] for v in values)})
    varying = [k for k in order if k not in ("seed", "out_dir") and all(k in g for g in per_group)
               and len({g[k] for g in per_group}) > 1]
    preferred = [k for k in ("method", "model.name", "task.name") if k in varying]
    shown = preferred + [k for k in varying if k not in preferred]
    leaves = [k.rsplit(".", 1)[-1] for k in shown]
    short = {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(shown, leaves)}
    cells = [{cell_name(r) for r in members} for members in groups.values()]
    out = []
    for members, values, cell in zip(groups.values(), per_group, cells):
        label = ", ".join(f"{short[k]}={values[k]}" for k in shown)
        if len(cell) == 1 and None not in cell:
            label = f"{next(iter(cell))}: {label}" if label else next(iter(cell))
        if not label:
            label = str(members[0].config.get("method", "")) or members[0].name
        if len(members) > 1:
            label += f" (n={len(members)} seeds)"
        elif len(groups) > 1 and not shown and cell == {None}:
            label = members[0].name
        out.append(RunGroup(label, members, members[0].config))
    labels = [g.label for g in out]
    for g in out:  # duplicates (e.g. configs differ only in nested lists): disambiguate by directory
        if labels.count(g.label) > 1:
            g.label += f" [{g.runs[0].name}]"
    return out


# ----------------------------------------------------------------------------- plotting


def panel_keys(groups: Sequence[RunGroup], keys: Sequence[str]) -> list[str]:
    present = set().union(*(r.keys() for g in groups for r in g.runs))
    out = []
    for k in keys:
        if k.endswith("*"):
            out += sorted(p for p in present if p.startswith(k[:-1]))
        elif k in present:
            out.append(k)
    return out


def plot_metric(ax, groups: Sequence[RunGroup], key: str) -> None:
    """One line per group (mean over seeds) with a ±1 std band (``fill_between``) when it has several.
    A held-out metric measured at two steps only (before and after training) is two points with error
    bars: a line between them would draw a learning curve nobody measured."""
    for i, g in enumerate(groups):
        xs, mean, std = g.series(key)
        if not xs:
            continue
        color = f"C{i % 10}"
        if key.startswith("eval/") and len(xs) <= 2:
            ax.errorbar(xs, mean, yerr=std, color=color, label=g.label, marker="o", markersize=4, linestyle="none",
                        capsize=3)
            continue
        ax.plot(xs, mean, color=color, label=g.label, marker="o" if len(xs) < 3 else None, markersize=3)
        if std is not None:
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.2, linewidth=0)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def build_figures(groups: Sequence[RunGroup]) -> dict[str, Any]:
    """One matplotlib figure per panel that has data: ``{stem: Figure}``; one subplot per metric."""
    plt = viz.pyplot()  # matplotlib on the Agg backend, loaded only when a report draws

    figs = {}
    for stem, title, keys in PANELS:
        metrics = panel_keys(groups, keys)
        if not metrics:
            continue
        legend_h = 0.22 * len(groups)  # one legend row per run group, under the panels
        fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.2 * len(metrics), 6.5), 3.3 + legend_h),
                                 squeeze=False)
        for ax, key in zip(axes[0], metrics):
            plot_metric(ax, groups, key)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", fontsize=7, frameon=False)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout(rect=(0, legend_h / (3.3 + legend_h), 1, 1))
        figs[stem] = fig
    return figs


# ----------------------------------------------------------------------------- the report


def _final(run: Run, key: str) -> float | None:
    _, ys = run.series(key)
    return ys[-1] if ys else None


def summary_rows(groups: Sequence[RunGroup], keys: Sequence[str]) -> list[list[Any]]:
    """Per group: the last logged value of each key, mean ± std over its runs."""
    rows = []
    for g in groups:
        cells: list[Any] = [g.label, len(g.runs)]
        for k in keys:
            vals = [v for v in (_final(r, k) for r in g.runs) if v is not None]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(viz.format_number(vals[0]))
            else:
                mu = sum(vals) / len(vals)
                sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))
                cells.append(f"{viz.format_number(mu)} ± {viz.format_number(sd)}")
        rows.append(cells)
    return rows


def make_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<out_dir>/<panel>.png`` for each panel with data and ``<out_dir>/report.html``
    (PNGs embedded); return ``{"html": path, <panel>: path, ...}``."""
    if not run_dirs:
        raise UserError("give at least one run directory")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # checked first: reading the runs can take a while
        raise UserError(f"--out {out_dir}: a file is there; give a directory (it is created if missing)")
    runs = [load_run(p) for p in run_dirs]
    groups = group_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    images = []
    for stem, fig in build_figures(groups).items():
        try:
            png = viz.save_figure(fig, out_dir / f"{stem}.png")
        finally:
            viz.close(fig)
        paths[stem] = out_dir / f"{stem}.png"
        images.append(f"<h2>{stem}</h2>{viz.html_img(png, stem)}")

    final_keys = [k for k in panel_keys(groups, ["task/reward_mean", "eval/*", "signal/pmi_mean", "signal/s_mean"])]
    run_rows = [[r.name, str(r.config.get("method", "")), str(r.config.get("seed", "")),
                 int(max(row["step"] for row in r.metrics)), g.label] for g in groups for r in g.runs]
    body = (
        "<h2>Runs</h2>" + viz.html_table(["run", "method", "seed", "last step", "group"], run_rows, left_columns=5)
        + "<h2>Final values (mean ± std over seeds)</h2>"
        + viz.html_table(["group", "runs", *final_keys], summary_rows(groups, final_keys), left_columns=1)
        + "<p class=legend>Lines: mean over the runs of a group (configs equal in what changes the method: "
          "the seed, paths, threads, micro-batches and logging aside; one study cell); bands: ±1 std "
          "(sample std) at the steps every run logged. Held-out accuracy measured only before and after "
          "training: two points with ±1 std bars.</p>"
        + "".join(images)
    )
    html_path = out_dir / "report.html"
    html_path.write_text(viz.html_page("credit report: " + ", ".join(r.name for r in runs), body), encoding="utf-8")
    paths["html"] = html_path
    return paths


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="training curves of run directories as PNGs and one HTML page",
                       description="Plot reward, held-out accuracy, ΔV/S/G statistics, loss and throughput of "
                                   "one or more runs; runs equal except the seed are drawn as mean ± std.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.jsonl)")
    p.add_argument("--out", default="report", help="output directory (default ./report)")
    p.set_defaults(func=run, command="report")


@viz.cli_entry
def run(args) -> int:
    paths = make_report(args.run_dirs, args.out)
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0
