"""The identities of docs/method.md §1.1 and the signal helpers, pinned with tensors and a tiny transformer."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from credit import signal
from credit.scoring import pack, response_logprobs


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def sequence_loglik(model, context: list[int], response: list[int]) -> float:
    """log π(y | context) from one full forward pass with HF's own loss (independent of our code)."""
    ids = torch.tensor([context + response])
    labels = ids.clone()
    labels[0, : len(context)] = -100
    with torch.no_grad():
        mean_nll = model(input_ids=ids, labels=labels).loss.item()
    return -mean_nll * len(response)


def test_telescoping_sum_of_delta_v_is_the_log_likelihood_ratio(tiny_lm):
    # Live teacher (θ_T = θ): Σ_t ΔV_t = log π(y|c) − log π(y|x), each side from its own forward pass.
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (5, 9, 3)]
    feedback = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (7, 2, 11)]
    responses = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (6, 10, 4)]
    contexts = [p + f for p, f in zip(prompts, feedback)]

    with torch.no_grad():
        student = pack(prompts, responses, pad_id=0)
        teacher = pack(contexts, responses, pad_id=0)
        dv = signal.delta_v(response_logprobs(tiny_lm, teacher), response_logprobs(tiny_lm, student))
        pmi = signal.sequence_sum(dv, student.response_mask)

    for i in range(3):
        expected = sequence_loglik(tiny_lm, contexts[i], responses[i]) - sequence_loglik(tiny_lm, prompts[i], responses[i])
        assert pmi[i].item() == pytest.approx(expected, abs=2e-4)
    assert pmi.abs().max() > 1e-2  # the contexts differ, so the identity is not 0 = 0


def test_identical_contexts_give_zero_delta_v(tiny_lm):
    prompts = [[3, 4, 5], [7, 8]]
    responses = [[9, 10, 11, 12], [13]]
    with torch.no_grad():
        a = response_logprobs(tiny_lm, pack(prompts, responses, pad_id=0))
        b = response_logprobs(tiny_lm, pack(prompts, responses, pad_id=0))
    assert torch.equal(signal.delta_v(a, b), torch.zeros_like(a))


def test_left_padding_does_not_change_log_probs(tiny_lm):
    # The same pair scored alone and beside a much longer context must agree.
    with torch.no_grad():
        alone = response_logprobs(tiny_lm, pack([[3, 4, 5]], [[9, 10]], pad_id=0))
        padded = response_logprobs(tiny_lm, pack([[3, 4, 5], list(range(1, 40))], [[9, 10], [1, 2, 3, 4]], pad_id=0))
    torch.testing.assert_close(alone[0], padded[0, :2], atol=1e-5, rtol=0)


def test_sequence_contrastive_score():
    # Σ_t S_t = log π_T(y|c) − mean_k log π_T(y|c^(k))
    g = torch.Generator().manual_seed(0)
    teacher = -torch.rand(4, 6, generator=g) * 3
    negatives = -torch.rand(4, 3, 6, generator=g) * 3
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    s = signal.specific_part(teacher, signal.generic_part(negatives, "mean"))
    score = signal.sequence_sum(s, mask)
    expected = (teacher * mask).sum(-1) - (negatives * mask[:, None]).sum(-1).mean(-1)
    torch.testing.assert_close(score, expected)


def test_credit_reward_end_points_are_exact():
    g = torch.Generator().manual_seed(0)
    t, s, n = (-torch.rand(3, 5, generator=g) for _ in range(3))
    dv = signal.delta_v(t, s)
    spec = signal.specific_part(t, n)
    assert torch.equal(signal.credit_reward(dv, spec, 0.0), dv)  # λ=0 is SDPO bit for bit
    assert torch.equal(signal.credit_reward(dv, spec, 1.0), spec)  # λ=1 is S
    # the two written forms of r^λ agree: ℓT − λG − (1−λ)ℓS
    torch.testing.assert_close(signal.credit_reward(dv, spec, 0.3), t - 0.3 * n - 0.7 * s)


def test_generic_part_aggregators_hand_computed():
    neg = torch.log(torch.tensor([[[0.2], [0.6]]]))  # (N=1, K=2, T=1)
    # mean of logs: (log .2 + log .6)/2 = log sqrt(.12) = -1.0601...
    assert signal.generic_part(neg, "mean").item() == pytest.approx(0.5 * math.log(0.12), abs=1e-6)
    # logmeanexp: log((.2 + .6)/2) = log .4
    assert signal.generic_part(neg, "logmeanexp").item() == pytest.approx(math.log(0.4), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_equal_naive(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 1000, generator=g) * 4).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 1000, (3, 7), generator=g)
    # a chunk of ~3 rows forces many chunks
    chunked = signal.token_logprobs(logits, tokens, temperature=0.7, chunk_bytes=3 * 4 * 1000)
    naive = signal.naive_token_logprobs(logits, tokens, temperature=0.7)
    torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=1e-5)
    (g1,) = torch.autograd.grad(chunked.square().sum(), logits)
    (g2,) = torch.autograd.grad(naive.square().sum(), logits)
    torch.testing.assert_close(g1.float(), g2.float(), atol=1e-5 if dtype == torch.float32 else 1e-2, rtol=1e-3)


def test_picked_logprobs_value_and_gradient_in_float64():
    # K ids per row (repeats included), many chunks: value and gradient of a weighted sum against the
    # full log-softmax, in float64 so the comparison is exact to rounding on any CPU
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 300, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    index = torch.randint(0, 300, (2, 5, 4), generator=g)
    index[0, 0, 1] = index[0, 0, 0]  # a repeated id gets both gradients
    weights = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    picked = signal.picked_logprobs(logits, index, temperature=0.7, chunk_bytes=2 * 4 * 300)
    naive = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, index)
    assert picked.dtype == torch.float64
    torch.testing.assert_close(picked, naive, atol=1e-12, rtol=0)
    (g1,) = torch.autograd.grad((picked * weights).sum(), logits)
    (g2,) = torch.autograd.grad((naive * weights).sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-12, rtol=0)


def test_masked_values_never_leak():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert signal.masked_sum(x, mask).item() == 13.0
    assert signal.masked_mean(x, mask).item() == 13.0 / 4
    torch.testing.assert_close(signal.sequence_sum(x, mask), torch.tensor([3.0, 10.0]))
    rtg = signal.reward_to_go(x, mask, gamma=1.0)
    torch.testing.assert_close(rtg, torch.tensor([[3.0, 2.0, 0.0], [10.0, 0.0, 6.0]]))


def test_reward_to_go_hand_computed():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    # γ=0.5: t2 = 3, t1 = 2 + .5·3 = 3.5, t0 = 1 + .5·3.5 = 2.75
    torch.testing.assert_close(signal.reward_to_go(r, torch.ones(1, 3), 0.5), torch.tensor([[2.75, 3.5, 3.0]]))


def test_group_advantages():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # B=2, G=3
    dr = signal.group_advantages(scores, 3, scale_by_std=False)
    torch.testing.assert_close(dr, torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]))
    std = signal.group_advantages(scores, 3)
    # unbiased std of (1,0,0) is sqrt(1/3); 2/3 / 0.57735 = 1.1547
    assert std[0].item() == pytest.approx(2 / 3 / math.sqrt(1 / 3), abs=1e-5)
    assert torch.equal(signal.group_advantages(torch.ones(4), 2), torch.zeros(4))  # no spread, no signal


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: signal.credit_reward(torch.zeros(2), torch.zeros(2), 1.5), "lam=1.5"),
        (lambda: signal.credit_reward(torch.zeros(2), torch.zeros(2), -0.1), "lam"),
        (lambda: signal.delta_v(torch.zeros(2, 3), torch.zeros(2, 4)), "student_logp has shape"),
        (lambda: signal.generic_part(torch.zeros(2, 3)), "negative_logp"),
        (lambda: signal.generic_part(torch.zeros(2, 1, 3), "max"), "aggregator"),
        (lambda: signal.token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)), "tokens"),
        (lambda: signal.group_advantages(torch.zeros(5), 2), "group_size"),
        (lambda: signal.reward_to_go(torch.zeros(1, 2), torch.ones(1, 2), 2.0), "gamma"),
        (lambda: signal.check_mask(torch.zeros(2, 3)), "mask is empty"),
    ],
)
def test_bad_arguments_name_themselves(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sampled_kl_by_hand_and_unbiased():
    # π(y) = 0.5, π_ref(y) = 0.25: r = 0.5, k3 = 0.5 − 1 − log 0.5 = log 2 − 0.5
    est = signal.sampled_kl(torch.tensor([[math.log(0.5), math.log(0.2)]], dtype=torch.float64),
                            torch.tensor([[math.log(0.25), math.log(0.2)]], dtype=torch.float64))
    assert est[0, 0].item() == pytest.approx(math.log(2) - 0.5, rel=1e-15) and est[0, 1].item() == 0.0
    # over every token of π, weighted by π, the estimate is KL(π ‖ π_ref) exactly
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    expected = (p * (p.log() - q.log())).sum()
    assert (p * signal.sampled_kl(p.log(), q.log())).sum().item() == pytest.approx(expected.item(), rel=1e-12)
    assert (signal.sampled_kl(p.log(), q.log()) >= 0).all()
