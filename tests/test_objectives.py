"""Losses: divergences on supports, CREDIT's vocabulary-advantage loss, policy gradients, aggregation."""

import math

import pytest
import torch

from credit import objectives as obj
from credit import signal


def logits_pair(seed=0, shape=(4, 5, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


def test_three_token_case_by_hand():
    # p_S = (.5, .3, .2), p_T = (.2, .3, .5)
    ps, pt = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    ls, lt = ps.log(), pt.log()
    # KL(p_S‖p_T) = .5 ln(.5/.2) + .3 ln 1 + .2 ln(.2/.5) = .5·0.916291 − .2·0.916291 = 0.274887
    assert obj.divergence(ls, lt, 1.0).item() == pytest.approx(0.274887, abs=1e-5)
    # symmetric here: KL(p_T‖p_S) = 0.274887 as well
    assert obj.divergence(ls, lt, 0.0).item() == pytest.approx(0.274887, abs=1e-5)
    # JSD(α=.5): M = (.35, .3, .35); ½[.5 ln(.5/.35) + .2 ln(.2/.35)] ·2 (both halves equal by symmetry)
    #   = .5·0.356675 + .2·(−0.559616) = 0.178337 − 0.111923 = 0.066414
    assert obj.divergence(ls, lt, 0.5).item() == pytest.approx(0.066414, abs=1e-5)
    # top-2 of the student = tokens {0, 1} (mass .8) + tail bucket {2}: the same categorical
    idx = obj.topk_index(ls, 2)
    assert idx.tolist() == [0, 1]
    sup_s = obj.support_logprobs(ls, idx, tail=True)
    torch.testing.assert_close(sup_s.exp(), torch.tensor([0.5, 0.3, 0.2]))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_topk_with_whole_vocabulary_and_tail_equals_full(alpha):
    s, t = logits_pair()
    full = obj.divergence(obj.support_logprobs(s, None, 0.8), obj.support_logprobs(t, None, 0.8), alpha)
    idx = obj.topk_index(s, s.shape[-1])
    top = obj.divergence(obj.support_logprobs(s, idx, 0.8, tail=True), obj.support_logprobs(t, idx, 0.8, tail=True), alpha)
    torch.testing.assert_close(top, full, atol=1e-5, rtol=1e-5)


def test_kl_end_points_match_their_definitions():
    s, t = logits_pair(1)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    torch.testing.assert_close(obj.divergence(ls, lt, 0.0), (lt.exp() * (lt - ls)).sum(-1))
    torch.testing.assert_close(obj.divergence(ls, lt, 1.0), (ls.exp() * (ls - lt)).sum(-1))
    # the interior approaches 0 at the end points, so divergence() switches to the KLs there
    assert obj.generalized_jsd(ls, lt, 1e-4).abs().max() < 1e-3


def test_support_without_tail_is_renormalized_top_k():
    s, _ = logits_pair(2)
    idx = obj.topk_index(s, 4)
    sup = obj.support_logprobs(s, idx, tail=False)
    torch.testing.assert_close(sup.exp().sum(-1), torch.ones(sup.shape[:-1]))
    torch.testing.assert_close(sup, torch.log_softmax(s.gather(-1, idx), -1))
    tailed = obj.support_logprobs(s, idx, tail=True)
    torch.testing.assert_close(tailed.exp().sum(-1), torch.ones(sup.shape[:-1]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_teacher_equals_student_gives_zero(alpha):
    s, _ = logits_pair(3)
    idx = obj.topk_index(s, 3)
    for index, tail in [(None, False), (idx, True), (idx, False)]:
        sup = obj.support_logprobs(s, index, tail=tail)
        assert obj.divergence(sup, sup, alpha).abs().max() < 1e-6
        assert obj.credit_logit_loss(sup, sup, sup, 0.5).abs().max() < 1e-6
    lp = torch.log_softmax(s, -1)[..., 0]
    dv = signal.delta_v(lp, lp)
    assert torch.equal(obj.reinforce_loss(lp, dv), torch.zeros_like(lp))


def test_credit_logit_gradient_at_lambda_zero_is_reverse_kl_gradient():
    s, t = logits_pair(4)
    g = torch.Generator().manual_seed(9)
    neg = torch.randn(s.shape, generator=g)
    for index, tail in [(None, False), (obj.topk_index(s, 4), True), (obj.topk_index(s, 4), False)]:
        s1 = s.clone().requires_grad_(True)
        ls = obj.support_logprobs(s1, index, tail=tail)
        lt = obj.support_logprobs(t, index, tail=tail)
        ln = obj.support_logprobs(neg, index, tail=tail)
        credit = obj.credit_logit_loss(ls, lt, ln, 0.0)
        (g1,) = torch.autograd.grad(credit.sum(), s1)
        s2 = s.clone().requires_grad_(True)
        kl = obj.divergence(obj.support_logprobs(s2, index, tail=tail), lt, 1.0)
        (g2,) = torch.autograd.grad(kl.sum(), s2)
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(credit, kl, atol=1e-5, rtol=1e-4)  # and its value is the KL


def test_credit_logit_on_raw_topk_slice_would_not_match():
    # Why the support must be a proper categorical: on an unnormalized top-K slice Σ∇p_S ≠ 0.
    s, t = logits_pair(5)
    idx = obj.topk_index(s, 3)
    s1 = s.clone().requires_grad_(True)
    raw_s = torch.log_softmax(s1, -1).gather(-1, idx)
    raw_t = torch.log_softmax(t, -1).gather(-1, idx)
    (g1,) = torch.autograd.grad(obj.credit_logit_loss(raw_s, raw_t, raw_t, 0.0).sum(), s1)
    s2 = s.clone().requires_grad_(True)
    raw_s2 = torch.log_softmax(s2, -1).gather(-1, idx)
    (g2,) = torch.autograd.grad((raw_s2.exp() * (raw_s2 - raw_t)).sum(), s2)
    assert not torch.allclose(g1, g2, atol=1e-4)


def test_credit_token_loss_at_lambda_zero_is_sdpo_token_loss():
    g = torch.Generator().manual_seed(0)
    base = -torch.rand(3, 6, generator=g) * 3
    teacher, neg = -torch.rand(3, 6, generator=g) * 3, -torch.rand(3, 2, 6, generator=g) * 3
    mask = (torch.rand(3, 6, generator=g) > 0.2).float()

    s1 = base.clone().requires_grad_(True)
    dv = signal.delta_v(teacher, s1)
    r = signal.credit_reward(dv, signal.specific_part(teacher, signal.generic_part(neg)), 0.0)
    credit = obj.aggregate(obj.reinforce_loss(s1, r), mask)
    (g1,) = torch.autograd.grad(credit, s1)

    # SDPO's token-level loss as the verl code writes it: sg(ℓS − ℓT)·ℓS, token-mean
    s2 = base.clone().requires_grad_(True)
    sdpo = ((s2.detach() - teacher) * s2 * mask).sum() / mask.sum()
    (g2,) = torch.autograd.grad(sdpo, s2)
    assert credit.item() == sdpo.item()
    assert torch.equal(g1, g2)


def test_importance_weight_and_ppo_clip_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.9)]])
    old = torch.tensor([[math.log(0.25), math.log(0.9)]])
    w = obj.importance_weight(logp, old, cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.0]]))  # ratio 2 capped at 1.5; ratio 1
    adv = torch.tensor([[1.0, -2.0]])
    loss, clipped = obj.ppo_clip_loss(logp, old, adv, 0.2, 0.28)
    # token 0: ρ=2, A=1: min(2, 1.28) = 1.28 -> loss −1.28, clipped; token 1: ρ=1: loss 2
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 2.0]]))
    assert clipped.tolist() == [[True, False]]


def test_on_policy_ppo_gradient_is_reinforce():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([[0.5, -1.0, 2.0]])
    loss, _ = obj.ppo_clip_loss(lp, lp.detach(), adv)
    (g,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(g, -adv)


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # last sequence has no teacher signal
    assert obj.aggregate(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    # per-seq means 2 and 4; the empty one counts in the denominator by default (as the SDPO code)
    assert obj.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(6 / 3)
    assert obj.aggregate(loss, mask, "seq-mean-token-mean", count_empty_sequences=False).item() == pytest.approx(3.0)
    assert obj.aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx(10 / 3)


@pytest.mark.parametrize("mode", list(obj.AGGREGATIONS))
def test_gradient_accumulation_1x8_equals_8x1(mode):
    g = torch.Generator().manual_seed(0)
    loss_fn = lambda p: p.square() * 0.5  # any per-token function of a parameter
    params = torch.randn(8, 5, generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.3).float()
    mask[3] = 0
    full = params.clone().requires_grad_(True)
    obj.aggregate(loss_fn(full), mask, mode).backward()

    micro = params.clone().requires_grad_(True)
    normalizer = mask.sum() if mode == "token-mean" else float(mask.shape[0])
    for i in range(8):
        obj.aggregate(loss_fn(micro[i : i + 1]), mask[i : i + 1], mode, normalizer=normalizer).backward()
    torch.testing.assert_close(micro.grad, full.grad)


def test_masked_positions_never_change_a_loss():
    s, t = logits_pair(6, (2, 4, 7))
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.float)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    ref = obj.aggregate(obj.divergence(ls, lt, 0.5), mask)
    garbage = torch.where(mask.bool()[..., None], lt, torch.full_like(lt, float("nan")))
    assert obj.aggregate(obj.divergence(ls, garbage, 0.5), mask).item() == ref.item()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: obj.topk_index(torch.zeros(2, 5), 6), "top_k=6"),
        (lambda: obj.divergence(torch.zeros(2, 5), torch.zeros(2, 5), 1.2), "alpha=1.2"),
        (lambda: obj.divergence(torch.zeros(2, 5), torch.zeros(2, 6), 1.0), "teacher_logp has shape"),
        (lambda: obj.credit_logit_loss(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2, 5), 2.0), "lam"),
        (lambda: obj.aggregate(torch.zeros(2, 3), torch.zeros(2, 3)), "mask is empty"),
        (lambda: obj.aggregate(torch.zeros(2, 3), torch.ones(2, 3), "mean"), "mode"),
        (lambda: obj.support_logprobs(torch.zeros(2, 5), torch.zeros(3, 1, dtype=torch.long)), "index has shape"),
    ],
)
def test_bad_arguments_name_themselves(call, match):
    with pytest.raises(ValueError, match=match):
        call()
