"""Sharded training (``parallel=fsdp``) on CPU processes, for test_fsdp.py. Run as a plain process (one
rank) or under ``torch.distributed.run --nproc_per_node N`` (gloo):

    python _fsdp_worker.py variants MODEL_DIR OUT.pt
        every method of VARIANTS, 3 steps each on the same global batch; rank 0 saves each one's
        gathered weights, metrics, and every rank's bytes of student + teacher + optimizer state
    python _fsdp_worker.py train MODEL_DIR OUT_DIR KILL_AT [overrides...]
        ``credit.train.train_run`` (checkpoints, resume, final/); KILL_AT > 0: SIGKILL rank 0 inside the
        update of that 0-based step; "resume" as an override resumes. Rank 0 saves the gathered weights
        at the end to OUT_DIR/gathered.pt
    python _fsdp_worker.py mismatch MODEL_DIR OUT_DIR
        rank 0 enters a collective the others never enter: it must fail within dist_timeout_s

Sampling is replaced by a deterministic function of each prompt (its RNG stream differs with the
number of processes), as in _dist_worker.py; responses end at different lengths on different ranks.
With ``SIGNAL_ONLY_FIRST=2`` only the first two prompts of the global batch get a right answer (and
there is no feedback): with 2 or 3 ranks, rank 0 has teacher signals and the others none.
"""

import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from transformers.models.llama import modeling_llama

import credit.train as train_mod
from _dist_worker import fixed_sample, norm_in_its_dtype
from credit import parallel, runs
from credit.config import load_config

# transformers' RMSNorm computes in float32 whatever the model's dtype; prefix sharing (every pass, the update's
# too) groups rows by prompt within a process, so a float32 norm would round one process's gradients apart from
# N processes' by ~1e-8 (tests/test_scoring.py). In float64 throughout, the two agree to ~1e-14.
modeling_llama.LlamaRMSNorm.forward = norm_in_its_dtype

BASE = ["device=cpu", "rollout.prompts_per_step=6", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
        "optim.micro_batch=2", "optim.lr=1e-3", "credit.negative_strategy=roll", "model.dtype=float64",
        "parallel=fsdp", "dist_timeout_s=120", "log.progress=false", "log.tensorboard=false"]
FEEDBACK = "task.options={answer_feedback: true}"
LORA = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"
VARIANTS = {
    "grpo": ["method=grpo", FEEDBACK],
    "sdpo": ["method=sdpo", FEEDBACK],
    "credit-token": [FEEDBACK, "log.kl_every=1"],  # KL to the initial weights: a sharded frozen copy
    "credit-logits": ["credit.mode=logits", "credit.top_k=20", FEEDBACK],
    "credit-sequence": ["credit.mode=sequence", FEEDBACK],
    "credit-lora-logits": ["credit.mode=logits", "credit.top_k=20", LORA, FEEDBACK],
    "credit-lora-token": [LORA, FEEDBACK, "log.kl_every=1"],  # ... and the base with the adapters off
    "credit-one-rank-signals": ["teacher.kind=live", "teacher.include_feedback=false"],
    # activations recomputed in the backward, inside the sharded layers (as 8B models are trained)
    "credit-checkpointed": [FEEDBACK, "model.gradient_checkpointing=true"],
    "credit-lora-checkpointed": [LORA, FEEDBACK, "model.gradient_checkpointing=true"],
}


def sample(model, tokenizer, prompts, config, generator=None):
    rollouts = fixed_sample(model, tokenizer, prompts, config, generator)
    first = int(os.environ.get("SIGNAL_ONLY_FIRST", "0"))
    if first:
        rank = dist.get_rank() if dist.is_initialized() else 0
        for i in range(0, len(rollouts.texts), config.num_samples):  # the right answer of each prompt
            if rank * len(prompts) + i // config.num_samples >= first:
                rollouts.texts[i] = "no idea"
    return rollouts


def count_recomputes(model) -> list[int]:
    """[how often the first layer's MLP runs inside a backward pass]: > 0 only when activations are
    recomputed (gradient checkpointing). Module hooks do not fire on a recompute, so its forward is wrapped."""
    mlp = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp"))
    count, forward = [0], mlp.forward

    def counted(*args, **kwargs):
        count[0] += torch._C._current_graph_task_id() != -1  # -1 outside a backward
        return forward(*args, **kwargs)

    mlp.forward = counted
    return count


def state_bytes(trainer) -> int:
    """This rank's bytes of student weights, teacher weights and AdamW state."""
    tensors = list(trainer.model.parameters())
    tensors += list(trainer.teacher.ref.parameters()) if hasattr(trainer.teacher, "ref") else []
    tensors += [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    return sum(parallel.local(t).numel() * t.element_size() for t in tensors)


def variants(model_dir: str, out: str) -> None:
    results = {}
    for name, overrides in VARIANTS.items():
        os.environ["SIGNAL_ONLY_FIRST"] = "2" if name == "credit-one-rank-signals" else "0"
        cfg = load_config(None, [f"model.name={model_dir}", "out_dir=/tmp/credit-fsdp-unused", *BASE, *overrides])
        runs.seed_everything(cfg.seed)  # as train() does: LoRA's initial adapters
        print(f"variant {name}", file=sys.stderr, flush=True)  # where a failure happened, in the test's output
        trainer = train_mod.Trainer(cfg)
        recomputed = count_recomputes(trainer.unwrapped)
        metrics = [trainer.run_step(step)[0] for step in range(3)]
        weights = parallel.full_state_dict(trainer.model)
        sizes = [None] * trainer.acc.num_processes
        if trainer.acc.num_processes > 1:
            dist.all_gather_object(sizes, state_bytes(trainer))
        else:
            sizes = [state_bytes(trainer)]
        results[name] = {"params": {k: v.detach().cpu() for k, v in weights.items()}, "metrics": metrics,
                         "bytes": sizes, "sharded": trainer.sharded, "recomputed": recomputed[0]}
        del trainer
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({"world": parallel.world_size(), "results": results}, out)


def train(model_dir: str, out_dir: str, kill_at: str, *overrides: str) -> None:
    resume = "resume" in overrides
    cfg = load_config(None, [f"model.name={model_dir}", f"out_dir={out_dir}", *BASE, FEEDBACK,
                             *(o for o in overrides if o != "resume")])
    real_update = train_mod.Trainer.update

    def update(self, batch, targets, step):
        if step == int(kill_at) and self.acc.process_index == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-step: rollouts and teacher done, no weight update saved
        return real_update(self, batch, targets, step)

    train_mod.Trainer.update = update
    _, trainer = train_mod.train_run(cfg, resume=resume)
    weights = parallel.full_state_dict(trainer.model)
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, os.path.join(out_dir, "gathered.pt"))


def mismatch(model_dir: str, out_dir: str) -> None:
    cfg = load_config(None, [f"model.name={model_dir}", f"out_dir={out_dir}", *BASE, FEEDBACK, "dist_timeout_s=5"])
    trainer = train_mod.Trainer(cfg)  # the process group is made with the config's timeout
    if trainer.acc.process_index == 0:
        t0 = time.perf_counter()
        try:
            with parallel.stage("a deliberately unmatched all_reduce"):
                dist.all_reduce(torch.ones(1))
        except parallel.CollectiveError as e:
            with open(os.path.join(out_dir, "error.txt"), "w") as f:
                f.write(f"{e}\n{time.perf_counter() - t0:.1f}\n")
            sys.exit(3)
    time.sleep(60)  # the other ranks never enter it (and stay alive, so only the timeout can end it)


if __name__ == "__main__":
    train_mod.sample = sample
    {"variants": variants, "train": train, "mismatch": mismatch}[sys.argv[1]](*sys.argv[2:])
