"""Methods: one small class per method × credit mode, built once from the config (docs/method.md).

The training loop is method-blind. It asks a method three things:

  prepare(batch, scorer) -> Targets   after the rollouts: ℓT, G, advantages (no grad), read-only after
  loss(micro, batch, targets, scorer) the per-token loss of one micro-batch of the update, (n, R)
  metrics(batch, targets, seen, gather)  ``signal/*`` and ``credit/*`` numbers of the whole step's batch

``StepBatch`` (what the rollouts gave) and ``Targets`` (what ``prepare`` computed) are frozen: ℓT and G
of the sampled tokens come from ``Targets`` in token and sequence modes; logit mode scores the teacher
inside the update on the current top-K and reports the sampled tokens' ℓT and G in its ``LossOut``,
which the loop keeps in ``Seen`` with the first epoch's ℓS (for ``signal/*``). A batch is one process's
rows; ``gather(*tensors)`` returns every process's rows of these per-rollout tensors (the loop passes
``credit.parallel.all_rows``; in one process they are the batch's own), so the metrics are the whole
batch's whatever the number of processes.

plus ``loss_mask(batch, rows)`` (the tokens that carry an advantage: the aggregation's mask and
denominator) and three facts: ``num_negatives`` (K negative contexts the loop builds per rollout),
``needs_student_logp`` (ℓS at collection time, for a score computed before the update) and
``uses_teacher`` (whether θ_T is kept at all).
λ, K, α, γ, w are fixed at construction; nothing here reads a config object or touches a model: the
``Scorer`` handed in by the loop runs the teacher's and the student's no-grad forwards.

The blend of SDPO paper Eq. 3, ``A = w·A_GRPO + (1−w)·A_SD``, is ``Blend``: one per-token loss
``w·l_GRPO + (1−w)·l_SD`` and one aggregation with one denominator. On-policy its gradient is the
policy gradient of that A; off-policy the outcome part keeps PPO's clipped ratio and the distillation
part the capped importance weight, as each paper does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from credit import objectives as obj
from credit import signal
from credit.scoring import Packed


# every process's rows of some per-rollout tensors (the loop's ``credit.parallel.all_rows``)
Gather = Callable[..., list[torch.Tensor | None]]


def _these(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return list(tensors)  # one process: its rows are the batch


@dataclass(frozen=True)
class StepBatch:
    """What the rollouts gave the method; row n is rollout n of this process (N rows, R response columns)."""

    student: Packed  # (x, y)
    teacher: Packed  # (c, y)
    negatives: list[Packed]  # K packs of (c^(k), y); rows without a contrast repeat c
    rewards: torch.Tensor  # (N,)
    has_signal: torch.Tensor  # (N,) 1.0 where the teacher context has a demo or feedback
    has_contrast: torch.Tensor  # (N,) 1.0 where the rollout has K negatives of other problems
    group_size: int  # G: rollouts of one prompt are contiguous rows
    dtype: torch.dtype = torch.float32  # of every log-prob (float64 for a float64 model)
    old_logp: torch.Tensor | None = None  # (N, R) ℓold: off-policy updates, or a score that needs ℓS
    initial_logp: torch.Tensor | None = None  # (N, R) log π_init(y_t): the KL metric's (log.kl_every)

    @property
    def distill_mask(self) -> torch.Tensor:
        """(N, R) response tokens of rollouts with a teacher signal."""
        return self.student.response_mask * self.has_signal[:, None]


@dataclass(frozen=True)
class Targets:
    """What a method's ``prepare`` computed from a StepBatch (no grad), read-only afterwards."""

    teacher_logp: torch.Tensor | None = None  # (N, R) ℓT, 0 on rows without a teacher signal
    generic_logp: torch.Tensor | None = None  # (N, R) G, 0 on rows without a contrast
    advantage: torch.Tensor | None = None  # (N,) a sequence-level advantage: GRPO's, or sequence mode's
    outcome: Targets | None = None  # Blend: the outcome part's (the fields above are the distillation part's)


@dataclass
class Micro:
    """One micro-batch of the update: the student's forward with gradient.

    The student's hidden states and head, not its (n, R, V) logits: a mode that needs more than ℓS
    (logit mode's top-K support) computes it from them chunk by chunk (``credit.signal.head_logprobs``).
    """

    rows: torch.Tensor  # (n,) row indices into the StepBatch
    hidden: signal.Hidden | None  # (n, R, H) states predicting each response token, and the head (grad)
    logp: torch.Tensor  # (n, R) ℓS (grad)
    old_logp: torch.Tensor  # (n, R) ℓold (= sg(ℓS) on-policy)
    off_policy: bool
    first_epoch: bool


class Scorer(Protocol):
    """The no-grad forwards a method may ask for (implemented by the loop over the teacher θ_T)."""

    def teacher_logprobs(self, packs: list[Packed]) -> torch.Tensor:
        """ℓ of the response tokens under the teacher for each pack, one batched pass: (P, M, R)."""

    def teacher_logprobs_at(self, packed: Packed, index: torch.Tensor | None, role: str = "teacher") -> torch.Tensor:
        """Teacher log-probs at the ids ``index`` (M, R, K) -> (M, R, K), or over the whole vocabulary
        (M, R, V) when ``index`` is None; ``role`` "teacher" (c) or "negatives" (c^(k))."""


@dataclass
class LossOut:
    loss: torch.Tensor  # (n, R) per-token loss
    mask: torch.Tensor  # (n, R) tokens that carry an advantage: the aggregation's mask and denominator
    clipped: torch.Tensor | None = None  # (n, R) PPO clip indicator (outcome RL)
    teacher_logp: torch.Tensor | None = None  # (n, R) ℓT of the sampled tokens, when the loss scored them (logits)
    generic_logp: torch.Tensor | None = None  # (n, R) G of the sampled tokens, likewise


@dataclass
class Seen:
    """What the update's first epoch saw, for ``signal/*``: ℓS, and ℓT and G where the loss scored them.
    The loop fills it (``record``), one micro-batch at a time."""

    student_logp: torch.Tensor  # (N, R)
    teacher_logp: torch.Tensor | None = None  # (N, R)
    generic_logp: torch.Tensor | None = None  # (N, R)
    scored: bool = False  # whether any row was (a batch without an advantage anywhere runs no forward)

    @classmethod
    def empty(cls, b: StepBatch) -> Seen:
        return cls(torch.zeros_like(b.student.response_mask, dtype=b.dtype))

    def record(self, rows: torch.Tensor, logp: torch.Tensor, out: LossOut) -> None:
        self.scored = True
        self.student_logp[rows] = logp.detach().to(self.student_logp.dtype)
        for name in ("teacher_logp", "generic_logp"):
            value = getattr(out, name)
            if value is not None:
                if getattr(self, name) is None:
                    setattr(self, name, torch.zeros_like(self.student_logp))
                getattr(self, name)[rows] = value.detach().to(self.student_logp.dtype)


def _weight(m: Micro, cap: float) -> torch.Tensor | None:
    return obj.importance_weight(m.logp, m.old_logp, cap) if m.off_policy else None


# ----------------------------------------------------------------------------- outcome RL


class GRPO:
    """Outcome RL: PPO's clipped surrogate with the group-normalized reward on every token."""

    num_negatives = 0
    needs_student_logp = False
    uses_teacher = False

    def __init__(self, eps_low: float, eps_high: float, scale_std: bool = True):
        self.eps_low, self.eps_high, self.scale_std = eps_low, eps_high, scale_std

    def prepare(self, b: StepBatch, scorer: Scorer) -> Targets:
        return Targets(advantage=signal.group_advantages(b.rewards, b.group_size, self.scale_std))

    def loss(self, m: Micro, b: StepBatch, t: Targets, scorer: Scorer) -> LossOut:
        adv = t.advantage[m.rows, None].expand_as(m.logp)
        loss, clipped = obj.ppo_clip_loss(m.logp, m.old_logp, adv, self.eps_low, self.eps_high)
        return LossOut(loss, self.loss_mask(b, m.rows), clipped)

    def loss_mask(self, b: StepBatch, rows: torch.Tensor) -> torch.Tensor:
        return b.student.response_mask[rows]

    def metrics(self, b: StepBatch, t: Targets, seen: Seen, gather: Gather = _these) -> dict[str, float]:
        return {}


# ----------------------------------------------------------------------------- self-distillation / CREDIT


class _Distill:
    """What every SDPO/CREDIT mode shares: λ, K, the teacher-side targets and the ``signal/*`` metrics.

    ``lam = 0, k = 0`` is SDPO. A rollout without a distinct negative (``has_contrast = 0``) takes
    G := ℓS, so its CREDIT reward r^λ = ΔV: it falls back to SDPO, counted in ``credit/no_contrast_fraction``.
    """

    needs_student_logp = False
    uses_teacher = True

    def __init__(self, lam: float, k: int, aggregator: str, is_clip: float):
        signal.check_unit_interval("lam", lam)
        if lam > 0 and k < 1:
            raise ValueError(f"lam={lam} needs negatives (k >= 1); SDPO is lam=0, k=0")
        self.lam, self.num_negatives, self.aggregator, self.is_clip = lam, k, aggregator, is_clip

    def _score_tokens(self, b: StepBatch, scorer: Scorer) -> Targets:
        """ℓT on rows with a signal and G on rows with a contrast, one batched pass: (N, R) each."""
        n, r = b.student.response_ids.shape
        teacher = torch.zeros(n, r, dtype=b.dtype, device=b.rewards.device)
        generic = torch.zeros_like(teacher) if self.num_negatives else None
        active = b.has_signal.nonzero().squeeze(-1)
        if active.numel():
            packs = [b.teacher.rows(active)] + [neg.rows(active) for neg in b.negatives[: self.num_negatives]]
            logp = scorer.teacher_logprobs(packs)  # (1+K, A, R)
            teacher[active] = logp[0].to(teacher.dtype)
            if generic is not None:
                generic[active] = signal.generic_part(logp[1:].transpose(0, 1), self.aggregator).to(teacher.dtype)
        return Targets(teacher_logp=teacher, generic_logp=generic)

    def _generic_or_student(self, generic: torch.Tensor, student: torch.Tensor, rows: torch.Tensor,
                            b: StepBatch) -> torch.Tensor:
        """G where the rollout has a contrast, else ℓS (so that r^λ = ΔV there). Shapes broadcast on dim 0."""
        contrast = b.has_contrast[rows].bool().view(-1, *([1] * (generic.dim() - 1)))
        return torch.where(contrast, generic, student.detach())

    def token_reward(self, teacher_logp: torch.Tensor, generic_logp: torch.Tensor | None,
                     student_logp: torch.Tensor, rows: torch.Tensor, b: StepBatch) -> torch.Tensor:
        """r^λ_t = (1−λ)·ΔV_t + λ·S_t for the given rows: (n, R)."""
        dv = signal.delta_v(teacher_logp, student_logp.detach())
        if not self.num_negatives:
            return dv
        generic = self._generic_or_student(generic_logp, student_logp, rows, b)
        return signal.credit_reward(dv, signal.specific_part(teacher_logp, generic), self.lam)

    def loss_mask(self, b: StepBatch, rows: torch.Tensor) -> torch.Tensor:
        return b.distill_mask[rows]

    def metrics(self, b: StepBatch, t: Targets, seen: Seen, gather: Gather = _these) -> dict[str, float]:
        teacher = t.teacher_logp if t.teacher_logp is not None else seen.teacher_logp
        generic = t.generic_logp if t.generic_logp is not None else seen.generic_logp
        return signal_metrics(*gather(b.student.response_mask, b.has_signal, b.has_contrast, b.rewards,
                                      seen.student_logp, teacher, generic if self.num_negatives else None))


class TokenCredit(_Distill):
    """SDPO/CREDIT token mode: −sg(A_t)·w_t·ℓS_t with A_t = r^λ_t (optionally reward-to-go, clipped)."""

    def __init__(self, lam: float, k: int, aggregator: str, is_clip: float, *, reward_to_go: bool = False,
                 gamma: float = 1.0, clip_advantage: float | None = None):
        super().__init__(lam, k, aggregator, is_clip)
        self.reward_to_go, self.gamma, self.clip = reward_to_go, gamma, clip_advantage

    def prepare(self, b: StepBatch, scorer: Scorer) -> Targets:
        return self._score_tokens(b, scorer)

    def loss(self, m: Micro, b: StepBatch, t: Targets, scorer: Scorer) -> LossOut:
        mask = self.loss_mask(b, m.rows)
        generic = t.generic_logp[m.rows] if t.generic_logp is not None else None
        adv = self.token_reward(t.teacher_logp[m.rows], generic, m.logp, m.rows, b)
        if self.reward_to_go:
            adv = signal.reward_to_go(adv, mask, self.gamma)
        adv = signal.clip_advantage(adv, self.clip) * mask  # A_SD = 0 without a teacher signal
        return LossOut(obj.reinforce_loss(m.logp, adv, _weight(m, self.is_clip)), mask)


class SequenceCredit(_Distill):
    """Sequence mode: score Σ_t r^λ_t (or its mean), normalized within the prompt group over the rollouts
    that have a teacher signal only, broadcast to every token (λ = 0: SDPO's sequence pMI Σ ΔV)."""

    needs_student_logp = True  # r^λ holds (1−λ)·ℓS, and a rollout without a contrast falls back to ΔV

    def __init__(self, lam: float, k: int, aggregator: str, is_clip: float, *, length_normalize: bool = False,
                 scale_std: bool = True):
        super().__init__(lam, k, aggregator, is_clip)
        self.length_normalize, self.scale_std = length_normalize, scale_std

    def prepare(self, b: StepBatch, scorer: Scorer) -> Targets:
        t = self._score_tokens(b, scorer)
        rows = torch.arange(len(b.rewards), device=b.rewards.device)
        mask = b.distill_mask
        reward = self.token_reward(t.teacher_logp, t.generic_logp, b.old_logp, rows, b)  # (N, R)
        score = signal.sequence_sum(reward, mask)  # (N,)
        if self.length_normalize:
            score = score / mask.sum(-1).clamp(min=1)
        advantage = signal.group_advantages(score, b.group_size, self.scale_std, mask=b.has_signal)
        return Targets(teacher_logp=t.teacher_logp, generic_logp=t.generic_logp, advantage=advantage)

    def loss(self, m: Micro, b: StepBatch, t: Targets, scorer: Scorer) -> LossOut:
        adv = t.advantage[m.rows, None].expand_as(m.logp)
        return LossOut(obj.reinforce_loss(m.logp, adv, _weight(m, self.is_clip)), self.loss_mask(b, m.rows))


class LogitCredit(_Distill):
    """Logit mode on the student's top-K (+ tail): SDPO's D_α(p_S, p_T), or CREDIT's −Σ_v p_S(v)·sg(A(v)).

    The support is the *current* student's top-K, so the teacher runs inside the update, on the
    micro-batch; the sampled token's ℓT and G are kept from the first epoch for ``signal/*``.
    Student and teacher log-probs come from hidden states chunk by chunk: the top-K ids, then the
    log-probs at them (the teacher's at the top-K and the sampled token in one pass), so only (n, R, K)
    tensors exist; ``top_k: None`` (the whole vocabulary) builds (n, R, V) ones.
    """

    def __init__(self, lam: float, k: int, aggregator: str, is_clip: float, *, alpha: float, top_k: int | None,
                 tail: bool, temperature: float):
        super().__init__(lam, k, aggregator, is_clip)
        if lam > 0 and alpha != 1.0:
            raise ValueError(f"alpha={alpha}: logit-mode CREDIT is defined for the reverse-KL family (alpha=1)")
        self.alpha, self.top_k, self.tail, self.temperature = alpha, top_k, tail, temperature

    def prepare(self, b: StepBatch, scorer: Scorer) -> Targets:
        return Targets()  # the teacher runs inside the update, on the current student's support

    def _teacher(self, scorer: Scorer, packed: Packed, ask: torch.Tensor | None, tokens: torch.Tensor,
                 role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's support (n, R, U) and its ℓ of the sampled tokens (n, R), from one pass: at the
        top-K ids with the sampled token appended (``ask``), or over the whole vocabulary (None)."""
        logp = scorer.teacher_logprobs_at(packed, ask, role)
        if ask is None:
            return logp, logp.gather(-1, tokens[..., None]).squeeze(-1)
        return obj.support_from_topk(logp[..., :-1], self.tail), logp[..., -1]

    def loss(self, m: Micro, b: StepBatch, t: Targets, scorer: Scorer) -> LossOut:
        mask = self.loss_mask(b, m.rows)
        tokens = b.student.response_ids[m.rows]  # (n, R)
        if self.top_k:
            index = signal.head_topk(m.hidden, self.top_k)  # (n, R, K), the current student's
            student = obj.support_from_topk(signal.head_logprobs(m.hidden, index, self.temperature), self.tail)
            ask = torch.cat([index, tokens[..., None]], dim=-1)  # (n, R, K+1)
        else:
            student, ask = signal.head_full_logprobs(m.hidden, self.temperature), None  # (n, R, V)
        teacher, t_token = self._teacher(scorer, b.teacher.rows(m.rows), ask, tokens, "teacher")
        g_token = None
        if self.num_negatives:
            negs, neg_token = [], []
            for neg in b.negatives[: self.num_negatives]:
                support, token = self._teacher(scorer, neg.rows(m.rows), ask, tokens, "negatives")
                negs.append(support)
                neg_token.append(token)
            generic = self._generic_or_student(signal.AGGREGATORS[self.aggregator](torch.stack(negs, 1)),
                                               student, m.rows, b)  # (n, R, U)
            g_token = signal.generic_part(torch.stack(neg_token, 1), self.aggregator)
            loss = obj.credit_logit_loss(student, teacher, generic, self.lam)
        else:
            loss = obj.divergence(student, teacher, self.alpha)
        weight = _weight(m, self.is_clip)
        return LossOut(loss if weight is None else loss * weight, mask, teacher_logp=t_token, generic_logp=g_token)


# ----------------------------------------------------------------------------- SDPO paper Eq. 3


class Blend:
    """A = w·A_GRPO + (1−w)·A_SD per token: one loss, one aggregation, one denominator.

    The denominator counts the tokens of rollouts that carry an advantage: every rollout when w > 0
    (GRPO scores them all; a rollout without a teacher signal has A_SD = 0), and at w = 0 only those
    with a teacher signal, so that w = 0 is SDPO/CREDIT and w = 1 is GRPO, bit for bit.
    """

    def __init__(self, outcome: GRPO, distill: _Distill, w: float):
        signal.check_unit_interval("w", w)
        self.outcome, self.distill, self.w = outcome, distill, w
        self.num_negatives = distill.num_negatives
        self.needs_student_logp = distill.needs_student_logp
        self.uses_teacher = True

    def prepare(self, b: StepBatch, scorer: Scorer) -> Targets:
        return dataclasses.replace(self.distill.prepare(b, scorer), outcome=self.outcome.prepare(b, scorer))

    def loss(self, m: Micro, b: StepBatch, t: Targets, scorer: Scorer) -> LossOut:
        rl, sd = self.outcome.loss(m, b, t.outcome, scorer), self.distill.loss(m, b, t, scorer)
        loss = self.w * rl.loss + (1.0 - self.w) * torch.where(sd.mask.bool(), sd.loss, torch.zeros_like(sd.loss))
        return LossOut(loss, self.loss_mask(b, m.rows), rl.clipped, sd.teacher_logp, sd.generic_logp)

    def loss_mask(self, b: StepBatch, rows: torch.Tensor) -> torch.Tensor:
        return (self.outcome if self.w > 0 else self.distill).loss_mask(b, rows)

    def metrics(self, b: StepBatch, t: Targets, seen: Seen, gather: Gather = _these) -> dict[str, float]:
        return self.distill.metrics(b, t, seen, gather)


# ----------------------------------------------------------------------------- from the config


def build_method(cfg) -> GRPO | _Distill | Blend:
    """The method object of a validated ``TrainConfig``; the only place that reads method/mode strings."""
    c, o = cfg.credit, cfg.optim
    outcome = GRPO(o.eps_low, o.eps_high, c.grpo_scale_std)
    if cfg.method == "grpo":
        return outcome
    if cfg.method == "credit":
        lam = c.lam
        k = cfg.rollout.prompts_per_step - 1 if c.negative_strategy == "all" else c.num_negatives
    else:
        lam, k = 0.0, 0
    common = dict(lam=lam, k=k, aggregator=c.aggregator, is_clip=o.is_clip)
    distill = {
        "token": lambda: TokenCredit(**common, reward_to_go=c.reward_to_go, gamma=c.gamma,
                                     clip_advantage=c.clip_advantage),
        "sequence": lambda: SequenceCredit(**common, length_normalize=c.sequence_length_normalize,
                                           scale_std=c.grpo_scale_std),
        "logits": lambda: LogitCredit(**common, alpha=c.alpha, top_k=c.top_k, tail=c.tail,
                                      temperature=cfg.rollout.temperature),
    }[c.mode]()
    return Blend(outcome, distill, c.grpo_weight) if c.grpo_weight > 0 else distill


# ----------------------------------------------------------------------------- metrics


def signal_metrics(response_mask: torch.Tensor, has_signal: torch.Tensor, has_contrast: torch.Tensor,
                   rewards: torch.Tensor, student_logp: torch.Tensor, teacher_logp: torch.Tensor | None,
                   generic_logp: torch.Tensor | None) -> dict[str, float]:
    """``signal/*``: ΔV, S, G over tokens of rollouts with a teacher signal, the same in every mode.
    ``response_mask`` and the log-probs of the sampled tokens: (N, R); ``has_signal``, ``has_contrast``,
    ``rewards``: (N,), as in ``StepBatch``."""
    if teacher_logp is None:
        return {}
    mask = response_mask * has_signal[:, None]  # StepBatch.distill_mask
    out = {"signal/active_fraction": has_signal.mean().item()}
    if not mask.any():
        return out
    dv = signal.delta_v(teacher_logp, student_logp)
    pmi = signal.sequence_sum(dv, mask)
    active = has_signal.bool()
    out.update({
        "signal/dv_mean": signal.masked_mean(dv, mask).item(),
        "signal/dv_std": signal.masked_std(dv, mask).item(),
        "signal/pmi_mean": pmi[active].mean().item(),
    })
    if active.sum() > 1 and rewards[active].std() > 0 and pmi[active].std() > 0:
        out["signal/pmi_reward_corr"] = torch.corrcoef(torch.stack([pmi[active], rewards[active]]))[0, 1].item()
    if generic_logp is not None:
        cmask = mask * has_contrast[:, None]
        out["credit/no_contrast_fraction"] = 1.0 - has_contrast[active].mean().item()
        if cmask.any():
            s = signal.specific_part(teacher_logp, generic_logp)
            contrasted = (has_signal * has_contrast).bool()
            out.update({
                "signal/s_mean": signal.masked_mean(s, cmask).item(),
                "signal/s_std": signal.masked_std(s, cmask).item(),
                "signal/g_mean": signal.masked_mean(generic_logp, cmask).item(),
                "signal/contrastive_mean": signal.sequence_sum(s, cmask)[contrasted].mean().item(),
                "signal/s_negative_fraction": signal.masked_mean((s < 0).float(), cmask).item(),
            })
    return out
