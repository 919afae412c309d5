"""Statistics of a study: mean ± std over seeds, paired bootstrap intervals for the difference of
two cells, and a verdict that may be "no difference".

Pairing. Two cells of a study are run with the same seeds and scored on the same held-out items, so
their per-item scores form a (seeds × items) table of differences ``D[s, i] = A[s, i] − B[s, i]``.
Pairing removes what both cells share (an item hard for every method, a seed whose data order helps
every method). The interval must still carry both sources of noise that the issue doubts most:
*which items* happen to be in the held-out set and *which seeds* were run. So one bootstrap
replicate resamples seeds with replacement **and** items with replacement (a crossed, two-way
bootstrap) and takes the mean of ``D`` over the drawn seeds × drawn items; the interval is the
percentile interval of those replicates. With 3 seeds the seed axis is coarse (10 distinct draws):
a cell that wins on two seeds and loses clearly on the third gets a wide interval, as it should.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """Difference A − B of mean per-item score, its bootstrap percentile interval, and its sizes."""

    diff: float
    low: float
    high: float
    level: float
    n_seeds: int
    n_items: int
    n_boot: int

    def as_dict(self) -> dict:
        return asdict(self)


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}`` with the sample std (n − 1; None for fewer than two values)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mu = math.fsum(vals) / n
    sd = math.sqrt(math.fsum((v - mu) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"mean": mu, "std": sd, "n": n}


def difference_table(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]]) -> np.ndarray:
    """``D[s, i] = a[s][i] − b[s][i]`` over the seeds both cells hold, in float64. (S, I).

    Every seed must hold the same number of items in both cells (the same held-out set); a seed that
    only one cell has is left out (an unfinished run), and no common seed at all is an error.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"the two cells share no seed (A has {sorted(a)}, B has {sorted(b)})")
    rows = []
    for s in seeds:
        xa, xb = np.asarray(a[s], dtype=np.float64), np.asarray(b[s], dtype=np.float64)
        if xa.ndim != 1 or xa.shape != xb.shape or xa.size == 0:
            raise ValueError(f"seed {s}: A has {xa.size} item scores, B has {xb.size}; they must be equal and > 0")
        rows.append(xa - xb)
    if len({r.size for r in rows}) > 1:
        raise ValueError(f"seeds hold different numbers of items: {[r.size for r in rows]}; "
                         "every seed must be scored on the same held-out set")
    return np.stack(rows)


def paired_bootstrap(
    a: Mapping[int, Sequence[float]],
    b: Mapping[int, Sequence[float]],
    *,
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Crossed paired bootstrap of mean(A − B) over seeds × items (see the module docstring).

    ``a`` and ``b`` map a run seed to that run's per-item scores (e.g. mean@n of each held-out item),
    items in the same order in both. Deterministic given ``seed``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    d = difference_table(a, b)  # (S, I)
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    # a replicate draws S seeds and I items with replacement; its mean over the drawn grid is
    # Σ_s Σ_i c_s · c_i · D[s, i] / (S·I) with c the multinomial draw counts, computed for all
    # replicates at once instead of materializing B × S × I indices
    c_seed = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(np.float64)  # (B, S)
    c_item = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(np.float64)  # (B, I)
    reps = np.einsum("bs,si,bi->b", c_seed, d, c_item) / (n_seeds * n_items)  # (B,)
    tail = (1.0 - level) / 2
    low, high = np.quantile(reps, [tail, 1.0 - tail])
    return Interval(diff=float(d.mean()), low=float(low), high=float(high), level=level,
                    n_seeds=n_seeds, n_items=n_items, n_boot=n_boot)


def verdict(interval: Interval, a: str = "A", b: str = "B") -> str:
    """``"A > B"`` when the whole interval is above 0, ``"A < B"`` when below, else ``"no difference"``."""
    if interval.low > 0:
        return f"{a} > {b}"
    if interval.high < 0:
        return f"{a} < {b}"
    return "no difference"


def item_scores(summary: Mapping, field: str = "eval_after") -> tuple[list[str], list[float]]:
    """(item ids, per-item mean reward) of one evaluation in a run's ``summary.json``.

    ``credit.evaluate.evaluate`` stores ``items`` with each item's ``id`` and its n ``rewards``; the
    per-item score is their mean (the item's share of mean@n).
    """
    try:
        items = summary[field]["items"]
        ids = [str(it["id"]) for it in items]
        scores = [math.fsum(it["rewards"]) / len(it["rewards"]) for it in items]
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise ValueError(f"{field}.items: missing or malformed per-item results ({type(e).__name__}: {e})") from None
    return ids, scores


def aligned_item_scores(runs: Mapping[str, Mapping[int, Mapping]], field: str = "eval_after") -> dict[str, dict[int, list[float]]]:
    """``{cell: {seed: summary}}`` -> ``{cell: {seed: per-item scores}}``, every list in one item order.

    The order is the first run's item ids; a run scored on a different set of items is an error
    naming the cell and seed (pairing by item needs the same held-out set).
    """
    reference: list[str] | None = None
    out: dict[str, dict[int, list[float]]] = {}
    for cell, by_seed in runs.items():
        for s, summary in by_seed.items():
            try:
                ids, scores = item_scores(summary, field)
            except ValueError as e:
                raise ValueError(f"cell {cell!r} seed {s}: {e}") from None
            if reference is None:
                reference = ids
            if sorted(ids) != sorted(reference) or len(set(ids)) != len(ids):
                raise ValueError(f"cell {cell!r} seed {s}: held-out items differ from the other runs "
                                 f"({len(ids)} items vs {len(reference)}); pairing by item needs the same set")
            by_id = dict(zip(ids, scores))
            out.setdefault(cell, {})[s] = [by_id[i] for i in reference]
    return out
