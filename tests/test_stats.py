"""credit.analysis.stats: the paired bootstrap on hand-checkable tables, the verdict, mean ± std, item alignment."""

from __future__ import annotations

import numpy as np
import pytest

from credit.analysis.stats import Interval, aligned_item_scores, mean_std, paired_bootstrap, verdict

# per-item mean@4 scores of three seeds × 6 items (multiples of 1/4, as mean@4 is)
BASE = {0: [0.0, 0.25, 0.5, 1.0, 0.75, 0.25], 1: [0.5, 0.5, 0.0, 0.25, 1.0, 0.75], 2: [1.0, 0.0, 0.25, 0.5, 0.5, 0.0]}


def shifted(scores: dict, d: float) -> dict:
    return {s: [x + d for x in xs] for s, xs in scores.items()}


def test_identical_cells_give_exactly_zero():
    iv = paired_bootstrap(BASE, BASE, n_boot=2000, seed=0)
    assert (iv.diff, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert verdict(iv) == "no difference"
    assert (iv.n_seeds, iv.n_items, iv.n_boot) == (3, 6, 2000)


def test_constant_shift_gives_the_point_interval():
    # 0.25 is dyadic: every replicate sums integer multiples of 0.25 (at most S·I = 18 of them) and
    # divides by 18, all exact in float64, so the interval is [0.25, 0.25] bit for bit
    iv = paired_bootstrap(shifted(BASE, 0.25), BASE, n_boot=2000, seed=1)
    assert (iv.diff, iv.low, iv.high) == (0.25, 0.25, 0.25)
    assert verdict(iv, "A", "B") == "A > B"
    # 0.1 is not dyadic: a replicate is a sum of S·I = 18 rounded terms, so allow 18 ulps of 0.1
    # (a - b itself is rounded once per item too)
    iv = paired_bootstrap(BASE, shifted(BASE, 0.1), n_boot=2000, seed=1)
    tol = 2 * 18 * np.finfo(np.float64).eps
    assert iv.low == pytest.approx(-0.1, abs=tol) and iv.high == pytest.approx(-0.1, abs=tol)
    assert verdict(iv, "A", "B") == "A < B"


def test_items_are_resampled():
    # one seed, differences (0, 1): a replicate draws 2 items -> mean 0, 0.5 or 1 with probability
    # 1/4, 1/2, 1/4; the 2.5% and 97.5% percentiles are the atoms 0 and 1
    iv = paired_bootstrap({0: [1.0, 1.0]}, {0: [1.0, 0.0]}, n_boot=10_000, seed=0)
    assert iv.diff == 0.5
    assert (iv.low, iv.high) == (0.0, 1.0)
    assert verdict(iv) == "no difference"


def test_seeds_are_resampled_so_one_losing_seed_widens_the_interval():
    # A − B is +0.5 on every item of seeds 0 and 1 and −0.4 on every item of seed 2 (mean 0.2).
    # Items add no noise, so a replicate's mean depends only on the seeds drawn (3 with replacement):
    # P(mean = −0.4, seed 2 thrice) = 1/27 ≈ 3.7% > 2.5%  -> the low percentile is −0.4
    # P(mean = +0.5, never seed 2) = 8/27 ≈ 30% > 2.5%    -> the high percentile is +0.5
    # A bootstrap over pooled (seed, item) pairs would give a narrow interval around 0.2 instead.
    a = {0: [0.5] * 20, 1: [0.5] * 20, 2: [0.0] * 20}
    b = {0: [0.0] * 20, 1: [0.0] * 20, 2: [0.4] * 20}
    iv = paired_bootstrap(a, b, n_boot=10_000, seed=0)
    assert iv.diff == pytest.approx(0.2, abs=1e-15)
    assert (iv.low, iv.high) == (pytest.approx(-0.4, abs=1e-15), pytest.approx(0.5, abs=1e-15))
    assert verdict(iv) == "no difference"


def test_seeded_bootstrap_is_reproducible():
    noisy = {s: [x + 0.25 * ((i * 7 + s) % 3 - 1) for i, x in enumerate(xs)] for s, xs in BASE.items()}
    one = paired_bootstrap(noisy, BASE, n_boot=500, seed=3)
    assert paired_bootstrap(noisy, BASE, n_boot=500, seed=3) == one
    other = paired_bootstrap(noisy, BASE, n_boot=500, seed=4)
    assert (other.low, other.high) != (one.low, one.high)  # the seed drives the replicates
    assert other.diff == one.diff  # the point estimate does not depend on it


def test_only_common_seeds_are_paired_and_shapes_are_checked():
    iv = paired_bootstrap({0: [1.0, 1.0], 1: [0.0, 0.0], 7: [1.0, 1.0]}, {0: [0.0, 0.0], 1: [0.0, 0.0]}, n_boot=10)
    assert iv.n_seeds == 2 and iv.diff == 0.5  # seed 7 has no partner
    with pytest.raises(ValueError, match="share no seed"):
        paired_bootstrap({0: [1.0]}, {1: [1.0]})
    with pytest.raises(ValueError, match="seed 0: A has 2 item scores, B has 3"):
        paired_bootstrap({0: [1.0, 0.0]}, {0: [1.0, 0.0, 1.0]})
    with pytest.raises(ValueError, match="different numbers of items"):
        paired_bootstrap({0: [1.0], 1: [1.0, 0.0]}, {0: [0.0], 1: [0.0, 0.0]})


def test_verdict_reads_the_interval():
    def iv(low, high):
        return Interval(diff=(low + high) / 2, low=low, high=high, level=0.95, n_seeds=3, n_items=60, n_boot=1)

    assert verdict(iv(0.01, 0.2), "CREDIT", "SDPO") == "CREDIT > SDPO"
    assert verdict(iv(-0.2, -0.01), "CREDIT", "SDPO") == "CREDIT < SDPO"
    assert verdict(iv(0.0, 0.2), "CREDIT", "SDPO") == "no difference"  # 0 inside the closed interval
    assert verdict(iv(-0.1, 0.1)) == "no difference"


def test_mean_std_uses_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}  # Σ(x−2)² / (3−1) = 1
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}


def summary(items: list[tuple[str, list[float]]]) -> dict:
    return {"eval_after": {"items": [{"id": i, "rewards": r} for i, r in items]}}


def test_item_scores_are_aligned_by_id():
    runs = {
        "a": {0: summary([("x", [1.0, 0.0]), ("y", [1.0, 1.0])])},
        "b": {0: summary([("y", [0.0, 0.0]), ("x", [0.0, 1.0])])},  # same items, other order
    }
    assert aligned_item_scores(runs) == {"a": {0: [0.5, 1.0]}, "b": {0: [0.5, 0.0]}}
    runs["b"][1] = summary([("x", [1.0]), ("z", [1.0])])
    with pytest.raises(ValueError, match="cell 'b' seed 1: held-out items differ"):
        aligned_item_scores(runs)
    with pytest.raises(ValueError, match="cell 'c' seed 0: eval_after.items"):
        aligned_item_scores({"c": {0: {"eval_after": {"mean@4": 0.5}}}})
