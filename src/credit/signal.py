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

import contextlib
import math
from dataclasses import dataclass

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


# ----------------------------------------------------------------------------- log-probs from hidden states


@dataclass
class Hidden:
    """Hidden states and the linear head that maps them to logits: ``z = states · weightᵀ + bias``.

    ``states`` (..., H): the decoder's output (final norm applied) at the positions that predict the
    response tokens; ``weight`` (V, H) and ``bias`` (V,) or None: the model's ``lm_head``. Every
    function below takes one ``Hidden`` or a mixture ``[(Hidden, c), ...]`` whose logits are
    ``Σ c·z`` (the trust-region teacher: (1−r)·z_ref + r·z_θ); none of them builds a (..., V) tensor
    except ``head_full_logprobs``, whose support is the vocabulary.
    """

    states: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None


def _mixture(head) -> list[tuple[Hidden, float]]:
    parts = [(head, 1.0)] if isinstance(head, Hidden) else [(h, float(c)) for h, c in head]
    if not parts:
        raise ValueError("an empty mixture of heads; give at least one (Hidden, weight)")
    (first, _), *rest = parts
    for h, _ in parts:
        if h.states.shape[-1] != h.weight.shape[-1]:
            raise ValueError(f"states have hidden size {h.states.shape[-1]} but the head weight is "
                             f"{tuple(h.weight.shape)}; the weight must be (V, H)")
    for h, _ in rest:
        if h.states.shape != first.states.shape or h.weight.shape[0] != first.weight.shape[0]:
            raise ValueError(f"mixed heads differ: states {tuple(h.states.shape)} vs {tuple(first.states.shape)}, "
                             f"vocabulary {h.weight.shape[0]} vs {first.weight.shape[0]}")
    return parts


def _no_autocast(device: torch.device):
    """The head and its log-softmax run in fp32 (fp64 for a fp64 model) whatever autocast the caller is in."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _weight_blocks(weight: torch.Tensor, acc: torch.dtype, chunk_bytes: int):
    """(vocabulary slice, weight rows in ``acc``): the weight itself when it is already in ``acc`` (an
    fp32 master), else blocks of rows cast one at a time (a bf16 base: no fp32 copy of the whole head)."""
    if weight.dtype == acc:
        yield slice(None), weight
        return
    rows = _chunk_rows(weight.shape[1], chunk_bytes)
    for v in range(0, weight.shape[0], rows):
        yield slice(v, v + rows), weight[v: v + rows].to(acc)


def _chunk_logits(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]], rows: slice,
                  acc: torch.dtype, chunk_bytes: int) -> torch.Tensor:
    """Σ c·(states[rows]·Wᵀ + b) in ``acc``: (r, V). ``parts`` hold flattened (M, H) states."""
    out = None
    for states, weight, bias, c in parts:
        x = states[rows].to(acc)  # (r, H)
        if weight.dtype == acc:
            z = x @ weight.t()  # (r, V)
        else:
            z = torch.empty(x.shape[0], weight.shape[0], dtype=acc, device=x.device)  # (r, V)
            for vs, w in _weight_blocks(weight, acc, chunk_bytes):
                z[:, vs] = x @ w.t()
        if bias is not None:
            z.add_(bias.to(acc))
        if out is None:
            out = z if c == 1.0 else z.mul_(c)
        else:
            out.add_(z, alpha=c)
    return out


def _logsumexp_(z: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, overwriting ``z`` (no second chunk-sized buffer). (r, V) -> (r,)."""
    m = z.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return z.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))


def _flat_parts(head) -> tuple[list[tuple[Hidden, float]], tuple, tuple[float, ...]]:
    parts = _mixture(head)
    tensors = tuple(t for h, _ in parts for t in (h.states.reshape(-1, h.states.shape[-1]), h.weight, h.bias))
    return parts, tensors, tuple(c for _, c in parts)


def _unflat(tensors, coefs):
    return [(tensors[3 * i], tensors[3 * i + 1], tensors[3 * i + 2], c) for i, c in enumerate(coefs)]


def _acc_dtype(tensors) -> torch.dtype:
    dtype = torch.float32
    for t in tensors[:2]:  # the first part's states and weight decide (fp64 model -> fp64)
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _HeadPicked(torch.autograd.Function):
    """``log softmax(Σ c·(h·Wᵀ + b) / T)`` at K ids per row, from hidden states, chunk by chunk over rows.

    Forward: per chunk of rows, the logits in fp32, the picked entries and the logsumexp; only
    (M, K) and (M,) survive. Backward: per chunk, the logits again, ``dz = (scatter(g) − Σg·softmax)/T``
    in place, then ``dh = dz·W`` and ``dW += dzᵀ·h`` (the approach of Liger's fused linear
    cross-entropy, for log-probs at given ids). Peak extra memory: one (rows, V) chunk plus the
    gradients themselves; no (M, V) tensor in any dtype.
    """

    @staticmethod
    def forward(ctx, index, temperature, chunk_bytes, coefs, *tensors):
        parts = _unflat(tensors, coefs)
        acc, device = _acc_dtype(tensors), index.device
        m, vocab = index.shape[0], tensors[1].shape[0]
        out = torch.empty(index.shape, dtype=acc, device=device)  # (M, K)
        lse = torch.empty(m, dtype=acc, device=device)  # (M,)
        step = _chunk_rows(vocab, chunk_bytes)
        with _no_autocast(device):
            for s in range(0, m, step):
                z = _chunk_logits(parts, slice(s, s + step), acc, chunk_bytes)  # (r, V)
                if temperature != 1.0:
                    z.div_(temperature)
                out[s: s + step] = z.gather(1, index[s: s + step])
                lse[s: s + step] = _logsumexp_(z)
                del z  # before the next chunk is allocated: one chunk alive, not two
        ctx.save_for_backward(index, lse, *tensors)
        ctx.temperature, ctx.chunk_bytes, ctx.coefs = temperature, chunk_bytes, coefs
        return out.sub_(lse[:, None])

    @staticmethod
    def backward(ctx, grad_out):
        index, lse, *tensors = ctx.saved_tensors
        parts = _unflat(tensors, ctx.coefs)
        needs = ctx.needs_input_grad[4:]
        acc, t, cb = lse.dtype, ctx.temperature, ctx.chunk_bytes
        g = grad_out.to(acc) / t  # (M, K)
        g_sum = g.sum(-1, keepdim=True)  # (M, 1)
        grads = [torch.zeros(x.shape, dtype=acc, device=x.device) if x is not None and need else None
                 for x, need in zip(tensors, needs)]
        step = _chunk_rows(tensors[1].shape[0], cb)
        with _no_autocast(index.device):
            for s in range(0, index.shape[0], step):
                rows = slice(s, s + step)
                dz = _chunk_logits(parts, rows, acc, cb)  # (r, V)
                if t != 1.0:
                    dz.div_(t)
                dz.sub_(lse[rows, None]).exp_().mul_(-g_sum[rows])  # −Σg·softmax
                dz.scatter_add_(1, index[rows], g[rows])  # + g·onehot: the gradient w.r.t. the raw logits
                for i, (states, weight, _, c) in enumerate(parts):
                    gh, gw, gb = grads[3 * i: 3 * i + 3]
                    x = states[rows].to(acc) if gw is not None else None
                    for vs, w in _weight_blocks(weight, acc, cb):
                        if gh is not None:
                            gh[rows].addmm_(dz[:, vs], w, alpha=c)
                        if gw is not None:
                            gw[vs].addmm_(dz[:, vs].t(), x, alpha=c)
                    if gb is not None:
                        gb.add_(dz.sum(0), alpha=c)
                del dz, x
        grads = [None if gr is None else gr.to(x.dtype) for gr, x in zip(grads, tensors)]
        return (None, None, None, None, *grads)


def head_logprobs(head, index: torch.Tensor, temperature: float = 1.0,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """``log softmax(z / T)`` at the ids ``index`` (..., K), with ``z`` the (mixed) head's logits of
    ``states`` (..., H): (..., K) in fp32 (fp64 for a fp64 model). Differentiable w.r.t. the states,
    the head weight and bias; chunked over rows, so no (..., V) tensor exists in any dtype."""
    parts, tensors, coefs = _flat_parts(head)
    states = parts[0][0].states
    if index.shape[:-1] != states.shape[:-1]:
        raise ValueError(f"index has shape {tuple(index.shape)} but states {tuple(states.shape)}; "
                         "index must be states.shape[:-1] + (K,)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    flat = index.reshape(-1, index.shape[-1])  # (M, K)
    out = _HeadPicked.apply(flat, float(temperature), int(chunk_bytes), coefs, *tensors)
    return out.view(index.shape)


def head_token_logprobs(head, tokens: torch.Tensor, temperature: float = 1.0,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """ℓ of ``tokens`` (...) from the head's states (..., H): (...). ``head_logprobs`` with K = 1."""
    return head_logprobs(head, tokens.unsqueeze(-1), temperature, chunk_bytes).squeeze(-1)


@torch.no_grad()
def head_topk(head, k: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Ids of the top-K logits at each position, chunk by chunk: (..., H) states -> (..., K)."""
    parts, tensors, coefs = _flat_parts(head)
    states, vocab = parts[0][0].states, tensors[1].shape[0]
    if not 1 <= k <= vocab:
        raise ValueError(f"top_k={k} but the vocabulary has {vocab} tokens; allowed: 1 <= top_k <= {vocab}")
    flat, acc = _unflat(tensors, coefs), _acc_dtype(tensors)
    m = tensors[0].shape[0]
    out = torch.empty(m, k, dtype=torch.long, device=states.device)
    step = _chunk_rows(vocab, chunk_bytes)
    with _no_autocast(states.device):
        for s in range(0, m, step):
            out[s: s + step] = _chunk_logits(flat, slice(s, s + step), acc, chunk_bytes).topk(k, dim=-1).indices
    return out.view(*states.shape[:-1], k)


def head_full_logprobs(head, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(z / T)`` over the whole vocabulary: (..., H) -> (..., V), in fp32 (fp64).

    The one function here that builds a (..., V) tensor: a full-vocabulary support needs it (logit
    mode with ``top_k: null``, for checks and small vocabularies)."""
    parts = _mixture(head)
    acc = _acc_dtype((parts[0][0].states, parts[0][0].weight))
    with _no_autocast(parts[0][0].states.device):
        z = sum(c * torch.nn.functional.linear(h.states.to(acc), h.weight.to(acc),
                                               None if h.bias is None else h.bias.to(acc)) for h, c in parts)
        return torch.log_softmax(z / temperature, dim=-1)


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


def sampled_kl(sampled_logp: torch.Tensor, reference_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens drawn from π: ``r − 1 − log r`` with
    ``r = π_ref(y_t) / π(y_t)`` (Schulman's k3): unbiased, never negative, 0 where the two agree.
    (N, T), (N, T) -> (N, T)."""
    check_same_shape(sampled_logp=sampled_logp, reference_logp=reference_logp)
    log_r = reference_logp - sampled_logp
    return log_r.exp() - 1 - log_r


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
    grouped = scores.to(_accumulator(scores.dtype)).view(-1, group_size)  # (B, G), fp64 scores stay fp64
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
