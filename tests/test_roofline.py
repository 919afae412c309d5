"""The roofline of `credit bench`: a model's cost per token counted by hand, each phase's FLOPs and bytes
from a step's batch counted by hand, fractions of the peak, and the columns in a real bench run.
No timing assertions: only that the probe measured something."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from credit.analysis.bench import ModelCost, model_cost, probe_peak, roofline, step_work
from credit.cli import main
from credit.scoring import pack


def test_model_cost_of_the_tiny_llama(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    cost = model_cost(model, "float32")
    # hidden 32, 4 heads of 8, 2 kv heads, MLP 64, 2 layers: q, o 32·32; k, v 32·16; gate, up, down 32·64
    per_layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64  # 9216
    assert cost.body_params == 2 * per_layer == 18_432
    assert cost.head_params == 49_152 * 32  # tied: the embedding matrix, used as the head
    assert cost.trainable_params == cost.body_params + cost.head_params
    assert cost.weight_bytes == 4 * (18_432 + 49_152 * 32)
    assert cost.kv_bytes == 2 * 2 * 2 * 8 * 4  # k and v, 2 layers, 2 kv heads of 8, fp32
    assert model_cost(model, "bfloat16").weight_bytes == cost.weight_bytes // 2
    assert cost.forward_flops(10, 3) == 2 * 18_432 * 10 + 2 * 49_152 * 32 * 3


def test_step_work_counts_each_phase_by_hand():
    cost = ModelCost(body_params=10, head_params=100, trainable_params=110, weight_bytes=1000, kv_bytes=2)
    # 2 prompts (3 and 2 tokens) x 2 samples; responses of 2, 1, 2, 2 tokens (7 in all)
    prompts, responses = [[1, 2, 3]] * 2 + [[4, 5]] * 2, [[7, 7], [7], [7, 7], [7, 7]]
    teacher = [[1, 2, 3, 9, 9]] * 2 + [[4, 5, 9]] * 2  # one context per group
    negatives = [[4, 5, 9, 9, 9]] * 2 + [[1, 2, 3, 9]] * 2
    batch = SimpleNamespace(student=pack(prompts, responses, 0), teacher=pack(teacher, responses, 0),
                            negatives=[pack(negatives, responses, 0)])
    work = step_work(cost, batch, k=1, micro_batch=2, rollout_micro_batch=4)
    # rollout: prefill (3-1) + (2-1) = 3 positions, 7 decoded with the head: 2·10·10 + 2·100·7 = 1600;
    # bytes: weights for the prefill and 2 decode steps (3000), KV of the attended positions:
    # Σ r·p + r(r-1)/2 = (6+1) + 3 + (4+1) + (4+1) = 20 positions × 2 bytes
    assert work["rollout"] == {"flops": 1600, "bytes": 3000 + 40}
    # teacher: micro-batches of 2 rows hold one context each (5 and 3 tokens) + 7 response positions
    assert work["teacher"] == {"flops": 2 * 10 * (8 + 7) + 2 * 100 * 7, "bytes": 2 * 1000}
    assert work["negatives"] == {"flops": 2 * 10 * (5 + 4 + 7) + 2 * 100 * 7, "bytes": 2 * 1000}
    # update: forward + backward of every weight (dX and dW): 3 x (2·10·(3 + 2 + 7) + 2·100·7); weights read
    # 3 times per micro-batch, AdamW 28 bytes per trained weight
    assert work["update"] == {"flops": 3 * (2 * 10 * 12 + 2 * 100 * 7), "bytes": 3 * 1000 * 2 + 28 * 110}
    frozen = ModelCost(body_params=10, head_params=100, trainable_params=0, weight_bytes=1000, kv_bytes=2)
    assert step_work(frozen, batch, 1, 2, 4)["update"]["flops"] == 2 * (2 * 10 * 12 + 2 * 100 * 7)  # dX only


def test_roofline_is_achieved_over_peak_and_skips_phases_that_did_not_run():
    peak = {"flop_s": 100.0, "byte_s": 10.0}
    work = {"rollout": {"flops": 50.0, "bytes": 20.0}, "negatives": {"flops": 0.0, "bytes": 0.0},
            "update": {"flops": 400.0, "bytes": 4.0}}
    rows = roofline({"rollout": 2.0, "negatives": 0.0, "update": 8.0}, work, peak)
    assert set(rows) == {"rollout", "update"}
    assert rows["rollout"]["flop_s"] == 25 and rows["rollout"]["frac_flops"] == 0.25
    assert rows["rollout"]["byte_s"] == 10 and rows["rollout"]["frac_bytes"] == 1.0  # memory-bound:
    assert rows["rollout"]["intensity"] == 2.5 < rows["rollout"]["balance"] == 10  # below the balance
    assert rows["update"]["intensity"] == 100 > rows["update"]["balance"]


def test_probe_measures_a_cpu_peak():
    peak = probe_peak("cpu", "float32")
    assert peak["flop_s"] > 0 and peak["byte_s"] > 0 and peak["source"] == "probe" and peak["threads"] >= 1


@pytest.mark.parametrize("backend", ["generate", "continuous"])
def test_bench_prints_the_roofline_of_every_phase(tmp_path, tiny_tokenizer, capsys, backend):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "tiny", "-B", "3", "-G", "3", "--prompt-len", "4", "--response-len", "4",
               "--ks", "1", "--methods", "credit-token-k1", "--repeats", "1", "--warmup", "0", "--threads", "1",
               "--backend", backend, "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "roofline: peak" in text and "% peak FLOP/s" in text and "FLOP/byte" in text
    result = json.loads(out.read_text())
    assert result["backend"] == backend
    rows = result["roofline"]["methods"]["credit-token-k1"]
    assert set(rows) == {"rollout", "teacher", "negatives", "update"}
    for r in rows.values():
        assert r["flops"] > 0 and r["bytes"] > 0 and 0 < r["frac_flops"] and r["flop_s"] == r["flops"] / r["seconds"]
    assert result["methods"]["credit-token-k1"]["tokens_per_s"]["rollout"] > 0
    # responses forced to 4 tokens in every engine: 9 rollouts x 4 positions through the head, and more
    # (the prefill and the body) through the rest
    assert rows["rollout"]["flops"] > 2 * (49_152 * 32) * 9 * 4
