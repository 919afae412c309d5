"""Rollout sampling on the tiny random Llama: grouping, packing, eos, stop strings, truncation,
determinism (seed, generator, temperature 0), train/eval mode handling; every engine samples what
``generate`` samples (the same tokens while no row ends early, the same distribution after); the
engine registry is the one list of backends, and the loop calls an engine's ``load_weights``."""

from __future__ import annotations

import pytest
import torch

from credit.rollout import ENGINES, ContinuousEngine, LoopEngine, Rollouts, SamplingConfig, _find_stop, encode_prompts, sample

CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color of the sky at noon."}],
]


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return encode_prompts(tiny_tokenizer, CHATS)


def test_encode_prompts_applies_template_once(tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    text = tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert tok.decode(prompts[0]) == text
    assert text.endswith("<|im_start|>assistant\n")
    assert prompts[0].count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant
    assert len(prompts[0]) != len(prompts[1])  # the tests below need ragged prompts


def test_groups_are_contiguous_and_shapes(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    out = sample(model, tok, prompts, num_samples=3, max_new_tokens=5, temperature=1.0, seed=0,
                 micro_batch_size=4)
    assert isinstance(out, Rollouts) and len(out) == 6 and out.num_prompts == 2
    assert out.group == [0, 0, 0, 1, 1, 1]
    assert out.prompt_ids == [prompts[0]] * 3 + [prompts[1]] * 3
    assert all(1 <= len(y) <= 5 for y in out.response_ids)
    assert out.tokens == sum(len(y) for y in out.response_ids) and out.seconds > 0
    assert out.texts == tok.batch_decode(out.response_ids, skip_special_tokens=True)
    m = out.metrics()
    assert m["rollout/samples"] == 6 and m["perf/rollout_tokens_per_s"] > 0


def test_pack_aligns_responses_and_matches_greedy_logits(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    out = sample(model, tok, prompts, num_samples=2, max_new_tokens=6, temperature=0)
    # make the responses ragged so the right padding is exercised too
    out.response_ids[1] = out.response_ids[1][:3]
    b = out.pack(tok.pad_token_id)
    r = b.response_mask.shape[1]
    p = b.input_ids.shape[1] - r  # prompt width: every response starts at column p
    assert p == max(len(x) for x in prompts) and r == 6
    assert b.input_ids.shape == b.attention_mask.shape == b.position_ids.shape == (4, p + r)
    for k, (x, y) in enumerate(zip(out.prompt_ids, out.response_ids)):
        assert b.input_ids[k, p - len(x):p].tolist() == x
        assert b.response_ids[k, :len(y)].tolist() == y
        assert b.attention_mask[k].sum() == len(x) + len(y)
        assert b.response_mask[k].sum() == len(y)
        assert b.position_ids[k, p - len(x)] == 0 and b.position_ids[k, p + len(y) - 1] == len(x) + len(y) - 1
    # the packed layout scores what generate sampled: greedy tokens are the argmax at the same place
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       position_ids=b.position_ids).logits  # (N, P+R, V)
    scores = logits[:, p - 1:p + r - 1]  # (N, R, V)
    mask = b.response_mask.bool()
    # generate ran with a KV cache, this is one full forward: other matmul shapes, so logits agree to
    # rounding, not bit for bit, and a near-tie may flip an argmax. The greedy token must be a
    # maximum up to float32 rounding over the model's reductions (hidden size × layers).
    chosen = scores.gather(-1, b.response_ids.unsqueeze(-1)).squeeze(-1)  # (N, R)
    best = scores.max(-1).values  # (N, R)
    cfg = model.config
    tol = torch.finfo(scores.dtype).eps * cfg.hidden_size * cfg.num_hidden_layers * scores.abs().amax(-1)
    assert bool((chosen[mask] >= best[mask] - tol[mask]).all()), (best - chosen)[mask].max()


def test_eos_ends_response_and_is_kept(fresh_tiny_model, tiny_tokenizer, prompts):
    model, tok = fresh_tiny_model, tiny_tokenizer
    # same seed => same draws, so the rerun follows the first run until the token we make eos
    ids = sample(model, tok, prompts[:1], seed=3, max_new_tokens=6).response_ids[0]
    k = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])  # first new token after the 1st
    model.generation_config.eos_token_id = ids[k]  # pretend that token is the model's eos
    out = sample(model, tok, prompts[:1], seed=3, max_new_tokens=6)
    assert out.response_ids[0] == ids[:k + 1]
    assert out.truncated == [False]
    forced = sample(model, tok, prompts[:1], seed=3, max_new_tokens=6, min_new_tokens=6)
    assert len(forced.response_ids[0]) == 6 and ids[k] not in forced.response_ids[0][:5]


def test_truncated_flag(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    out = sample(model, tok, prompts, num_samples=4, max_new_tokens=3, seed=1)
    for y, t in zip(out.response_ids, out.truncated):
        assert t == (len(y) == 3 and tok.eos_token_id not in y)
    assert any(out.truncated)  # a random model over 49k tokens almost never says eos in 3 tokens


def test_stop_string_cuts_at_completing_token(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    ids = sample(model, tok, prompts[:1], seed=5, max_new_tokens=8).response_ids[0]
    # a stop string completed by token k: the last 2 characters of the first k tokens' text
    k = next(k for k in range(2, 8)
             if len(tok.decode(ids[:k])) >= 2 and tok.decode(ids[:k])[-2:] not in tok.decode(ids[:k - 1]))
    stop = tok.decode(ids[:k])[-2:]
    out = sample(model, tok, prompts[:1], seed=5, max_new_tokens=8, stop=(stop, "never-seen-xyz"))
    assert out.response_ids[0] == ids[:k]
    assert out.truncated == [False]
    assert stop in out.texts[0]


def test_find_stop_is_token_accurate(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok("The answer is 42.\nDone here", add_special_tokens=False)["input_ids"]
    n = _find_stop(tok, ids, ("\n",))
    assert "\n" in tok.decode(ids[:n]) and "\n" not in tok.decode(ids[:n - 1])
    assert _find_stop(tok, ids, ("zzz",)) is None
    assert _find_stop(tok, ids, ("Done", "42")) == _find_stop(tok, ids, ("42",))  # the earliest wins


def test_same_seed_same_samples(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    cfg = SamplingConfig(num_samples=3, max_new_tokens=6, temperature=1.0, seed=7, micro_batch_size=4)
    state = torch.get_rng_state()
    a, b = sample(model, tok, prompts, cfg), sample(model, tok, prompts, cfg)
    c = sample(model, tok, prompts, cfg, seed=8)
    g = sample(model, tok, prompts, cfg, seed=None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    assert a.response_ids == b.response_ids == g.response_ids
    assert a.response_ids != c.response_ids
    assert len({tuple(y) for y in a.response_ids}) > 1  # samples of one prompt differ from each other


def test_temperature_zero_is_deterministic_and_batch_independent(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    a = sample(model, tok, prompts, num_samples=2, max_new_tokens=6, temperature=0)
    b = sample(model, tok, prompts, num_samples=2, max_new_tokens=6, temperature=0, micro_batch_size=1)
    assert a.response_ids == b.response_ids  # left padding changes nothing
    assert a.response_ids[0] == a.response_ids[1] and a.response_ids[2] == a.response_ids[3]


def test_restores_train_mode(fresh_tiny_model, tiny_tokenizer, prompts):
    fresh_tiny_model.train()
    sample(fresh_tiny_model, tiny_tokenizer, prompts[:1], max_new_tokens=2, seed=0)
    assert fresh_tiny_model.training
    fresh_tiny_model.eval()
    sample(fresh_tiny_model, tiny_tokenizer, prompts[:1], max_new_tokens=2, seed=0)
    assert not fresh_tiny_model.training


@pytest.mark.parametrize("bad, match", [
    (dict(num_samples=0), "num_samples"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(micro_batch_size=0), "micro_batch_size"), (dict(stop=("",)), "stop"),
    (dict(min_new_tokens=5, max_new_tokens=4), "min_new_tokens"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**bad)


def test_config_single_stop_string_and_empty_prompt(tiny_model_and_tokenizer):
    assert SamplingConfig(stop="\n").stop == ("\n",)
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="prompt"):
        sample(model, tok, [[]])


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(seed=3), dict(seed=4, top_p=0.9, micro_batch_size=4)])
def test_shared_prefill_gives_the_same_samples(tiny_model_and_tokenizer, prompts, kw):
    # the prompt forward once per prompt, its KV cache copied to the G samples: an optimization only
    model, tok = tiny_model_and_tokenizer
    a = sample(model, tok, prompts, num_samples=3, max_new_tokens=6, share_prefill=True, **kw)
    b = sample(model, tok, prompts, num_samples=3, max_new_tokens=6, share_prefill=False, **kw)
    assert a.response_ids == b.response_ids


# ----------------------------------------------------------------------------- backends


def _early_ending(model):
    """Half the vocabulary ends a response: lengths vary from 1 to max_new_tokens."""
    model.generation_config.eos_token_id = list(range(0, model.config.vocab_size, 2))
    return model


@pytest.mark.parametrize("backend", ["loop", "static", "continuous"])
@pytest.mark.parametrize("share_prefill", [True, False])
def test_backends_decode_greedily_like_generate(fresh_tiny_model, tiny_tokenizer, prompts, backend, share_prefill):
    model, tok = fresh_tiny_model, tiny_tokenizer
    with torch.no_grad():  # sharper weights: the random model's greedy path no longer repeats one token
        for param in model.parameters():
            param.mul_(4)
    kw = dict(num_samples=2, max_new_tokens=6, temperature=0, share_prefill=share_prefill)
    ref = sample(model, tok, prompts, **kw)
    assert sample(model, tok, prompts, backend=backend, **kw).response_ids == ref.response_ids
    # prompt 0's rows end early, prompt 1's run on: the loop drops rows from its batch and cache
    first, other = ref.response_ids[0], ref.response_ids[2]
    k = next(k for k in range(1, 5) if first[k] not in first[:k] and first[k] not in other)
    model.generation_config.eos_token_id = first[k]
    ref = sample(model, tok, prompts, **kw)
    assert [len(y) for y in ref.response_ids] == [k + 1, k + 1, 6, 6]
    out = sample(model, tok, prompts, backend=backend, **kw)
    assert out.response_ids == ref.response_ids and out.truncated == ref.truncated


@pytest.mark.parametrize("slots", [1, 3])
def test_continuous_refills_ended_slots_greedily_like_generate(fresh_tiny_model, tiny_tokenizer, prompts, slots):
    # 3 samples of each prompt through 1 or 3 slots: prompt 0's samples end early and hand their slots to
    # queued samples (prompt 1's, whose prefill is copied in); greedy, so every sample is generate's
    model, tok = fresh_tiny_model, tiny_tokenizer
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4)
    kw = dict(num_samples=3, max_new_tokens=6, temperature=0)
    first, other = (sample(model, tok, [p], **kw).response_ids[0] for p in prompts)
    k = next(k for k in range(1, 5) if first[k] not in first[:k] and first[k] not in other)
    model.generation_config.eos_token_id = first[k]
    ref = sample(model, tok, prompts, **kw)
    assert [len(y) for y in ref.response_ids] == [k + 1] * 3 + [6] * 3
    for share_prefill in (True, False):
        out = sample(model, tok, prompts, backend="continuous", micro_batch_size=slots, share_prefill=share_prefill, **kw)
        assert out.response_ids == ref.response_ids and out.truncated == ref.truncated


@pytest.mark.parametrize("backend", ["loop", "continuous"])
@pytest.mark.parametrize("kw", [dict(), dict(top_p=0.9), dict(top_k=5, temperature=0.7), dict(micro_batch_size=4)])
def test_engines_draw_the_tokens_generate_draws_while_no_row_ended(tiny_model_and_tokenizer, prompts, backend, kw):
    # min_new_tokens = max_new_tokens: no row ends early, so the batch never shrinks and its one
    # multinomial draw per step must be generate's draw: the same processors, in the same order; with
    # micro-batches of 4 (6 sequences), continuous's two waves take generate's two micro-batch seeds
    model, tok = tiny_model_and_tokenizer
    cfg = SamplingConfig(num_samples=3, max_new_tokens=6, min_new_tokens=6, seed=11, **kw)
    ref = sample(model, tok, prompts, cfg)
    out = sample(model, tok, prompts, cfg, backend=backend)
    assert out.response_ids == ref.response_ids
    assert len({tuple(y) for y in ref.response_ids}) > 1


@pytest.mark.parametrize("backend, slots", [("loop", 128), ("continuous", 128), ("continuous", 48)])
def test_engines_sample_the_distribution_generate_samples(fresh_tiny_model, tiny_tokenizer, prompts, backend, slots):
    # once rows end, the draws are other draws from the same distribution: compare the length
    # distribution and the model's log-prob of the sampled tokens over 512 samples per backend;
    # continuous with 128 or 48 slots for 512 sequences refills ended slots from its queue
    from credit.scoring import response_logprobs

    model, tok = _early_ending(fresh_tiny_model), tiny_tokenizer
    cfg = SamplingConfig(num_samples=256, max_new_tokens=5, seed=5, micro_batch_size=128)
    stats = {}
    for name in ("generate", backend):
        out = sample(model, tok, prompts, cfg, backend=name, micro_batch_size=128 if name == "generate" else slots)
        packed = out.pack(tok.pad_token_id)
        with torch.no_grad():
            logp = response_logprobs(model, packed)  # (N, R)
        per_sample = logp.sum(-1)  # log-prob of the whole response
        lengths = torch.tensor([len(y) for y in out.response_ids], dtype=torch.float64)
        stats[name] = (lengths, per_sample.double())
    for a, b in zip(stats["generate"], stats[backend]):
        se = (a.var() / len(a) + b.var() / len(b)).sqrt()
        assert abs(a.mean() - b.mean()) < 5 * se, (a.mean(), b.mean(), se)
    assert stats["generate"][0].std() > 0.5  # lengths really vary


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_p=0.8, top_k=50)])
def test_continuous_returns_the_log_probs_the_learner_scores(fresh_tiny_model, tiny_tokenizer, prompts, kw):
    # each token's log softmax(z / T) over the whole vocabulary, as response_logprobs rescores it (top-p and
    # top-k shape the draw, not the learner's log-prob); decoded with a cache vs one packed forward: rounding
    from credit.scoring import response_logprobs

    model, tok = _early_ending(fresh_tiny_model), tiny_tokenizer
    out = sample(model, tok, prompts, num_samples=4, max_new_tokens=6, seed=2, micro_batch_size=3,
                 backend="continuous", stop=("e",), **kw)
    assert [len(lp) for lp in out.logprobs] == [len(y) for y in out.response_ids]
    assert len({len(y) for y in out.response_ids}) > 1  # ends and cuts of several lengths
    with torch.no_grad():
        ref = response_logprobs(model, out.pack(tok.pad_token_id), kw["temperature"])  # (N, R)
    for row, lp in zip(ref, out.logprobs):
        assert torch.allclose(row[:len(lp)], torch.tensor(lp), atol=1e-5)
    assert sample(model, tok, prompts, max_new_tokens=2, seed=2).logprobs is None  # generate returns none


def test_continuous_same_seed_same_samples_and_stop_strings(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    cfg = SamplingConfig(num_samples=3, max_new_tokens=6, seed=7, micro_batch_size=4, backend="continuous")
    state = torch.get_rng_state()
    a, b = sample(model, tok, prompts, cfg), sample(model, tok, prompts, cfg)
    g = sample(model, tok, prompts, cfg, seed=None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.response_ids == b.response_ids == g.response_ids
    assert a.response_ids != sample(model, tok, prompts, cfg, seed=8).response_ids
    # a stop string ends the response at its completing token (as generate's test above)
    ids = sample(model, tok, prompts[:1], seed=5, max_new_tokens=8, backend="continuous").response_ids[0]
    k = next(k for k in range(2, 8)
             if len(tok.decode(ids[:k])) >= 2 and tok.decode(ids[:k])[-2:] not in tok.decode(ids[:k - 1]))
    stop = tok.decode(ids[:k])[-2:]
    out = sample(model, tok, prompts[:1], seed=5, max_new_tokens=8, stop=(stop,), backend="continuous")
    assert out.response_ids[0] == ids[:k] and out.truncated == [False]


def test_continuous_reports_progress_per_finished_sample(tiny_model_and_tokenizer, prompts):
    model, tok = tiny_model_and_tokenizer
    seen = []
    out = sample(model, tok, prompts, num_samples=3, max_new_tokens=4, seed=0, micro_batch_size=2,
                 backend="continuous", progress=seen.append)
    assert sum(seen) == len(out) == 6


# ----------------------------------------------------------------------------- the engine seam


def test_unknown_backend_is_refused_naming_every_engine():
    with pytest.raises(ValueError, match="backend must be one of generate, loop, static, continuous"):
        SamplingConfig(backend="vllm")
    from credit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"rollout.backend: must be one of generate, loop, static, continuous \(got 'vllm'\)"):
        load_config(None, ["rollout.backend=vllm"])


def test_the_registry_loads_without_torch():
    # the config and every CLI's --backend choices read ENGINES: importing it must not load torch
    import subprocess
    import sys

    code = "import sys, credit.rollout as r; assert list(r.ENGINES) and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_engine_registered_once_is_a_backend_everywhere(tiny_model_dir, tmp_path, monkeypatch):
    # a new engine is one entry of ENGINES: the config accepts its name, and the loop samples with it and
    # hands it the training module before every rollout (where an inference engine would copy weights)
    from accelerate.state import AcceleratorState

    import credit.train as train_mod
    from credit.config import load_config

    class Recording(LoopEngine):
        name = "recording"
        calls: list = []

        def load_weights(self, model):
            self.calls.append(("load_weights", model))

        def sample(self, prompts, sampling=None, **kw):
            self.calls.append(("sample", sampling.backend))
            return super().sample(prompts, sampling, **kw)

    monkeypatch.setitem(ENGINES, "recording", Recording)
    AcceleratorState._reset_state()
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"out_dir={tmp_path}", "device=cpu", "method=sdpo",
                             "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=4",
                             "rollout.backend=recording", "optim.micro_batch=6", "log.progress=false",
                             "log.tensorboard=false"])
    trainer = train_mod.Trainer(cfg)
    for step in range(2):
        trainer.run_step(step)
    assert [c[0] for c in Recording.calls] == ["load_weights", "sample"] * 2
    assert all(c[1] is trainer.unwrapped for c in Recording.calls if c[0] == "load_weights")
    assert isinstance(trainer.engine, Recording)


def test_continuous_engine_is_built_from_the_module():
    assert ENGINES["continuous"] is ContinuousEngine and ContinuousEngine.refills
    assert not any(ENGINES[name].refills for name in ("generate", "loop", "static"))


def test_training_and_evaluation_sample_with_continuous(tiny_model_dir, tmp_path):
    # the loop's rollout and the held-out evaluation (one call over its whole queue, a bar per sample)
    from accelerate.state import AcceleratorState

    import credit.train as train_mod
    from credit.config import load_config
    from credit.evaluate import evaluate

    AcceleratorState._reset_state()
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"out_dir={tmp_path}", "device=cpu", "method=credit",
                             "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=4",
                             "rollout.backend=continuous", "rollout.micro_batch=4", "optim.micro_batch=6",
                             "log.progress=false", "log.tensorboard=false"])
    trainer = train_mod.Trainer(cfg)
    metrics, _ = trainer.run_step(0)
    assert metrics["rollout/samples"] == 6 and metrics["perf/rollout_tokens_per_s"] > 0
    assert isinstance(trainer.engine, ContinuousEngine)
    result = evaluate(trainer.unwrapped, trainer.tok, trainer.task, n=3, max_new_tokens=4, batch_size=4, seed=1,
                      limit=5, backend="continuous", progress=True)
    prompts = encode_prompts(trainer.tok, [e.messages for e in trainer.task.examples("test")[:5]])
    one_call = sample(trainer.unwrapped, trainer.tok, prompts, num_samples=3, max_new_tokens=4, temperature=0.7,
                      micro_batch_size=4, seed=1, backend="continuous")
    assert result["num_items"] == 5 and result["response_len_mean"] == sum(map(len, one_call.response_ids)) / 15
