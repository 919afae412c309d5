"""Score a fixed response under many contexts: the student under x, the teacher under c, the
negatives under c^(k). One packing, one forward, one slice: every caller gets (N, R) tensors whose
column t is response token t, whatever the context lengths.

Log-probs come from hidden states (``response_hidden``): the decoder's output at the positions that
predict the response, (N, R, H), and the head's weight; ``credit.signal.head_logprobs`` applies the
head and the log-softmax chunk by chunk in fp32, so no (N, R, V) logits exist in any dtype (at
Qwen3-8B, 8 rows × 2k tokens × V = 151,936 in fp32 would be ~10 GB per tensor). ``response_logits``
still gives the model's own logits, for checks and for callers that want them.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass

import torch

from credit.signal import DEFAULT_CHUNK_BYTES, Hidden, head_token_logprobs


@dataclass
class Packed:
    """Contexts left-padded to a common length C, responses right-padded to R: [pad ctx | resp pad].

    input_ids, attention_mask, position_ids: (N, C + R); response_ids, response_mask: (N, R).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    @property
    def response_len(self) -> int:
        return self.response_ids.shape[1]

    def to(self, device) -> Packed:
        return Packed(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                                self.response_ids, self.response_mask)))

    def rows(self, idx: slice | torch.Tensor) -> Packed:
        return Packed(self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx],
                      self.response_ids[idx], self.response_mask[idx])


def pack(contexts: list[list[int]], responses: list[list[int]], pad_id: int, response_len: int | None = None) -> Packed:
    """Pack N (context, response) pairs; ``response_len`` pads R to a fixed width (to align batches)."""
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses; one context per response")
    if any(len(c) == 0 for c in contexts):
        raise ValueError("an empty context cannot be scored: the first response token needs a preceding token")
    n = len(contexts)
    ctx_len = max(len(c) for c in contexts)
    resp_len = max([len(r) for r in responses] + [response_len or 1])
    input_ids = torch.full((n, ctx_len + resp_len), pad_id, dtype=torch.long)  # (N, C+R)
    attention = torch.zeros((n, ctx_len + resp_len), dtype=torch.long)  # (N, C+R)
    for i, (c, r) in enumerate(zip(contexts, responses)):
        input_ids[i, ctx_len - len(c) : ctx_len] = torch.tensor(c, dtype=torch.long)
        input_ids[i, ctx_len : ctx_len + len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, ctx_len - len(c) : ctx_len + len(r)] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (N, C+R): a padded row starts at position 0
    response_ids = input_ids[:, ctx_len:]  # (N, R)
    response_mask = attention[:, ctx_len:].float()  # (N, R)
    return Packed(input_ids, attention, positions, response_ids.clone(), response_mask)


@functools.cache
def cache_kwarg() -> str:
    """The forward keyword of the KV cache: transformers renamed ``past_key_values`` to ``cache`` (5.2x;
    the old name warns, then goes). Scoring and rollout both pass a cache through it."""
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def response_logits(model, packed: Packed, share_prefix: bool = True) -> torch.Tensor:
    """Logits that predict each response token: (N, R, V).

    ``share_prefix``: rows whose contexts are identical (the G rollouts of one prompt; the teacher
    contexts of one group) run their context once; its KV cache is then indexed out to every row and
    only the responses run per row. Gradients flow through the shared cache, so this is the same
    function of the weights as the unshared forward, at a fraction of the cost (a 45-token prompt
    and 8 rollouts of 24 tokens: 8·69 = 552 token-passes become 45 + 8·24 = 237).
    """
    resp_len = packed.response_len
    ctx_len = packed.input_ids.shape[1] - resp_len
    contexts = packed.input_ids[:, :ctx_len]  # (N, C)
    unique, inverse = torch.unique(contexts, dim=0, return_inverse=True)  # (U, C), (N,)
    if not share_prefix or unique.shape[0] == contexts.shape[0] or ctx_len < 1:
        out = model(
            input_ids=packed.input_ids,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
            logits_to_keep=resp_len + 1,
            use_cache=False,
        )
        return out.logits[:, :-1, :]  # position C-1+t predicts response token t
    from transformers import DynamicCache

    first = torch.zeros(unique.shape[0], dtype=torch.long, device=inverse.device)  # a row of each context
    first.scatter_(0, inverse.flip(0), torch.arange(len(inverse) - 1, -1, -1, device=inverse.device))
    cache = DynamicCache(config=getattr(model, "config", None))
    head = model(input_ids=contexts[first], attention_mask=packed.attention_mask[first, :ctx_len],
                 position_ids=packed.position_ids[first, :ctx_len], logits_to_keep=1, use_cache=True,
                 **{cache_kwarg(): cache})
    cache.batch_select_indices(inverse)  # differentiable indexing: (U, ...) -> (N, ...)
    tail = model(input_ids=packed.input_ids[:, ctx_len:], attention_mask=packed.attention_mask,
                 position_ids=packed.position_ids[:, ctx_len:], use_cache=True, **{cache_kwarg(): cache})
    # the context's last position predicts response token 0; response position t predicts t+1
    return torch.cat([head.logits[inverse, -1:, :], tail.logits[:, :-1, :]], dim=1)


def _inner(model):
    """The model under its process wrappers (DDP, accelerate's, torch.compile): where its decoder and head
    live. A peft model stays one (its attributes reach the base model)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def output_head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight (V, H) and bias (V,) or None of the model's ``lm_head`` (``get_output_embeddings``).

    Tied embeddings (SmolLM2) return the embedding matrix itself, so the gradient reaches both uses.
    FSDP2 caveat: the head belongs to the root unit, whose parameters are DTensor shards outside the
    root's forward; there the caller must hold them gathered (``credit.parallel.gathered``) or pass the
    full tensor.
    """
    head = _inner(model).get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(_inner(model)).__name__} has no output embedding (lm_head): log-probs from hidden "
                         "states need one")
    if hasattr(head, "base_layer"):  # a peft adapter on the head: its weight alone is not the head
        raise ValueError("LoRA on the lm_head is not supported (log-probs are computed from the head's weight); "
                         "leave lm_head out of model.lora.target_modules")
    return head.weight, getattr(head, "bias", None)


_HEAD_CHECKED: weakref.WeakSet = weakref.WeakSet()


def _check_head(inner, states: torch.Tensor, logits: torch.Tensor) -> None:
    """Once per model: its logits are its head applied to its decoder's output (no soft-capping, no scale,
    as Gemma 2 and Cohere apply after the head): else log-probs from hidden states would be wrong."""
    weight, bias = output_head(inner)
    with torch.no_grad():
        ours = torch.nn.functional.linear(states.float(), weight.float(), None if bias is None else bias.float())
        # bf16 autocast rounds the model's own logits: a few bf16 ulps of the largest one
        tol = 3e-2 * ours.abs().max().item() + 1e-3
        if (ours - logits.float()).abs().max().item() > tol:
            raise ValueError(f"{type(inner).__name__} transforms its logits after the lm_head (soft-capping or a "
                             "scale): log-probs from hidden states do not support it")
    _HEAD_CHECKED.add(inner)


def _decoder_states(model, **kwargs) -> torch.Tensor:
    """The decoder's output (final norm applied), (N, L, H), from a call of the whole model.

    The whole model runs, not its decoder alone, so that what wraps its forward runs as usual (DDP's
    gradient sync, FSDP2's unshard of the root, accelerate's autocast); ``logits_to_keep=1`` keeps its
    own head to one position (N, 1, V), and a forward hook on the decoder takes the hidden states.
    """
    inner = _inner(model)
    seen = []
    hook = inner.get_decoder().register_forward_hook(
        lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out.last_hidden_state))
    try:
        out = model(**kwargs, logits_to_keep=1)
    finally:
        hook.remove()
    states = seen[-1]
    if inner not in _HEAD_CHECKED:
        _check_head(inner, states[:, -1], out.logits[:, -1])
    return states


def response_hidden(model, packed: Packed, share_prefix: bool = True) -> Hidden:
    """Hidden states that predict each response token, (N, R, H), with the model's head: ``Hidden``.

    ``head_logprobs(response_hidden(model, packed), ...)`` is ``log_softmax(response_logits(...))`` at
    given ids without the (N, R, V) logits. Prefix sharing as in ``response_logits`` (the same function
    of the weights, gradients through the shared KV cache).
    """
    resp_len = packed.response_len
    ctx_len = packed.input_ids.shape[1] - resp_len
    contexts = packed.input_ids[:, :ctx_len]  # (N, C)
    unique, inverse = torch.unique(contexts, dim=0, return_inverse=True)  # (U, C), (N,)
    if not share_prefix or unique.shape[0] == contexts.shape[0] or ctx_len < 1:
        states = _decoder_states(model, input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                                 position_ids=packed.position_ids, use_cache=False)  # (N, C+R, H)
        states = states[:, ctx_len - 1: ctx_len - 1 + resp_len]  # position C-1+t predicts response token t
    else:
        from transformers import DynamicCache

        first = torch.zeros(unique.shape[0], dtype=torch.long, device=inverse.device)  # a row of each context
        first.scatter_(0, inverse.flip(0), torch.arange(len(inverse) - 1, -1, -1, device=inverse.device))
        cache = DynamicCache(config=getattr(_inner(model), "config", None))
        head = _decoder_states(model, input_ids=contexts[first], attention_mask=packed.attention_mask[first, :ctx_len],
                               position_ids=packed.position_ids[first, :ctx_len], use_cache=True,
                               **{cache_kwarg(): cache})  # (U, C, H)
        cache.batch_select_indices(inverse)  # differentiable indexing: (U, ...) -> (N, ...)
        tail = _decoder_states(model, input_ids=packed.input_ids[:, ctx_len:], attention_mask=packed.attention_mask,
                               position_ids=packed.position_ids[:, ctx_len:], use_cache=True,
                               **{cache_kwarg(): cache})  # (N, R, H)
        # the context's last position predicts response token 0; response position t predicts t+1
        states = torch.cat([head[inverse, -1:], tail[:, :-1]], dim=1)  # (N, R, H)
    weight, bias = output_head(model)
    return Hidden(states, weight, bias)


def response_logprobs(
    model,
    packed: Packed,
    temperature: float = 1.0,
    micro_batch: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Log-probs of the response tokens at ``temperature``: (N, R), 0 at padding; fp32 (fp64 for a fp64
    model), from hidden states chunk by chunk. Carries grad when enabled."""
    step = micro_batch or packed.input_ids.shape[0]
    parts = []
    for s in range(0, packed.input_ids.shape[0], step):
        rows = packed.rows(slice(s, s + step))
        hidden = response_hidden(model, rows, share_prefix)
        parts.append(head_token_logprobs(hidden, rows.response_ids, temperature, chunk_bytes))
    return torch.cat(parts) * packed.response_mask.to(parts[0].device)
