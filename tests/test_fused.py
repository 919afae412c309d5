"""Log-probs from hidden states, chunk by chunk (signal.head_logprobs, scoring.response_hidden): the same
function as log_softmax of the model's logits, in value and gradient, without (N, R, V) logits."""

import pytest
import torch

from credit import signal
from credit.scoring import pack, response_hidden, response_logits, response_logprobs


def naive(states, weight, bias, index, temperature):
    z = torch.nn.functional.linear(states, weight, bias)
    return torch.log_softmax(z / temperature, dim=-1).gather(-1, index)


def test_head_logprobs_equal_the_full_log_softmax_in_value_and_gradient_float64():
    # many chunks (3 rows each), T = 0.7, K = 4 ids with a repeat: exact to float64 rounding on any CPU
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2, 7, 16, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(300, 16, generator=g, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(300, generator=g, dtype=torch.float64).requires_grad_(True)
    index = torch.randint(0, 300, (2, 7, 4), generator=g)
    index[0, 0, 1] = index[0, 0, 0]
    coef = torch.randn(2, 7, 4, generator=g, dtype=torch.float64)
    ours = signal.head_logprobs(signal.Hidden(states, weight, bias), index, 0.7, chunk_bytes=3 * 300 * 4)
    ref = naive(states, weight, bias, index, 0.7)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    for a, b in zip(torch.autograd.grad((ours * coef).sum(), (states, weight, bias)),
                    torch.autograd.grad((ref * coef).sum(), (states, weight, bias))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_a_mixture_of_heads_is_the_log_softmax_of_the_mixed_logits():
    # the trust-region teacher: (1 − r)·z_ref + r·z_θ, mixed per chunk
    g = torch.Generator().manual_seed(1)
    h1, h2 = (torch.randn(5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    w1, w2 = (torch.randn(50, 8, generator=g, dtype=torch.float64) for _ in range(2))
    h1.requires_grad_(True)
    index = torch.randint(0, 50, (5, 3), generator=g)
    ours = signal.head_logprobs([(signal.Hidden(h1, w1), 0.95), (signal.Hidden(h2, w2), 0.05)], index,
                                chunk_bytes=2 * 50 * 4)
    ref = torch.log_softmax(0.95 * h1 @ w1.T + 0.05 * h2 @ w2.T, -1).gather(-1, index)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), h1)[0], torch.autograd.grad(ref.sum(), h1)[0],
                               atol=1e-12, rtol=0)
    full = signal.head_full_logprobs([(signal.Hidden(h1, w1), 0.95), (signal.Hidden(h2, w2), 0.05)])
    torch.testing.assert_close(full.gather(-1, index), ref, atol=1e-12, rtol=0)


def test_head_topk_is_the_top_k_of_the_logits():
    g = torch.Generator().manual_seed(2)
    states, weight = torch.randn(3, 4, 8, generator=g), torch.randn(40, 8, generator=g)
    expected = (states @ weight.T).topk(5, dim=-1).indices
    assert torch.equal(signal.head_topk(signal.Hidden(states, weight), 5, chunk_bytes=3 * 40 * 4), expected)
    with pytest.raises(ValueError, match="top_k=41"):
        signal.head_topk(signal.Hidden(states, weight), 41)


def test_a_bf16_head_is_applied_in_fp32_block_by_block():
    # a bf16 weight (a frozen bf16 base) is cast to fp32 a block of rows at a time: no fp32 copy of it
    g = torch.Generator().manual_seed(3)
    states = torch.randn(6, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(50, 8, generator=g).to(torch.bfloat16).requires_grad_(True)
    tokens = torch.randint(0, 50, (6,), generator=g)
    ours = signal.head_token_logprobs(signal.Hidden(states.float(), weight), tokens, chunk_bytes=7 * 8 * 4)
    assert ours.dtype == torch.float32
    ref = naive(states, weight.double(), None, tokens[:, None], 1.0)[:, 0]
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
    ours.sum().backward()
    assert weight.grad.dtype == torch.bfloat16 and torch.isfinite(weight.grad.float()).all()


def test_the_head_runs_in_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(4)
    states, weight = torch.randn(4, 8, generator=g), torch.randn(30, 8, generator=g)
    tokens = torch.randint(0, 30, (4,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = signal.head_token_logprobs(signal.Hidden(states, weight), tokens)
    ref = naive(states.double(), weight.double(), None, tokens[:, None], 1.0)[:, 0]
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)  # a bf16 head would be off by ~1e-2


@pytest.mark.parametrize("share", [False, True])
def test_response_hidden_gives_the_model_logits_log_probs_and_gradient(fresh_tiny_model, share):
    # float64, tied embeddings: the head's weight is the embedding matrix, so its gradient sums both uses
    model = fresh_tiny_model.double().train()
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(1, 500, (6,), generator=g).tolist()
    contexts = [prompt, prompt, [3, 4], prompt]
    responses = [torch.randint(1, 500, (n,), generator=g).tolist() for n in (4, 2, 5, 3)]
    packed = pack(contexts, responses, pad_id=0)
    params = list(model.parameters())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    hidden = response_hidden(model, packed, share_prefix=share)
    assert hidden.states.shape == (4, packed.response_len, model.config.hidden_size)
    ours = signal.head_token_logprobs(hidden, packed.response_ids, 0.8) * packed.response_mask
    logits = response_logits(model, packed, share_prefix=share)  # the model's own logits, (N, R, V)
    ref = torch.log_softmax(logits / 0.8, -1).gather(-1, packed.response_ids[..., None])[..., 0] * packed.response_mask
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    for a, b in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(response_logprobs(model, packed, 0.8, micro_batch=3), ours.detach(), atol=1e-10, rtol=0)


def test_a_model_that_transforms_its_logits_after_the_head_is_refused(fresh_tiny_model):
    # soft-capping (Gemma 2) or a logit scale (Cohere) after lm_head: the hidden-state path would be wrong
    model = fresh_tiny_model
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50.0)  # logits large enough that a scale shows
    model.lm_head.register_forward_hook(lambda module, args, out: out * 0.5)
    with pytest.raises(ValueError, match="transforms its logits after the lm_head"):
        response_logprobs(model, pack([[1, 2, 3]], [[4, 5]], pad_id=0))


def test_lora_on_the_head_is_refused(fresh_tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(fresh_tiny_model, LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    with pytest.raises(ValueError, match="leave lm_head out of model.lora.target_modules"):
        response_logprobs(model, pack([[1, 2, 3]], [[4, 5]], pad_id=0))


def test_the_memory_benchmark_loss_path_has_the_naive_gradient_float64():
    # benchmarks/memory.py measures hidden-fused / hidden-topk against hidden-naive: the same loss and gradient
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("credit_bench_memory", Path(__file__).parents[1] / "benchmarks" / "memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    g = torch.Generator().manual_seed(6)
    states = torch.randn(37, 16, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(400, 16, generator=g, dtype=torch.float64).requires_grad_(True)
    tokens, advantage = torch.randint(0, 400, (37,), generator=g), torch.randn(37, generator=g, dtype=torch.float64)
    grads = {}
    for variant in ("hidden-naive", "hidden-fused"):
        loss = memory.loss_path(variant, states, weight, tokens, advantage)
        grads[variant] = (loss.detach(), *torch.autograd.grad(loss, (states, weight)))
    for a, b in zip(grads["hidden-naive"], grads["hidden-fused"]):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    # the top-K variant: the support from hidden states equals the one from the full log-softmax
    loss = memory.loss_path("hidden-topk", states, weight, tokens, advantage, k=7)
    full = torch.log_softmax(states @ weight.T, -1)
    index = full.topk(7, -1).indices
    from credit import objectives as obj

    support = obj.support_from_topk(full.gather(-1, index), tail=True)
    ref = -(advantage[:, None] * support).sum() - (advantage * full.gather(-1, tokens[:, None])[:, 0]).sum()
    torch.testing.assert_close(loss, ref, atol=1e-11, rtol=0)
    for a, b in zip(torch.autograd.grad(loss, (states, weight)), torch.autograd.grad(ref, (states, weight))):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
