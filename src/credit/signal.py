"""The credit-assignment signal: pure functions over tensors (docs/method.md §1).

Shapes: ``N`` samples (B prompts × G rollouts, grouped contiguously), ``T`` response tokens,
``K`` negative contexts, ``V`` vocabulary. All log-probs are fp32, taken at the sampling temperature
(logits of both student and teacher divided by it).

    ΔV_t  = ℓT_t − ℓS_t                      self-distillation token reward (SDPO's advantage)
    G_t   = agg_k ℓN^k_t                     input-generic part of the teacher log-prob
    S_t   = ℓT_t − G_t                       input-specific signal
    r^λ_t = (1−λ)·ΔV_t + λ·S_t               CREDIT token reward (λ=0: SDPO, λ=1: pure S)

Nothing here touches a config, an accelerator or I/O; invalid arguments raise ``ValueError`` naming
the argument and what is allowed.
"""

from __future__ import annotations

import math

import torch

# Rows of the (M, V) logit matrix processed at once: chosen so one fp32 chunk stays under this budget.
DEFAULT_CHUNK_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------- argument checks


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the tensors whose shapes differ."""
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape {tuple(first.shape)}; "
                "they must match"
            )


def check_unit_interval(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name}={value} is outside [0, 1]; allowed: 0 <= {name} <= 1")


def check_mask(mask: torch.Tensor, name: str = "mask") -> None:
    if mask.numel() == 0 or not bool(mask.any()):
        raise ValueError(f"{name} is empty (no position is 1); at least one valid token is required")


def _chunk_rows(num_cols: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (4 * max(num_cols, 1)))


# ----------------------------------------------------------------------------- token log-probs


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 logits, fp64 for fp64 ones (a float64 check stays float64 end to end)."""
    return torch.promote_types(dtype, torch.float32)


class _ChunkedPickedLogprob(torch.autograd.Function):
    """``log softmax(logits / T)`` at K token ids per row, with a chunked forward and a fused chunked
    backward. logits (..., V), index (..., K) -> (..., K).

    The backward writes ``(scatter(g, index) − Σ_k g_k · softmax) / T`` chunk by chunk into one
    gradient buffer: the only logits-sized allocation (a gather + logsumexp pair would need two dense
    gradients, plus their sum).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, temperature: float, chunk_bytes: int):
        flat = logits.reshape(-1, logits.shape[-1])  # (M, V)
        idx = index.reshape(flat.shape[0], -1)  # (M, K)
        rows = _chunk_rows(flat.shape[1], chunk_bytes)
        acc = _accumulator(logits.dtype)
        lse = torch.empty(flat.shape[0], dtype=acc, device=logits.device)  # (M,)
        for s in range(0, flat.shape[0], rows):
            lse[s : s + rows] = torch.logsumexp(flat[s : s + rows].to(acc) / temperature, dim=-1)
        picked = flat.gather(1, idx).to(acc) / temperature  # (M, K)
        ctx.save_for_backward(logits, index, lse)
        ctx.temperature, ctx.chunk_bytes = temperature, chunk_bytes
        return (picked - lse[:, None]).view(index.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        idx = index.reshape(flat.shape[0], -1)  # (M, K)
        g = grad_out.reshape(idx.shape).to(lse.dtype) / ctx.temperature  # (M, K)
        g_sum = g.sum(-1, keepdim=True)  # (M, 1)
        grad = torch.empty_like(flat)
        rows = _chunk_rows(flat.shape[1], ctx.chunk_bytes)
        for s in range(0, flat.shape[0], rows):
            chunk = torch.exp(flat[s : s + rows].to(lse.dtype) / ctx.temperature - lse[s : s + rows, None])
            chunk *= -g_sum[s : s + rows]
            chunk.scatter_add_(1, idx[s : s + rows], g[s : s + rows])  # g·onehot − Σg·softmax
            grad[s : s + rows] = chunk.to(grad.dtype)
        return grad.view_as(logits), None, None, None


def picked_logprobs(
    logits: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """``log softmax(logits / T)`` at the ids ``index`` (..., K): (..., K), fp32 (fp64 for fp64 logits).

    Chunked forward, one fused backward (one logits-sized gradient, whatever K)."""
    if index.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"index has shape {tuple(index.shape)} but logits {tuple(logits.shape)}; "
            "index must be logits.shape[:-1] + (K,)"
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    return _ChunkedPickedLogprob.apply(logits, index, float(temperature), int(chunk_bytes))


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """``log softmax(logits / T)[tokens]`` in fp32 (fp64 for fp64 logits) without a full fp32 log-softmax.

    logits: (..., V) aligned with tokens (...,), i.e. ``logits[..., t, :]`` predicts ``tokens[..., t]``.
    Returns (...) fp32; differentiable w.r.t. logits. Peak extra memory is one fp32 chunk of
    ``chunk_bytes`` forward, and the gradient buffer itself backward.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"logits has shape {tuple(logits.shape)} and tokens {tuple(tokens.shape)}; "
            "logits must be tokens.shape + (V,)"
        )
    return picked_logprobs(logits, tokens.unsqueeze(-1), temperature, chunk_bytes).squeeze(-1)


def naive_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reference implementation (full fp32 log-softmax); used by tests and the memory benchmark."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- masked reductions


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1. Values at masked positions (even inf/nan) never leak."""
    check_same_shape(x=x, mask=mask)
    zeros = torch.zeros_like(x)
    kept = torch.where(mask.bool(), x, zeros)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over positions where ``mask`` is 1; the denominator is clamped at 1."""
    count = mask.float().sum() if dim is None else mask.float().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population std over valid positions (0 when fewer than 2)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask).sqrt()


# ----------------------------------------------------------------------------- token rewards


def delta_v(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """ΔV_t = ℓT_t − ℓS_t, the SDPO token reward. (N, T) -> (N, T)."""
    check_same_shape(teacher_logp=teacher_logp, student_logp=student_logp)
    return teacher_logp - student_logp


def generic_part(negative_logp: torch.Tensor, aggregator: str = "mean") -> torch.Tensor:
    """G_t, the input-generic part: (N, K, T) negatives' teacher log-probs -> (N, T).

    ``mean``: mean_k ℓN^k_t (the default). ``logmeanexp``: log mean_k exp(ℓN^k_t), the log of the
    teacher's average probability under the swapped inputs (a marginal over inputs).
    """
    if negative_logp.dim() != 3 or negative_logp.shape[1] == 0:
        raise ValueError(f"negative_logp must be (N, K, T) with K >= 1, got {tuple(negative_logp.shape)}")
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator='{aggregator}'; allowed: {sorted(AGGREGATORS)}")
    return AGGREGATORS[aggregator](negative_logp)


AGGREGATORS = {
    "mean": lambda x: x.mean(dim=1),
    "logmeanexp": lambda x: torch.logsumexp(x, dim=1) - math.log(x.shape[1]),
}


def specific_part(teacher_logp: torch.Tensor, generic: torch.Tensor) -> torch.Tensor:
    """S_t = ℓT_t − G_t, the input-specific signal. (N, T) -> (N, T)."""
    check_same_shape(teacher_logp=teacher_logp, generic=generic)
    return teacher_logp - generic


def credit_reward(delta: torch.Tensor, specific: torch.Tensor, lam: float) -> torch.Tensor:
    """r^λ_t = (1−λ)·ΔV_t + λ·S_t = ℓT_t − λ·G_t − (1−λ)·ℓS_t. (N, T) -> (N, T).

    Written as the convex combination so that λ=0 returns ΔV and λ=1 returns S bit for bit.
    """
    check_unit_interval("lam", lam)
    check_same_shape(delta=delta, specific=specific)
    return (1.0 - lam) * delta + lam * specific


def sequence_sum(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t over valid tokens: (N, T) -> (N,). Σ ΔV is the sequence pMI; Σ S the contrastive score."""
    return masked_sum(token_values, mask, dim=-1)


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Σ_{s≥t} γ^{s−t} r_s over valid tokens. (N, T) -> (N, T); 0 at masked positions."""
    check_same_shape(rewards=rewards, mask=mask)
    check_unit_interval("gamma", gamma)
    kept = torch.where(mask.bool(), rewards, torch.zeros_like(rewards))
    out = torch.zeros_like(kept)
    running = torch.zeros_like(kept[:, 0])
    for t in range(kept.shape[1] - 1, -1, -1):  # masked gaps carry the running sum without decaying it
        step = mask[:, t].bool()
        running = torch.where(step, kept[:, t] + gamma * running, running)
        out[:, t] = torch.where(step, running, torch.zeros_like(running))
    return out


def clip_advantage(adv: torch.Tensor, max_abs: float | None) -> torch.Tensor:
    """|A| ≤ c (None: unchanged)."""
    if max_abs is None:
        return adv
    if max_abs <= 0:
        raise ValueError(f"max_abs={max_abs} must be > 0 or None")
    return adv.clamp(-max_abs, max_abs)


# ----------------------------------------------------------------------------- sequence level


def group_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """GRPO's advantage: score minus its prompt-group mean, optionally divided by the group std.

    scores: (N,) with N = B·G, groups contiguous. Returns (N,). ``scale_by_std=False`` is Dr. GRPO.
    ``mask`` (N,): only rows with mask 1 enter their group's mean and (unbiased) std, and only they get
    an advantage (0 elsewhere) — sequence-mode CREDIT normalizes over the rollouts that have a teacher
    signal. A group with one active row gives it 0 (nothing to compare with).
    """
    if scores.dim() != 1 or group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"scores must be (N,) with N a multiple of group_size={group_size}, got {tuple(scores.shape)}"
        )
    grouped = scores.float().view(-1, group_size)  # (B, G)
    if mask is not None:
        check_same_shape(scores=scores, mask=mask)
        active = mask.bool().view(-1, group_size)  # (B, G)
        count = active.sum(1, keepdim=True).float()  # (B, 1)
        kept = torch.where(active, grouped, torch.zeros_like(grouped))
        centered = torch.where(active, grouped - kept.sum(1, keepdim=True) / count.clamp(min=1), kept)
        if scale_by_std:
            std = ((centered**2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
            centered = centered / (std + eps)
        return centered.view(-1)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        # unbiased std like TRL's GRPO; a group of one has no spread (and a zero advantage anyway)
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.ones_like(grouped[:, :1])
        centered = centered / (std + eps)
    return centered.view(-1)
