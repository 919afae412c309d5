"""Losses: pure functions from log-probs and advantages to per-token losses, and the one aggregation.

Per-token losses have shape (N, T) (or (M,) for flattened positions); ``aggregate`` is the only
place where they are reduced to a scalar. Nothing here touches a config, an accelerator or I/O.

Departures from the reference code, on purpose:
- ``credit_logit_loss`` is CREDIT's vocabulary-advantage loss ``−Σ_v p_S(v)·sg(A(v))``; it requires a
  proper categorical support (top-K + tail, top-K renormalized, or the full vocabulary) so that at
  λ = 0 its gradient equals that of ``KL(p_S‖p_T)`` on that support.
- The importance weight of the distillation loss clamps the log-ratio to ±20 before ``exp`` (as verl
  does) so a stale sample cannot produce inf.
"""

from __future__ import annotations

import math

import torch

from credit.signal import (
    DEFAULT_CHUNK_BYTES,
    check_mask,
    check_same_shape,
    check_unit_interval,
    masked_sum,
    picked_logprobs,
)

# ----------------------------------------------------------------------------- supports


def topk_index(student_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the student's top-K tokens: (..., V) -> (..., K). The teacher is gathered here too."""
    vocab = student_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top_k={k} but the vocabulary has {vocab} tokens; allowed: 1 <= top_k <= {vocab}")
    return student_logits.detach().topk(k, dim=-1).indices


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable; x is clamped just below 0 (an empty tail has mass ~1e-7)."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-7)))


def support_logprobs(
    logits: torch.Tensor,
    index: torch.Tensor | None,
    temperature: float = 1.0,
    tail: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Log-probs of a categorical over a support U_t.

    logits: (..., V). index: (..., K) token ids (the student's top-K) or None for the full vocabulary.
    The top-K entries are normalized over the FULL vocabulary; then ``tail=True`` appends one bucket
    log(1 − Σ_{v∈top-K} p(v)) -> (..., K+1), while ``tail=False`` renormalizes within the top-K
    -> (..., K). Either way the result is a proper distribution.
    """
    if index is None:
        return torch.log_softmax(logits.float() / temperature, dim=-1)
    return support_from_topk(picked_logprobs(logits, index, temperature, chunk_bytes), tail)  # one fused backward


def support_from_topk(top: torch.Tensor, tail: bool = True) -> torch.Tensor:
    """The support U_t from the top-K log-probs ``top`` (..., K), normalized over the FULL vocabulary:
    ``tail=True`` appends the bucket log(1 − Σ_{v∈top-K} p(v)) -> (..., K+1); ``tail=False`` renormalizes
    within the top-K -> (..., K). (``support_logprobs`` from logits, or from hidden states with
    ``signal.head_logprobs``.)"""
    top_mass = torch.logsumexp(top, dim=-1, keepdim=True)  # (..., 1)
    if tail:
        return torch.cat([top, _log1mexp(top_mass)], dim=-1)
    return top - top_mass


# ----------------------------------------------------------------------------- divergences


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) over the last dim; 0·log 0 = 0."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """KL(p_T‖p_S): mass-covering. (..., U) -> (...)."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """KL(p_S‖p_T): mode-seeking; SDPO paper Eq. 1. (..., U) -> (...)."""
    return _kl(student_logp, teacher_logp)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """D_α = (1−α)·KL(p_S‖M) + α·KL(p_T‖M), M = (1−α)p_S + α p_T (log-space). (..., U) -> (...).

    The mixture form vanishes at the end points, so ``divergence`` maps α=0 / α=1 to the forward /
    reverse KL as the SDPO code does; this function is the interior.
    """
    check_unit_interval("alpha", alpha)
    if alpha in (0.0, 1.0):
        raise ValueError("generalized_jsd needs 0 < alpha < 1; use divergence() for the KL end points")
    log_m = torch.logaddexp(student_logp + math.log1p(-alpha), teacher_logp + math.log(alpha))
    return (1 - alpha) * _kl(student_logp, log_m) + alpha * _kl(teacher_logp, log_m)


DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": generalized_jsd}


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """SDPO's divergence family D_α(p_S, p_T): α=0 forward KL, α=1 reverse KL, else generalized JSD.

    Both inputs are log-probs over the same support (..., U); returns (...).
    """
    check_unit_interval("alpha", alpha)
    check_same_shape(student_logp=student_logp, teacher_logp=teacher_logp)
    name = "forward_kl" if alpha == 0.0 else "reverse_kl" if alpha == 1.0 else "jsd"
    return DIVERGENCES[name](student_logp, teacher_logp, alpha)


def credit_logit_loss(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, generic_logp: torch.Tensor, lam: float
) -> torch.Tensor:
    """CREDIT's logit-level loss: −Σ_{v∈U} p_S(v)·sg(A(v)), A(v) = log p_T(v|c) − λ·G(v) − (1−λ)·log p_S(v).

    All three are log-probs over the same proper support (..., U); G(v) aggregates the negatives'
    teacher log-probs at the same indices. Returns (...). At λ = 0 its value is KL(p_S‖p_T) and its
    gradient equals ∇KL(p_S‖p_T) (Σ_v ∇p_S(v) = 0 on a proper support).
    """
    check_unit_interval("lam", lam)
    check_same_shape(student_logp=student_logp, teacher_logp=teacher_logp, generic_logp=generic_logp)
    # the convex form keeps λ = 0 exact even where G is -inf
    advantage = (1.0 - lam) * (teacher_logp - student_logp) + lam * (teacher_logp - generic_logp)
    return -(student_logp.exp() * advantage.detach()).sum(-1)


# ----------------------------------------------------------------------------- token-level policy gradients


def importance_weight(logp: torch.Tensor, old_logp: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Detached min(exp(ℓS − ℓold), cap) for off-policy distillation; the log-ratio is clamped to ±20."""
    check_same_shape(logp=logp, old_logp=old_logp)
    w = torch.exp((logp - old_logp).detach().clamp(-20.0, 20.0))
    return w if cap is None else w.clamp(max=cap)


def reinforce_loss(
    logp: torch.Tensor, advantages: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """−sg(A_t)·sg(w_t)·ℓS_t per token: SDPO's token-level loss when A_t = ℓT_t − ℓS_t. (N, T) -> (N, T)."""
    check_same_shape(logp=logp, advantages=advantages)
    coef = advantages.detach() if weight is None else advantages.detach() * weight.detach()
    return -coef * logp


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)·A), ρ = exp(ℓS − ℓold).

    Returns (loss (N, T), clipped (N, T) bool). On-policy (old = sg(ℓS)) ρ = 1 and the gradient is
    −A·∇ℓS.
    """
    check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages)
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    adv = advantages.detach()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


# ----------------------------------------------------------------------------- aggregation


def _token_mean(loss, mask, normalizer, count_empty):
    denom = mask.float().sum().clamp(min=1) if normalizer is None else normalizer
    return masked_sum(loss, mask) / denom


def _seq_denominator(mask, normalizer, count_empty):
    if normalizer is not None:
        return normalizer
    tokens = mask.float().sum(-1)  # (N,)
    return float(mask.shape[0]) if count_empty else (tokens > 0).float().sum().clamp(min=1)


def _seq_mean_token_mean(loss, mask, normalizer, count_empty):
    per_seq = masked_sum(loss, mask, dim=-1) / mask.float().sum(-1).clamp(min=1)  # (N,)
    return per_seq.sum() / _seq_denominator(mask, normalizer, count_empty)


def _seq_mean_token_sum(loss, mask, normalizer, count_empty):
    return masked_sum(loss, mask) / _seq_denominator(mask, normalizer, count_empty)


AGGREGATIONS = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
}


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    normalizer: float | torch.Tensor | None = None,
    count_empty_sequences: bool = True,
) -> torch.Tensor:
    """Reduce a (N, T) per-token loss to a scalar; the only reduction of a loss in the project.

    ``token-mean``: Σ l·m / Σ m. ``seq-mean-token-mean``: mean over sequences of each sequence's
    token mean. ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
    ``mask`` already excludes samples without a teacher signal; ``count_empty_sequences`` says
    whether such sequences still count in a sequence-mean denominator (the SDPO code counts them).
    ``normalizer`` replaces the local denominator by a global one (tokens or sequences of the whole
    batch, across micro-batches and processes) so that gradient accumulation and world size do not
    change the result. Values at masked positions never leak.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"mode='{mode}'; allowed: {sorted(AGGREGATIONS)}")
    check_same_shape(per_token=per_token, mask=mask)
    if normalizer is None:
        check_mask(mask)
    return AGGREGATIONS[mode](per_token, mask, normalizer, count_empty_sequences)
