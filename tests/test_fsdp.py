"""Sharded training (``parallel=fsdp``, PyTorch's FSDP2) on 2 and 3 gloo CPU processes against one process.

Each case launches ``_fsdp_worker.py`` with ``torch.distributed.run`` (one OpenMP thread per process;
every collective has the config's timeout, so a disagreement between ranks fails instead of hanging, and
each subprocess has a generous wall-clock limit for a loaded machine).

Tolerance for "the same parameters": the model is float64. One process and N processes compute the same
global loss and gradient; only the order of the sums differs (FSDP2 reduce-scatters shards of the
gradient; one process sums micro-batches locally), which in float64 is ~1e-16 relative. Adam divides by
√v, so an element whose gradient is ~0 can move by that rounding noise amplified; after 3 steps at
lr 1e-3 that stays far below 1e-11 absolute (measured: ≤ 3e-15), while any real difference — a wrong
normalizer, a rank's missing micro-batch, a stale teacher — moves weights by ~1e-4 (one lr step).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "_fsdp_worker.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
LIMIT_S = 1200  # a whole launch on a busy 2-core machine; a hang would be caught by dist_timeout_s long before


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(nproc: int, *args: str) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), str(WORKER), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=LIMIT_S, cwd=WORKER.parent)


_launched: dict[int, dict] = {}


def variants(nproc: int, model_dir: str, tmp: Path) -> dict:
    """Every method of the worker's VARIANTS trained 3 steps on ``nproc`` processes (once per module)."""
    if nproc not in _launched:
        run = launch(nproc, "variants", model_dir, str(tmp / f"world{nproc}.pt"))
        assert run.returncode == 0, run.stderr[-4000:]
        _launched[nproc] = torch.load(tmp / f"world{nproc}.pt", weights_only=False)
    return _launched[nproc]


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory):
    return tmp_path_factory.mktemp("fsdp")


@pytest.mark.parametrize("nproc", [2, 3])
def test_sharded_training_equals_one_process(tiny_model_dir, tmp_module, nproc):
    """GRPO, SDPO, CREDIT token / logits / sequence, CREDIT with LoRA (token and logits, EMA adapter
    teacher), CREDIT with gradient checkpointing (full and LoRA), and a batch where only rank 0's prompts
    carry a teacher signal (live teacher: the others run no teacher forward at all): 3 steps each,
    sharded over ``nproc`` ranks, give the one-process parameters and metrics. Responses end at different
    lengths on different ranks."""
    one, got = variants(1, tiny_model_dir, tmp_module), variants(nproc, tiny_model_dir, tmp_module)
    assert (one["world"], got["world"]) == (1, nproc)
    for name, ref in one["results"].items():
        res = got["results"][name]
        assert res["sharded"] and not ref["sharded"], name
        for m1, m2 in zip(ref["metrics"], res["metrics"], strict=True):
            assert m2["loss/grad_norm"] == pytest.approx(m1["loss/grad_norm"], rel=1e-9, abs=1e-15), name
            assert m2["loss/total"] == pytest.approx(m1["loss/total"], rel=1e-9, abs=1e-15), name
            # every metric is the whole batch's, not rank 0's: per-rollout ones exactly (each rank holds as many
            # rollouts), policy/* (entropy, KL to the initial weights) as sums over every rank's tokens, and
            # signal/* (token means, stds, a correlation) from every rank's rows; perf/*: timings
            assert m2.keys() == m1.keys(), name
            exact = {k: v for k, v in m1.items() if not k.startswith("perf/")}
            assert {k: m2[k] for k in exact} == pytest.approx(exact, rel=1e-9, abs=1e-12), name
        assert ref["params"].keys() == res["params"].keys(), name
        for k, v in ref["params"].items():  # LoRA: the EMA teacher's adapter too
            torch.testing.assert_close(res["params"][k], v, atol=1e-11, rtol=0, msg=lambda m: f"{name}: {k}: {m}")
    # the batches were not trivial: every method moved the weights at every step
    assert all(m["loss/grad_norm"] > 0 for r in one["results"].values() for m in r["metrics"])
    for name in ("credit-token", "credit-lora-token"):  # the KL is 0 before any step, positive after
        kl = [m["policy/kl_initial"] for m in one["results"][name]["metrics"]]
        assert abs(kl[0]) < 1e-12 and min(kl[1:]) > 1e-8, (name, kl)
    for world in (one, got):  # checkpointed variants recompute their layers in the backward, the others never
        recomputed = {name: r["recomputed"] > 0 for name, r in world["results"].items()}
        assert recomputed == {name: name.endswith("-checkpointed") for name in recomputed}, recomputed
    signals = [m["teacher/no_signal_fraction"] for m in one["results"]["credit-one-rank-signals"]["metrics"]]
    assert all(0 < s < 1 for s in signals), signals


def test_sharding_halves_each_ranks_state(tiny_model_dir, tmp_module):
    """Student + EMA teacher + AdamW state per rank at 2 processes ≤ 0.6 × one process (counted from the
    tensors each rank holds; sharding is by rows, so the tiny model's large embedding splits too)."""
    one, two = variants(1, tiny_model_dir, tmp_module), variants(2, tiny_model_dir, tmp_module)
    for name in ("credit-token", "credit-lora-token"):
        whole, per_rank = one["results"][name]["bytes"][0], two["results"][name]["bytes"]
        assert len(per_rank) == 2 and max(per_rank) <= 0.6 * whole, (name, whole, per_rank)


TRAIN = ["steps=3", "checkpoint_every=1", "eval.every=2", "eval.limit=5", "eval.samples=2"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_killed_sharded_run_resumes_exactly_and_final_loads(tiny_model_dir, tmp_path, lora):
    """SIGKILL rank 0 inside step 2's update of a 2-process sharded run; ``--resume`` ends with the weights
    of an uninterrupted run, bit for bit (same world, same reduction order, RNG and state restored; the
    weights, EMA teacher and AdamW state from the shards each rank wrote and reads back).
    The same under LoRA (the EMA teacher a second adapter of the sharded student). ``final/`` of the full
    run is a plain Hugging Face folder holding the gathered weights; the evaluations (split over the ranks)
    and checkpoint-best.pt ran sharded too."""
    from transformers import AutoModelForCausalLM

    ref, out = tmp_path / "ref", tmp_path / "killed"
    train = TRAIN + (["model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}",  # the EMA: a 2nd adapter
                      "model.merge_lora_on_save=false"] if lora else [])
    run = launch(2, "train", tiny_model_dir, str(ref), "-1", *train)
    assert run.returncode == 0, run.stderr[-4000:]
    killed = launch(2, "train", tiny_model_dir, str(out), "2", *train)
    assert killed.returncode != 0 and (out / "checkpoint.pt").exists(), killed.stderr[-4000:]
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 1  # steps 0 and 1 were saved
    # no process gathered the state: the step file names the folder where each rank wrote its own shards
    # (torch.distributed.checkpoint), the previous step's folder was pruned with its step file
    assert "model" not in saved and "optimizer" not in saved and saved["shards"] == "step-000002.shards"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002.pt", "step-000002.shards"]
    assert len(list((out / "checkpoints" / "step-000002.shards").glob("*.distcp"))) == 2  # one per rank
    resumed = launch(2, "train", tiny_model_dir, str(out), "-1", *train, "resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # from step 2 (a start from scratch would end on the same weights: sampling is a function of the prompt)
    assert __import__("json").loads((out / "summary.json").read_text())["resumed_from_step"] == 2
    want, got = torch.load(ref / "gathered.pt"), torch.load(out / "gathered.pt")
    assert want.keys() == got.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    summary = __import__("json").loads((ref / "summary.json").read_text())
    assert summary["eval_after"]["num_items"] == 5 and summary["eval_after"]["processes"] == 2
    assert (ref / "checkpoint-best.pt").exists()
    if not lora:  # under LoRA final/ holds the adapters
        final = AutoModelForCausalLM.from_pretrained(ref / "final", dtype=torch.float64).state_dict()
        for k, v in final.items():
            assert torch.equal(v, want[k]), k


def test_a_sharded_checkpoint_resumes_on_another_number_of_processes(tiny_model_dir, tmp_path):
    """Killed on 2 processes, resumed on 3: each of the 3 reads its new shard of every tensor from the 2
    ranks' files (torch.distributed.checkpoint reshards), and the run ends on the weights of the
    uninterrupted 2-process run (sampling is a function of the prompt here; the rest differs only by the
    order of the 3-way reduction: within 1e-11 in float64, as sharded vs one process)."""
    ref, out = tmp_path / "ref", tmp_path / "moved"
    assert launch(2, "train", tiny_model_dir, str(ref), "-1", *TRAIN).returncode == 0
    killed = launch(2, "train", tiny_model_dir, str(out), "2", *TRAIN)
    assert killed.returncode != 0 and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 1
    alone = launch(1, "train", tiny_model_dir, str(out), "-1", *TRAIN, "resume")  # one process: unsharded
    assert alone.returncode != 0 and "resume it with parallel=fsdp on 2 or more processes" in alone.stderr
    resumed = launch(3, "train", tiny_model_dir, str(out), "-1", *TRAIN, "resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    want, got = torch.load(ref / "gathered.pt"), torch.load(out / "gathered.pt")
    assert want.keys() == got.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=1e-11, rtol=0, msg=lambda m: f"{k}: {m}")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["world_size"] == 3  # the last step ran on 3
    # ... after resuming at step 2 (a start from scratch would end on the same weights here)
    assert __import__("json").loads((out / "summary.json").read_text())["resumed_from_step"] == 2


def test_an_unmatched_collective_fails_instead_of_hanging(tiny_model_dir, tmp_path):
    """Rank 0 enters an all_reduce the other rank never enters (it sleeps): with ``dist_timeout_s=5`` rank 0
    fails with an error naming the stage, and the launch ends (no hang)."""
    run = launch(2, "mismatch", tiny_model_dir, str(tmp_path))
    assert run.returncode != 0
    error = (tmp_path / "error.txt").read_text()
    assert "a collective failed during a deliberately unmatched all_reduce" in error, error


@pytest.mark.skipif(torch.cuda.is_available(), reason="about machines without CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_launched_cpu_processes_train_together_without_device_cpu(tiny_model_dir, tmp_path, dtype):
    """`torchrun --nproc_per_node 2 -m credit.cli train ...` as a user types it, without `device=cpu`, on a
    machine without CUDA: accelerate's default there is not distributed, so each process trained a run of its
    own into the same directory (and one crashed renaming a checkpoint file the other had cleaned away). In
    float32 and bf16 (the other tests run float64), where FSDP2 sent its gradient sum as a PREMUL_SUM that
    gloo refuses."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "credit.cli", "train", f"model.name={tiny_model_dir}", f"out_dir={out}", "parallel=fsdp",
           "method=grpo", "steps=2", "checkpoint_every=1", "rollout.prompts_per_step=4",
           "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "eval.limit=2", "eval.samples=1",
           "log.progress=false", "log.tensorboard=false", "dist_timeout_s=120", f"model.dtype={dtype}"]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=LIMIT_S)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("held-out mean@1") == 1, run.stdout  # the closing line, from rank 0 only
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (state["world_size"], state["parallel"], state["step"]) == (2, "fsdp", 1)
