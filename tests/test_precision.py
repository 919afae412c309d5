"""bf16 that is right: every forward of the update sees the current weights (autocast's cast cache does not
outlive an optimizer step), ΔV under bf16 autocast stays near its fp32 value, every mode × teacher ×
LoRA/full × fp32/bf16 trains a step, and fp16 is refused with a pointer to bf16."""

import math
import sys
from pathlib import Path

import pytest
import torch

import credit.train as train_mod
from credit import signal
from credit.config import ConfigError, load_config
from credit.models import load_model
from credit.scoring import pack, response_logits, response_logprobs

sys.path.insert(0, str(Path(__file__).parent))
from _dist_worker import fixed_sample  # noqa: E402

BASE = ["device=cpu", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "optim.micro_batch=4", "optim.lr=1e-3", "task.options={answer_feedback: true}", "log.progress=false",
        "log.tensorboard=false"]


def make_trainer(model_dir, tmp_path, monkeypatch, *overrides):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one process, many trainers: each sets its own mixed precision
    monkeypatch.setattr(train_mod, "sample", fixed_sample)
    cfg = load_config(None, [f"model.name={model_dir}", f"out_dir={tmp_path}", *BASE, *overrides])
    return train_mod.Trainer(cfg)


def test_the_second_epoch_sees_the_updated_weights_under_bf16(tiny_model_dir, tmp_path, monkeypatch):
    """With one autocast region over the whole update, epoch 2 reused epoch 1's bf16 copies of the weights:
    its ratio ℓ/ℓold stayed near 1 although AdamW had moved every weight (lr 5e-2)."""
    trainer = make_trainer(tiny_model_dir, tmp_path, monkeypatch, "method=grpo", "model.dtype=bfloat16",
                           "optim.epochs=2", "optim.lr=5e-2", "optim.grad_clip=null")
    seen = []
    loss = trainer.method.loss

    def spy(m, batch, targets, scorer):
        if not m.first_epoch:  # the weights this forward should see, and what it computed from them
            weights = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
            seen.append((batch.student.rows(m.rows), m.logp.detach().clone(), m.old_logp.clone(), weights))
        return loss(m, batch, targets, scorer)

    monkeypatch.setattr(trainer.method, "loss", spy)
    metrics, _ = trainer.run_step(0)  # the whole step, as train() runs it
    assert seen and metrics["loss/skipped_steps"] == 0
    fresh, _ = load_model(tiny_model_dir)  # fp32, no autocast: the current weights' log-probs
    for packed, logp, old, weights in seen:
        fresh.load_state_dict(weights)
        with torch.no_grad():
            expected = response_logprobs(fresh, packed)
        mask = packed.response_mask.bool()
        moved = (expected - old)[mask].abs().max().item()
        # the step moved the log-probs by ~1 nat (0.9–1.3 measured); bf16 noise is ~5e-3 (measured)
        assert moved > 0.5, moved
        assert (logp - expected)[mask].abs().max().item() < 0.1 * moved
    assert metrics["loss/clip_fraction"] > 0  # the ratio left [1 − ε, 1 + ε]: PPO's clip fired


def delta_v_errors(model, tok) -> tuple[float, float, float]:
    """Mean |ΔV_bf16 − ΔV_fp32| over the response tokens of 8 addition answers, student prompt vs a teacher
    context with a demo: (ours, from the model's bf16 logits, mean |ΔV_fp32|)."""
    pairs = [(3 + i, 7 + 2 * i) for i in range(8)]
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}], add_generation_prompt=True,
                                       tokenize=False) for a, b in pairs]
    demo = "\nCorrect solution:\n\nThe answer is 12.\n\nCorrectly solve the original question.\n"
    student_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    teacher_ids = [tok(p.replace("?", "?" + demo, 1), add_special_tokens=False)["input_ids"] for p in prompts]
    responses = [tok(f"{a} plus {b} makes {a + b}, so the answer is {a + b}.", add_special_tokens=False)["input_ids"]
                 for a, b in pairs]
    student = pack(student_ids, responses, tok.pad_token_id)
    teacher = pack(teacher_ids, responses, tok.pad_token_id)
    mask = student.response_mask.bool()

    def delta_v(bf16: bool, from_logits: bool) -> torch.Tensor:
        def logp(packed):
            if from_logits:  # the old path: log-softmax of the model's (bf16) logits
                return signal.token_logprobs(response_logits(model, packed), packed.response_ids)
            return response_logprobs(model, packed)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return logp(teacher) - logp(student)

    fp32 = delta_v(False, False)
    ours = (delta_v(True, False) - fp32)[mask].abs().mean().item()
    from_logits = (delta_v(True, True) - fp32)[mask].abs().mean().item()
    return ours, from_logits, fp32[mask].abs().mean().item()


def test_bf16_delta_v_stays_near_its_fp32_value(tiny_model_and_tokenizer):
    """ΔV = ℓT − ℓS under bf16 autocast vs fp32 on the tiny model. The head and its log-softmax run in fp32
    from the hidden states, so only the network's own bf16 rounding remains (measured: 8.6e-5 nats, against
    3.1e-4 from the model's bf16 logits, for a mean |ΔV| of 8.0e-3)."""
    ours, from_logits, size = delta_v_errors(*tiny_model_and_tokenizer)
    print(f"tiny: mean |ΔV bf16 − ΔV fp32| = {ours:.2e} nats (from bf16 logits: {from_logits:.2e}; |ΔV| {size:.2e})")
    assert size > 1e-3  # the contexts differ: ΔV is not 0 = 0
    assert ours <= 1e-3
    assert ours < from_logits


@pytest.mark.slow
def test_bf16_delta_v_on_smollm2(smollm2):
    """On real weights the network's own bf16 rounding dominates: no 1e-3 bound holds there; the fp32 head
    removes the share the bf16 logits added (measured: 0.014 nats, against 0.026 from the bf16 logits, for a
    mean |ΔV| of 0.39; BENCHMARKS.md §7)."""
    ours, from_logits, size = delta_v_errors(*smollm2)
    print(f"SmolLM2: mean |ΔV bf16 − ΔV fp32| = {ours:.4f} nats (from bf16 logits: {from_logits:.4f}; |ΔV| {size:.3f})")
    assert ours < from_logits
    assert ours < 0.1 * size


def test_fp16_is_refused_with_a_pointer_to_bf16():
    with pytest.raises(ConfigError, match="model.dtype=float16 is not supported.*use model.dtype: bfloat16"):
        load_config(None, ["model.dtype=float16"])


MODES = {"token": [], "logits": ["credit.mode=logits", "credit.top_k=20"], "sequence": ["credit.mode=sequence"]}


def _cells():
    for mode in MODES:
        for kind in ("ema", "frozen", "live", "trust_region"):
            for lora in (False, True):
                if lora and kind == "trust_region":
                    continue  # refused by the config (test_train: bad configs)
                for dtype in ("float32", "bfloat16"):
                    yield pytest.param(mode, kind, lora, dtype, id=f"{mode}-{kind}-{'lora' if lora else 'full'}-{dtype}")


@pytest.mark.parametrize("mode, kind, lora, dtype", list(_cells()))
def test_every_mode_and_teacher_trains_a_step(tiny_model_dir, tmp_path, monkeypatch, mode, kind, lora, dtype):
    overrides = ["method=credit", *MODES[mode], f"teacher.kind={kind}", f"model.dtype={dtype}",
                 "optim.epochs=2"] + (["model.lora={r: 4}"] if lora else [])
    trainer = make_trainer(tiny_model_dir, tmp_path, monkeypatch, *overrides)
    before = {k: v.detach().clone() for k, v in trainer.unwrapped.named_parameters() if v.requires_grad}
    metrics, _ = trainer.run_step(0)
    assert metrics["loss/skipped_steps"] == 0 and torch.isfinite(torch.tensor(metrics["loss/total"]))
    assert torch.isfinite(torch.tensor(metrics["signal/dv_mean"]))
    after = dict(trainer.unwrapped.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before), "no trained parameter moved"


def test_lora_under_bf16_keeps_the_base_in_bf16_and_what_trains_in_fp32(tiny_model_dir, tmp_path, monkeypatch):
    """As 8B models are tuned on one GPU: the frozen base in the compute dtype, the adapters (the student's
    and the EMA teacher's) and AdamW's moments in fp32; a step trains with a finite loss."""
    trainer = make_trainer(tiny_model_dir, tmp_path, monkeypatch, "model.dtype=bfloat16", "model.lora={r: 4}")
    named = dict(trainer.unwrapped.named_parameters())
    assert {p.dtype for n, p in named.items() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in named.items() if "lora_" in n} == {torch.float32}
    assert any("credit_ema" in n for n in named)  # the EMA teacher's adapter is among them
    metrics, _ = trainer.run_step(0)
    assert math.isfinite(metrics["loss/total"]) and metrics["loss/grad_norm"] > 0
    moments = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert moments and {v.dtype for v in moments} == {torch.float32}
