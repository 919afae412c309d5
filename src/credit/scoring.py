"""Score a fixed response under many contexts: the student under x, the teacher under c, the
negatives under c^(k). One packing, one forward, one slice: every caller gets (N, R) tensors whose
column t is response token t, whatever the context lengths.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from credit.signal import DEFAULT_CHUNK_BYTES, token_logprobs


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


def response_logprobs(
    model,
    packed: Packed,
    temperature: float = 1.0,
    micro_batch: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    share_prefix: bool = True,
) -> torch.Tensor:
    """fp32 log-probs of the response tokens at ``temperature``: (N, R), 0 at padding. Carries grad
    when enabled."""
    step = micro_batch or packed.input_ids.shape[0]
    parts = []
    for s in range(0, packed.input_ids.shape[0], step):
        rows = packed.rows(slice(s, s + step))
        logits = response_logits(model, rows, share_prefix)
        parts.append(token_logprobs(logits, rows.response_ids, temperature, chunk_bytes))
    return torch.cat(parts) * packed.response_mask.to(parts[0].device)
