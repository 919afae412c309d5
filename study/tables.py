"""The study's tables as markdown, from what `credit sweep` aggregated (STUDY.md quotes them).

    .venv/bin/python study/tables.py study/addition/aggregate.json

Per run: held-out before → after, best within run (step), maj@n, pass@n, mean response tokens and
the share of responses cut at the token budget after (the run's summary.json), the lenient re-score
after where ``<out>/lenient/<cell>-seed<k>.json`` exists (the column only where the folder does),
median s/step; per cell: mean ± sample std over the finished seeds (pass@n too: whether training
reaches items the base model never solved, or only sharpens the ones it sometimes did; the lenient
re-score over the seeds that have one); per
comparison: the paired bootstrap interval and its verdict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from credit.analysis.stats import mean_std
from credit.analysis.sweep import comparison_line


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def pm(s: dict, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    std = "" if s.get("std") is None else f" ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{std} (n={s['n']})"


def main(path: str) -> None:
    agg = json.load(open(path))
    lenient_dir = Path(path).parent / "lenient"
    has_lenient = lenient_dir.is_dir()
    print("| cell | seed | before | after | best within run (step) | maj@n after | pass@n after | "
          + ("lenient after | " if has_lenient else "") + "response tokens | truncated | s/step (median) |")
    print("|---" * (10 + has_lenient) + "|")
    pass_at_n: dict[str, list[float]] = {}
    lenient_after_n: dict[str, list[float]] = {}
    for r in agg["runs"]:
        if r.get("after") is None:
            continue
        after = json.load(open(Path(r["dir"]) / "summary.json"))["eval_after"]
        n = after["n"]
        pass_at_n.setdefault(r["cell"], []).append(after[f"pass@{n}"])
        lenient = lenient_dir / f"{r['cell']}-seed{r['seed']}.json"
        lenient_after = json.load(open(lenient))[f"mean@{n}"] if lenient.is_file() else None
        if lenient_after is not None:
            lenient_after_n.setdefault(r["cell"], []).append(lenient_after)
        best = f"{fmt(r.get('best'))} ({r.get('best_step')})"
        print(f"| {r['cell']} | {r['seed']} | {fmt(r.get('before'))} | **{fmt(r.get('after'))}** | {best} | "
              f"{fmt(after[f'maj@{n}'])} | {fmt(after[f'pass@{n}'])} | "
              + (f"{fmt(lenient_after)} | " if has_lenient else "")
              + f"{fmt(after['response_len_mean'], 1)} | {after['truncated_frac']:.0%} | "
              f"{fmt(r.get('step_s_median'), 0)} |")
    print()
    print("| cell | seeds | before | after | best within run | pass@n after | "
          + ("lenient after | " if has_lenient else "") + "s/step |")
    print("|---" * (7 + has_lenient) + "|")
    for name, c in agg["cells"].items():
        seeds = ", ".join(map(str, c["seeds"])) or "none yet"
        lenient_cell = f"{pm(mean_std(lenient_after_n.get(name, [])))} | " if has_lenient else ""
        print(f"| {name} | {seeds} | {pm(c['before'])} | **{pm(c['after'])}** | {pm(c['best'])} | "
              f"{pm(mean_std(pass_at_n.get(name, [])))} | {lenient_cell}{pm(c['step_s_median'], 0)} |")
    print()
    for c in agg["comparisons"]:
        print(f"- {comparison_line(c)}")


if __name__ == "__main__":
    main(sys.argv[1])
