"""The method classes on hand-made batches: sequence mode's baseline, the Eq. 3 blend, negatives that
are other problems, and the λ path from the config to the loss."""

import pytest
import torch

from credit import objectives as obj
from credit import signal
from credit.config import load_config
from credit.methods import GRPO, Blend, LogitCredit, Micro, SequenceCredit, StepBatch, Targets, TokenCredit, build_method
from credit.scoring import pack
from credit.tasks import Example
from credit.teacher import problem_keys, sample_negative_groups
from credit.train import step_prompts


class TableScorer:
    """A scorer whose teacher log-probs come from a (1+K, N, R) table, for the rows the test marks active."""

    def __init__(self, table: torch.Tensor, active: torch.Tensor):
        self.table, self.active = table, active

    def teacher_logprobs(self, packs):
        assert len(packs) == self.table.shape[0]
        return self.table[:, self.active]

    def teacher_logits(self, packed):
        raise AssertionError("token and sequence modes never ask for logits")


def make_batch(n: int, r: int, *, group_size: int, rewards=None, has_signal=None, has_contrast=None, k: int = 1,
               old_logp=None):
    packed = pack([[1, 2]] * n, [[3 + t for t in range(r)]] * n, pad_id=0)
    ones = torch.ones(n)
    return StepBatch(student=packed, teacher=packed, negatives=[packed] * k,
                     rewards=torch.zeros(n) if rewards is None else torch.tensor(rewards, dtype=torch.float32),
                     has_signal=ones if has_signal is None else torch.tensor(has_signal, dtype=torch.float32),
                     has_contrast=ones if has_contrast is None else torch.tensor(has_contrast, dtype=torch.float32),
                     group_size=group_size, old_logp=old_logp)


def micro(b: StepBatch, logp: torch.Tensor) -> Micro:
    logp = logp.clone().requires_grad_(True)
    return Micro(torch.arange(len(b.rewards)), torch.zeros(*logp.shape, 5), logp, logp.detach(), False, True)


# ----------------------------------------------------------------------------- sequence mode


def test_masked_group_advantages_by_hand():
    scores = torch.tensor([5.0, 6.0, 7.0, 0.0])
    # the old baseline let the inactive row's 0 into the mean and std: [0.16, 0.48, 0.80]
    out = signal.group_advantages(scores, 4, mask=torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    # no std division (Dr. GRPO): centered only
    out = signal.group_advantages(scores, 4, scale_by_std=False, mask=torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert out.tolist() == [-1.0, 0.0, 1.0, 0.0]
    # one active rollout: nothing to compare with; none active: all zero; two groups are independent
    out = signal.group_advantages(torch.tensor([3.0, 9.0, 1.0, 2.0]), 2, mask=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0]
    out = signal.group_advantages(torch.tensor([1.0, 3.0, 10.0, 10.0]), 2, mask=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(out, torch.tensor([-2 ** -0.5, 2 ** -0.5, 0.0, 0.0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("lam, expected", [(0.0, [-1.0, 0.0, 1.0, 0.0]), (0.5, [0.0, 0.0, 0.0, 0.0])])
def test_sequence_score_is_the_sum_of_r_lambda_over_active_rollouts(lam, expected):
    # R = 1, ℓS = 0: r^λ = ℓT − λ·G. ℓT = [5, 6, 7, ·], G = [0, 2, 4, ·]: λ = 0 scores [5, 6, 7] -> [−1, 0, 1];
    # λ = 0.5 scores [5, 5, 5] -> no preference. Row 3 has no teacher signal: no advantage, not in the baseline.
    b = make_batch(4, 1, group_size=4, has_signal=[1, 1, 1, 0], old_logp=torch.zeros(4, 1))
    table = torch.tensor([[5.0, 6.0, 7.0], [0.0, 2.0, 4.0]]).unsqueeze(-1)  # (1+K, active, R)
    method = SequenceCredit(lam, 1, "mean", 2.0)
    t = method.prepare(b, TableScorer(table, torch.tensor([0, 1, 2])))
    torch.testing.assert_close(t.advantage, torch.tensor(expected), atol=1e-5, rtol=0)


def test_sdpo_sequence_ablation_is_allowed_and_scores_delta_v():
    cfg = load_config(None, ["method=sdpo", "credit.mode=sequence"])
    method = build_method(cfg)
    assert isinstance(method, SequenceCredit) and method.lam == 0.0 and method.num_negatives == 0
    b = make_batch(3, 2, group_size=3, old_logp=torch.tensor([[-1.0, -1.0], [-1.0, -2.0], [0.0, 0.0]]))
    table = torch.tensor([[[-1.0, -1.0], [0.0, -1.0], [-1.0, -2.0]]])  # ℓT: Σ ΔV = [0, 2, −3]
    t = method.prepare(b, TableScorer(table, torch.arange(3)))
    expected = signal.group_advantages(torch.tensor([0.0, 2.0, -3.0]), 3)
    torch.testing.assert_close(t.advantage, expected)


def test_sequence_length_normalize_divides_by_the_response_length():
    b = make_batch(2, 2, group_size=2, old_logp=torch.zeros(2, 2))
    b.student.response_mask[1, 1] = 0.0  # row 1 has one token
    table = torch.tensor([[[2.0, 2.0], [3.0, 5.0]]])
    method = SequenceCredit(0.0, 0, "mean", 2.0, length_normalize=True, scale_std=False)
    t = method.prepare(b, TableScorer(table, torch.arange(2)))
    assert t.advantage.tolist() == [-0.5, 0.5]  # means 2 and 3


# ----------------------------------------------------------------------------- the blend (Eq. 3)


TEACHER = torch.tensor([[-1.0, -0.5, -2.0], [0.0, 0.0, 0.0], [-0.2, -3.0, -1.0], [-1.5, -1.0, -9.0]])  # ℓT


def token_batch(has_signal=(1, 0, 1, 1)):
    """Two groups of two rollouts, R = 3; row 1 has no teacher signal; rewards differ within groups."""
    b = make_batch(4, 3, group_size=2, rewards=[1.0, 0.0, 0.0, 1.0], has_signal=list(has_signal), k=0)
    b.student.response_mask[3, 2] = 0.0
    return b


STUDENT = torch.tensor([[-0.5, -1.0, -1.5], [-2.0, -0.1, -0.3], [-1.0, -1.0, -1.0], [-0.7, -0.2, -4.0]])


def loss_and_grad(method, b):
    """One micro-batch of the whole batch: (aggregated loss, its gradient w.r.t. ℓS, the loss mask)."""
    grpo = method.outcome if isinstance(method, Blend) else method if isinstance(method, GRPO) else None
    outcome = grpo.prepare(b, None) if grpo else None  # A_GRPO from the rewards
    distill = Targets(teacher_logp=TEACHER)
    t = outcome if isinstance(method, GRPO) else Targets(teacher_logp=TEACHER, outcome=outcome) if grpo else distill
    m = micro(b, STUDENT)
    out = method.loss(m, b, t, None)
    total = obj.aggregate(out.loss, out.mask, "token-mean")
    total.backward()
    return total.detach(), m.logp.grad, out.mask


def test_blend_at_w_one_is_grpo_and_at_w_zero_is_sdpo_bit_for_bit():
    grpo, sdpo = GRPO(0.2, 0.28), TokenCredit(0.0, 0, "mean", 2.0)
    for w, alone in [(1.0, grpo), (0.0, sdpo)]:
        a = loss_and_grad(Blend(grpo, sdpo, w), token_batch())
        b = loss_and_grad(alone, token_batch())
        assert all(torch.equal(x, y) for x, y in zip(a, b)), w


def test_blend_in_between_is_one_advantage_with_one_denominator():
    w = 0.25
    b = token_batch()
    total, grad, mask = loss_and_grad(Blend(GRPO(0.2, 0.28), TokenCredit(0.0, 0, "mean", 2.0), w), b)
    # A_GRPO per group of two with rewards (1, 0) and (0, 1): ±1/√2·... = ±0.7071 (unbiased std √0.5)
    a_grpo = torch.tensor([1.0, -1.0, -1.0, 1.0]) / (0.5 ** 0.5 + 1e-6) * 0.5
    a_sd = (TEACHER - STUDENT) * b.has_signal[:, None]  # ΔV, 0 without a teacher signal
    a = w * a_grpo[:, None] + (1 - w) * a_sd  # Eq. 3
    n_tokens = 11.0  # every response token of every rollout: one denominator
    assert mask.sum().item() == n_tokens
    torch.testing.assert_close(grad, -a * b.student.response_mask / n_tokens, atol=1e-6, rtol=0)


def test_blend_weight_does_not_move_with_the_active_fraction():
    """The old loop divided the distillation term by the tokens *with a signal*: its weight was
    (1−w)/active_fraction. Now halving the active rows halves the distillation gradient's share."""
    grpo, sd = GRPO(0.2, 0.28), TokenCredit(0.0, 0, "mean", 2.0)
    b_all = token_batch(has_signal=(1, 1, 1, 1))
    g_all = loss_and_grad(Blend(grpo, sd, 1e-12), b_all)[1]
    b_half = token_batch(has_signal=(1, 1, 0, 0))
    g_half = loss_and_grad(Blend(grpo, sd, 1e-12), b_half)[1]
    torch.testing.assert_close(g_half[:2], g_all[:2], atol=1e-6, rtol=0)  # same denominator: 11 tokens
    assert torch.all(g_half[2:].abs() < 1e-9)


# ----------------------------------------------------------------------------- CREDIT token mode by hand


def test_credit_token_loss_at_half_lambda_by_hand():
    # one rollout, R = 2: ℓT = [−1, −2], G = [−3, −1], ℓS = [−2, −1.5]
    # ΔV = [1, −0.5], S = ℓT − G = [2, −1], r^0.5 = [1.5, −0.75]; loss = −Σ r·ℓS / 2
    b = make_batch(1, 2, group_size=1)
    t = Targets(teacher_logp=torch.tensor([[-1.0, -2.0]]), generic_logp=torch.tensor([[-3.0, -1.0]]))
    m = micro(b, torch.tensor([[-2.0, -1.5]]))
    out = TokenCredit(0.5, 1, "mean", 2.0).loss(m, b, t, None)
    total = obj.aggregate(out.loss, out.mask, "token-mean")
    total.backward()
    assert total.item() == pytest.approx(-(1.5 * -2.0 + -0.75 * -1.5) / 2)  # 0.9375
    torch.testing.assert_close(m.logp.grad, torch.tensor([[-0.75, 0.375]]))
    # a rollout without a distinct negative falls back to SDPO: r = ΔV
    b = make_batch(1, 2, group_size=1, has_contrast=[0])
    m = micro(b, torch.tensor([[-2.0, -1.5]]))
    total = obj.aggregate(TokenCredit(0.5, 1, "mean", 2.0).loss(m, b, t, None).loss, b.distill_mask, "token-mean")
    assert total.item() == pytest.approx(-(1.0 * -2.0 + -0.5 * -1.5) / 2)


def test_lambda_travels_from_the_config_to_the_method():
    for mode, cls in [("token", TokenCredit), ("sequence", SequenceCredit), ("logits", LogitCredit)]:
        m = build_method(load_config(None, ["method=credit", f"credit.mode={mode}", "credit.lam=0.3",
                                            "credit.num_negatives=2"]))
        assert isinstance(m, cls) and (m.lam, m.num_negatives) == (0.3, 2)
    blend = build_method(load_config(None, ["method=credit", "credit.grpo_weight=0.9", "credit.lam=0.7"]))
    assert isinstance(blend, Blend) and blend.w == 0.9 and blend.distill.lam == 0.7
    assert isinstance(build_method(load_config(None, ["method=grpo"])), GRPO)
    assert build_method(load_config(None, ["method=sdpo", "credit.lam=0.7"])).lam == 0.0  # SDPO ignores λ


# ----------------------------------------------------------------------------- negatives are other problems


def examples(n: int, prompts=None):
    return [Example(f"id{i}", [{"role": "user", "content": (prompts or {}).get(i, f"q{i}")}]) for i in range(n)]


def test_a_step_never_holds_the_same_example_twice_on_a_small_train_split():
    train = examples(10)
    seen_wraps = 0
    for step in range(50):
        batch = step_prompts(train, 8, seed=0, step=step)
        assert len({e.id for e in batch}) == 8, step
        seen_wraps += step > 0
    assert seen_wraps  # 50 steps over 10 examples: many epochs
    # every example still gets its turn: over 5 epochs each is used at least once
    used = {e.id for s in range(5) for e in step_prompts(train, 8, seed=0, step=s)}
    assert used == {e.id for e in train}
    with pytest.raises(ValueError, match="larger than the train split"):
        step_prompts(examples(4), 8, seed=0, step=0)


def test_negatives_are_never_the_rollouts_own_problem():
    # prompt groups 0 and 2 are the same problem (same prompt under two ids); 1 and 3 share an id
    batch = examples(4, {2: "q0"})
    batch[3] = Example("id1", [{"role": "user", "content": "other"}])
    keys = problem_keys(batch)
    assert keys[0] == keys[2] and keys[1] == keys[3] and keys[0] != keys[1]
    groups = [g for g in range(4) for _ in range(2)]
    for strategy in ("random", "roll", "all"):
        for seed in range(20):
            drawn = sample_negative_groups(groups, 1, strategy, torch.Generator().manual_seed(seed), problems=keys)
            for g, js in zip(groups, drawn):
                assert all(keys[j] != keys[g] for j in js), (strategy, seed)
    # roll with K = 1 over 4 groups: each draw maps some group onto its twin unless shift = 1 or 3
    no_contrast = sum(not js for seed in range(20) for js in sample_negative_groups(
        groups, 1, "roll", torch.Generator().manual_seed(seed), problems=keys))
    assert no_contrast > 0
    # "all" needs every other group to be another problem: here none is, so nobody is contrasted
    assert all(not js for js in sample_negative_groups(groups, 3, "all", torch.Generator(), problems=keys))


def test_the_batch_and_the_targets_are_read_only_after_prepare():
    """What the rollouts gave and what ``prepare`` computed cannot be rebound later (one writer each)."""
    import dataclasses

    b = make_batch(2, 1, group_size=2, old_logp=torch.zeros(2, 1))
    t = SequenceCredit(0.0, 0, "mean", 2.0).prepare(b, TableScorer(torch.zeros(1, 2, 1), torch.arange(2)))
    for obj_, field in ((b, "has_signal"), (t, "teacher_logp")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj_, field, None)
