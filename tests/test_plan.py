"""``credit plan``: a model's memory per rank from its config alone (meta device, nothing downloaded), and the
estimate against a measured peak on the tiny model."""

import sys
from pathlib import Path

import pytest

from credit.analysis import plan
from credit.cli import main as cli_main
from credit.config import load_config

ROOT = Path(__file__).parents[1]
QWEN3_8B = ROOT / "configs" / "models" / "qwen3-8b.json"
sys.path.insert(0, str(Path(__file__).parent))
from _dist_worker import fixed_sample  # noqa: E402


def test_qwen3_8b_is_counted_from_its_config_json_on_the_meta_device():
    shape = plan.model_shape(plan.model_config(str(QWEN3_8B)))
    # Qwen3-8B: 36 layers of 4096 (GQA 32/8 heads of 128, MLP 12288), untied 151,936 × 4096 embeddings
    assert shape.name == "Qwen3ForCausalLM" and not shape.tied
    assert shape.params == 8_190_735_360
    assert shape.embed_params == 2 * 151_936 * 4096
    # q, o: 4096 × 4096; k, v: 4096 × 1024; gate, up, down: 4096 × 12288; two norms; q_norm, k_norm of 128
    assert shape.layer_params == 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128
    lora = load_config(None, ["model.lora={r: 16}"]).model.lora
    # r·(in + out) for q, k, v, o, gate, up, down of 36 layers
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 12288) * 3)
    assert plan.model_shape(plan.model_config(str(QWEN3_8B)), lora).trainable == 36 * per_layer


def test_activations_per_token_and_layer_are_the_hand_count_in_fp32():
    # a Llama layer in fp32 keeps, per token: the layer input, two norm intermediates and outputs, the
    # residual (6·H), q after RoPE and the attention output (2·q), k and v (2·kv), four MLP tensors (4·I)
    config = plan.model_config("smollm2-135m")
    shape = plan.model_shape(config)
    per_layer, _ = plan.activation_rates(config, shape, "float32")
    h, q, kv, i = 576, 576, 192, 1536
    assert per_layer == pytest.approx(4 * (6 * h + 2 * q + 2 * kv + 4 * i), rel=0.02)  # 44,544 bytes
    bf16, _ = plan.activation_rates(config, shape, "bfloat16")
    assert bf16 < 0.8 * per_layer  # bf16 autocast keeps the matmul outputs in 2 bytes


def test_fsdp_divides_the_states_by_the_ranks_and_the_plan_says_what_fits():
    shape = plan.model_shape(plan.model_config(str(QWEN3_8B)))
    config = plan.model_config(str(QWEN3_8B))
    rates = plan.activation_rates(config, shape, "bfloat16")
    base = ["model.name=" + str(QWEN3_8B)]
    one = plan.estimate(load_config(ROOT / "configs" / "code-credit.yaml", base), shape, rates, gpus=1)
    eight = plan.estimate(load_config(ROOT / "configs" / "code-credit.yaml", [*base, "parallel=fsdp"]), shape, rates,
                          gpus=8)
    for name in ("weights", "gradients", "teacher"):
        assert eight.components[name] == pytest.approx(one.components[name] / 8)
    assert one.components["weights"] == 4 * shape.params  # fp32 masters
    assert eight.peak < one.peak


def test_credit_plan_prints_the_table_and_what_to_change(capsys):
    # full fine-tuning of 8B replicated on 8 GPUs (DDP): fp32 weights, gradients, AdamW and the EMA copy alone
    # are 16 bytes a parameter (122 GiB); sharded over the 8 (FSDP2) with activations recomputed (gradient
    # checkpointing, proposed before a smaller micro-batch) or with 4 rows per micro-batch it fits in 80
    args = ["plan", str(ROOT / "configs" / "code-credit.yaml"), f"model.name={QWEN3_8B}"]
    assert cli_main([*args, "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    for text in ("Qwen3ForCausalLM: 8.19B parameters", "weights", "optimizer", "rollout KV cache",
                 "activations (checkpointing)", "peak by phase", "of 80 GiB: does NOT fit", "fits with: "):
        assert text in out, text
    assert "model.gradient_checkpointing=true parallel=fsdp" in out
    for fix in ("model.gradient_checkpointing=true", "optim.micro_batch=4"):
        assert cli_main([*args, "parallel=fsdp", fix, "--gpus", "8", "--gpu-memory", "80"]) == 0
        assert "of 80 GiB: fits" in capsys.readouterr().out, fix


def test_a_hub_id_that_cannot_be_fetched_names_the_fix(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["plan", "model.name=nobody-here/no-such-model-xyz"]) == 2
    err = capsys.readouterr().err
    assert "cannot fetch the config of 'nobody-here/no-such-model-xyz'" in err and "config.json" in err
    assert "Traceback" not in err


def test_the_plan_is_within_a_quarter_of_the_measured_peak_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    import credit.train as train_mod
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    monkeypatch.setattr(train_mod, "sample", fixed_sample)
    cfg = load_config(None, [f"model.name={tiny_model_dir}", f"out_dir={tmp_path}", "device=cpu", "threads=1",
                             "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
                             "optim.micro_batch=4", "task.options={answer_feedback: true}", "log.progress=false",
                             "log.tensorboard=false"])
    estimate, _, _ = plan.make_plan(cfg, prompt_tokens=plan.task_prompt_tokens(cfg))
    measured = plan.measure(cfg)
    # measured here: 47.2 MiB planned, 49.0 MiB measured (SmolLM2-135M: BENCHMARKS.md §7)
    assert 0.75 <= estimate.peak / measured <= 1.25, (estimate.peak, measured)
