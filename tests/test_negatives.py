"""Negative prompt sampling and negative contexts (docs/method.md §1.6)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from credit.tasks.base import Example, Outcome
from credit.teacher.contexts import build_teacher_contexts, render_context
from credit.teacher.negatives import build_negative_contexts, can_contrast, sample_negative_groups


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    """The real SmolLM2 tokenizer (ChatML template, eos = pad = <|im_end|>), from conftest."""
    return tiny_tokenizer


def gens(seed):
    return [torch.Generator().manual_seed(seed), random.Random(seed)]


@pytest.mark.parametrize("strategy", ["random", "roll", "all"])
def test_never_own_group_property(strategy):
    for seed in range(150):
        rng = random.Random(seed)
        B, G = rng.randint(2, 9), rng.randint(1, 4)
        groups = [b for b in range(B) for _ in range(G)]
        k = rng.randint(1, B - 1)
        for gen in gens(seed):
            neg = sample_negative_groups(groups, k, strategy, gen)
            assert len(neg) == len(groups)
            for g, js in zip(groups, neg):
                assert g not in js
                assert len(js) == len(set(js)) == (B - 1 if strategy == "all" else k)
                assert all(0 <= j < B for j in js)


def test_non_contiguous_prompt_indices():
    groups = [7, 7, 3, 3, 11, 11]
    for strategy in ("random", "roll", "all"):
        neg = sample_negative_groups(groups, 2, strategy, random.Random(0))
        for g, js in zip(groups, neg):
            assert g not in js and set(js) <= {3, 7, 11}


def test_roll_uses_each_group_equally_and_shares_within_group():
    B, G, k = 6, 3, 4
    groups = [b for b in range(B) for _ in range(G)]
    for seed in range(20):
        neg = sample_negative_groups(groups, k, "roll", torch.Generator().manual_seed(seed))
        per_group = {g: js for g, js in zip(groups, neg)}
        assert all(neg[n] == per_group[groups[n]] for n in range(len(groups)))
        # the k-th negatives over the B groups are a permutation (a derangement)
        for slot in range(k):
            assert sorted(per_group[b][slot] for b in range(B)) == list(range(B))
        counts = Counter(j for b in range(B) for j in per_group[b])
        assert all(counts[b] == k for b in range(B))


def test_all_gives_every_other_prompt():
    groups = [0, 0, 1, 1, 2, 2, 3, 3]
    neg = sample_negative_groups(groups, 1, "all", random.Random(0))
    assert neg[0] == [1, 2, 3] and neg[5] == [0, 1, 3]


def test_same_seed_same_draw():
    groups = [b for b in range(8) for _ in range(2)]
    for strategy in ("random", "roll"):
        a = sample_negative_groups(groups, 3, strategy, torch.Generator().manual_seed(5))
        b = sample_negative_groups(groups, 3, strategy, torch.Generator().manual_seed(5))
        assert a == b


def test_random_is_uniform_over_other_prompts():
    groups = list(range(5))
    counts = Counter()
    gen = random.Random(0)
    for _ in range(2000):
        counts.update(sample_negative_groups(groups, 1, "random", gen)[0])
    # sample 0 draws from {1..4}: each about 500 times (binomial sd ≈ 19)
    assert set(counts) == {1, 2, 3, 4} and all(400 < c < 600 for c in counts.values())


def test_errors():
    with pytest.raises(ValueError, match="groups"):
        sample_negative_groups([0, 0, 0], 1, "random", random.Random(0))
    with pytest.raises(ValueError, match="groups"):
        sample_negative_groups([0, 0], 1, "all", random.Random(0))
    with pytest.raises(ValueError, match="k must be"):
        sample_negative_groups([0, 1, 2], 3, "random", random.Random(0))
    with pytest.raises(ValueError, match="k must be"):
        sample_negative_groups([0, 1, 2], 3, "roll", random.Random(0))
    with pytest.raises(ValueError, match="k must be"):
        sample_negative_groups([0, 1, 2], 0, "roll", random.Random(0))
    with pytest.raises(ValueError, match="strategy"):
        sample_negative_groups([0, 1], 1, "nope", random.Random(0))
    with pytest.raises(TypeError, match="generator"):
        sample_negative_groups([0, 1], 1, "random", 0)
    assert not can_contrast([4, 4]) and can_contrast([4, 5])


# ---- negative contexts with the real tokenizer -------------------------------------------------


@pytest.fixture(scope="module")
def batch(tok):
    examples = [
        Example("a", [{"role": "system", "content": "SYS_A"}, {"role": "user", "content": "Question A {x}?"}]),
        Example("b", [{"role": "user", "content": "Question B is a little longer than A?"}]),
        Example("c", [{"role": "user", "content": "Question C?"}]),
    ]
    groups = [0, 0, 1, 1, 2, 2]
    rewards = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # group 2 has no success
    feedback = ["", "", "", "fb_b1", "", "fb_c1"]
    responses = [f"RESP_{i} " + "word " * 40 for i in range(6)]
    outcomes = [Outcome(r, f) for r, f in zip(rewards, feedback)]
    tc = build_teacher_contexts(tok, examples, groups, responses, outcomes)
    # samples 1 and 2 are lone successes (no signal); sample 4 has neither demo nor feedback
    assert tc.has_signal == [True, False, False, True, False, True]
    return examples, groups, tc


def test_swap_input_equals_render_context_with_same_z(tok, batch):
    examples, groups, tc = batch
    neg_groups = sample_negative_groups(groups, 2, "all", random.Random(0))
    neg = build_negative_contexts(tok, examples, groups, tc, neg_groups, swap="input")
    for n in range(len(groups)):
        if not tc.has_signal[n]:
            assert neg.context_ids[n] == []
            continue
        assert neg.negative_groups[n] == neg_groups[n]
        for j, ids in zip(neg_groups[n], neg.context_ids[n]):
            assert ids == render_context(tok, examples[j].messages, tc.privileged[n])
    # sample 0 (demo = RESP_1) against prompt B: B's question, A's demo, no system prompt of A
    t = tok.decode(neg.context_ids[0][0])
    assert "Question B" in t and "RESP_1" in t and "Question A" not in t and "SYS_A" not in t
    m = neg.metrics()
    assert m["credit/negatives_per_sample"] == 2.0 and m["credit/contrast_possible"] == 1.0


def test_swap_input_reuses_truncated_z(tok):
    examples = [Example("a", [{"role": "user", "content": "Question A?"}]),
                Example("b", [{"role": "user", "content": "Question B?"}])]
    demo = " ".join(f"d{i}" for i in range(200))
    outcomes = [Outcome(0.0), Outcome(1.0), Outcome(0.0), Outcome(0.0)]
    groups = [0, 0, 1, 1]
    full = build_teacher_contexts(tok, examples, groups, ["x", demo, "y", "z"], outcomes)
    limit = len(full.context_ids[0]) - 100
    tc = build_teacher_contexts(tok, examples, groups, ["x", demo, "y", "z"], outcomes, max_context_tokens=limit)
    assert tc.truncated[0]
    neg = build_negative_contexts(tok, examples, groups, tc, [[1], [1], [0], [0]], max_context_tokens=limit)
    assert neg.context_ids[0] == [render_context(tok, examples[1].messages, tc.privileged[0])]
    assert neg.context_ids[1] == [] and neg.context_ids[2] == []


def test_swap_context_uses_group_js_own_context(tok, batch):
    examples, groups, tc = batch
    neg_groups = sample_negative_groups(groups, 2, "all", random.Random(0))
    neg = build_negative_contexts(tok, examples, groups, tc, neg_groups, swap="context")
    # representatives: the first sample of each group with a signal (group 1: sample 3, not 2)
    rep = {0: 0, 1: 3, 2: 5}
    for n in range(len(groups)):
        if not tc.has_signal[n]:
            assert neg.context_ids[n] == []
            continue
        for j, ids, src in zip(neg_groups[n], neg.context_ids[n], neg.source_samples[n]):
            assert src == rep[j] and groups[src] == j
            assert ids == tc.context_ids[src]


def test_swap_context_falls_back_to_plain_prompt(tok):
    examples = [Example("a", [{"role": "user", "content": "Question A?"}]),
                Example("b", [{"role": "user", "content": "Question B?"}])]
    groups = [0, 0, 1, 1]
    outcomes = [Outcome(0.0, "fb"), Outcome(0.0), Outcome(0.0), Outcome(0.0)]  # group 1: no signal
    tc = build_teacher_contexts(tok, examples, groups, ["p", "q", "r", "s"], outcomes)
    neg = build_negative_contexts(tok, examples, groups, tc, [[1], [1], [0], [0]], swap="context")
    assert neg.context_ids[0] == [render_context(tok, examples[1].messages, None)] == [tc.context_ids[2]]
    assert neg.source_samples[0] == [None]


def test_no_contrast_is_reported(tok, batch):
    examples, groups, tc = batch
    neg = build_negative_contexts(tok, examples, groups, tc, [[] for _ in groups])
    assert not neg.contrast_possible
    assert neg.metrics()["credit/contrast_possible"] == 0.0
    assert neg.metrics()["credit/negatives_per_sample"] == 0.0


def test_build_rejects_own_group_and_bad_swap(tok, batch):
    examples, groups, tc = batch
    with pytest.raises(ValueError, match="own prompt group"):
        build_negative_contexts(tok, examples, groups, tc, [[0], [1], [0], [0], [0], [0]])
    with pytest.raises(ValueError, match="swap"):
        build_negative_contexts(tok, examples, groups, tc, [[1]] * 6, swap="both")
