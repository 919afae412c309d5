"""Scoring responses under many contexts: prefix sharing is the same function of the weights."""

import sys
from pathlib import Path

import pytest
import torch

from credit.scoring import pack, response_logits, response_logprobs
from credit.signal import token_logprobs

sys.path.insert(0, str(Path(__file__).parent))


def test_shared_prefix_equals_separate_forwards_in_value_and_gradient(fresh_tiny_model):
    # Two computations of one function (a KV cache indexed out vs. full rows: other matmul shapes),
    # so not bit-equal. The model runs in float64, where its two paths agree to ~1e-15; but
    # token_logprobs computes its softmax in float32 whatever the model's dtype, and so does
    # transformers' RMSNorm (the next test), so the bound is a few float32 ulps of each tensor's
    # magnitude (measured: gradients differ by 0.9 ulp of the largest entry). A wrong position, mask or
    # cache row moves log-probs by ~1e-2.
    model = fresh_tiny_model.double().train()

    def tol(t: torch.Tensor) -> float:
        return 8 * torch.finfo(torch.float32).eps * t.abs().max().item()
    g = torch.Generator().manual_seed(0)
    prompt_a, prompt_b = torch.randint(1, 500, (9,), generator=g).tolist(), torch.randint(1, 500, (4,), generator=g).tolist()
    contexts = [prompt_a, prompt_a, prompt_b, prompt_a, prompt_b, [7]]  # groups interleaved, one unique
    responses = [torch.randint(1, 500, (n,), generator=g).tolist() for n in (4, 6, 2, 5, 3, 1)]
    packed = pack(contexts, responses, pad_id=0)
    params = [p for p in model.parameters()]

    results = []
    for share in (False, True):
        logp = token_logprobs(response_logits(model, packed, share_prefix=share), packed.response_ids)
        logp = logp * packed.response_mask
        results.append((logp.detach(), torch.autograd.grad(logp.sum(), params)))
    (lp1, g1), (lp2, g2) = results
    torch.testing.assert_close(lp1, lp2, atol=tol(lp1), rtol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=tol(a), rtol=0)


def test_shared_prefix_gradients_are_exact_once_the_norm_keeps_float64(fresh_tiny_model, monkeypatch):
    """Prefix sharing is the same function of the weights to float64 rounding, in value and gradient. The
    ~5e-8 relative gap a float64 model shows without the patch is transformers' RMSNorm, which computes in
    float32 whatever the model's dtype: the same forward, but the prefix's gradient crosses that float32
    norm once summed over its G rows (shared) or once per row (unshared), rounded differently."""
    from transformers.models.llama import modeling_llama

    from _dist_worker import norm_in_its_dtype
    from credit.scoring import response_hidden
    from credit.signal import head_token_logprobs

    model = fresh_tiny_model.double().train()
    g = torch.Generator().manual_seed(0)
    prompt_a, prompt_b = torch.randint(1, 500, (9,), generator=g).tolist(), torch.randint(1, 500, (4,), generator=g).tolist()
    contexts = [prompt_a, prompt_a, prompt_b, prompt_a, prompt_b, prompt_b]  # left padding, groups interleaved
    responses = [torch.randint(1, 500, (n,), generator=g).tolist() for n in (4, 6, 2, 5, 3, 1)]
    packed = pack(contexts, responses, pad_id=0)
    params = list(model.parameters())

    def gaps() -> tuple[float, float]:
        out = []
        for share in (False, True):
            logp = head_token_logprobs(response_hidden(model, packed, share), packed.response_ids, 1.0)
            logp = logp * packed.response_mask
            assert logp.dtype == torch.float64
            out.append((logp.detach(), torch.cat([t.flatten() for t in torch.autograd.grad(logp.sum(), params)])))
        (lp1, g1), (lp2, g2) = out
        return (lp1 - lp2).abs().max().item(), ((g1 - g2).abs().max() / g1.abs().max()).item()

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", norm_in_its_dtype)
    value, gradient = gaps()  # measured: 0 and ~3e-16 (without the patch: 0 and ~5e-8)
    assert value < 1e-12 and gradient < 1e-12, (value, gradient)


def test_shared_prefix_runs_each_distinct_context_once(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    seen = []
    hook = model.model.register_forward_hook(lambda mod, args, kwargs_out: seen.append(1))
    try:
        with torch.no_grad():
            response_logprobs(model, pack([[5, 6, 7]] * 4, [[1, 2], [3], [4, 5, 6], [7]], pad_id=0))
    finally:
        hook.remove()
    assert len(seen) == 2  # one pass over the one distinct context, one over the four responses


def test_pack_rejects_bad_pairs():
    with pytest.raises(ValueError, match="2 contexts but 1 responses"):
        pack([[1], [2]], [[3]], pad_id=0)
    with pytest.raises(ValueError, match="empty context"):
        pack([[]], [[3]], pad_id=0)
