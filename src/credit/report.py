"""Run reports: training curves of one or more run directories, as PNGs and one HTML page.

A run directory holds ``config.yaml`` (the resolved config) and ``metrics.jsonl`` (one JSON object
per step with ``step`` and namespaced metrics, any of which may be missing on a given step).

Runs whose configs are equal except for ``seed`` form a *group*: a group of several runs is drawn
as its mean over seeds with a ±1 std band (at the steps every run of the group logged), a group of
one as a plain line. Groups are overlaid in every panel and labelled by what differs between them
(e.g. ``method=credit``), else by directory name.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credit import viz
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


def _config_key(run: Run) -> str:
    flat = {k: v for k, v in flatten_config(run.config).items() if k != "seed" and not k.endswith("output_dir")
            and k not in ("run_dir", "output", "out_dir", "name")}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: Sequence[Run]) -> list[RunGroup]:
    """Group runs whose configs are equal except ``seed`` (and output paths); label each group by
    the config entries that differ between groups."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(_config_key(r), []).append(r)
    flats = {k: json.loads(k) for k in groups}
    varying = sorted({name for f in flats.values() for name in f
                      if len({json.dumps(g.get(name), default=str) for g in flats.values()}) > 1})
    preferred = [k for k in ("method", "model.name", "task.name") if k in varying]
    shown = preferred + [k for k in varying if k not in preferred]
    out = []
    for key, members in groups.items():
        f = flats[key]
        label = ", ".join(f"{k}={f.get(k)}" for k in shown[:3])
        if not label:
            label = str(f.get("method", "")) or members[0].name
        if len(members) > 1:
            label += f" (n={len(members)} seeds)"
        elif len(groups) > 1 and not shown:
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
    """One line per group (mean over seeds) with a ±1 std band (``fill_between``) when it has several."""
    for i, g in enumerate(groups):
        xs, mean, std = g.series(key)
        if not xs:
            continue
        color = f"C{i % 10}"
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
        + "<p class=legend>Lines: mean over the runs of a group (configs equal except the seed); bands: ±1 std "
          "(sample std) at the steps every run logged.</p>"
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
