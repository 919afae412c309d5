"""``credit train``: the on-policy loop, one code path for every method (docs/method.md).

Each step, in the order the data flows:
  1. prompts   B distinct examples of the train split; the order is fixed by (seed, step)
  2. rollout   G samples per prompt from the student
  3. tasks     every rollout -> Outcome(reward, feedback)
  4. teacher   contexts c (demo and/or feedback), CREDIT's negatives c^(k) from other problems
  5. method    ``method.prepare``: teacher log-probs, G, advantages (credit.methods)
  6. update    ``method.loss`` per micro-batch -> the one aggregation -> AdamW (epochs × mini-batches)
  7. teacher   θ_T update, metrics, sampled rollouts, atomic checkpoint

The loop knows no method: what differs between GRPO, SDPO and CREDIT (and between the token, logit
and sequence modes) lives in one small class of ``credit.methods``, built once from the config.

Every deliberate departure from the SDPO reference code (context truncation, teacher passes only for
rollouts with a signal, draws seeded by (seed, step), distinct problems per step) is listed in
docs/method.md §6.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs, reduce
from torch.nn.utils.rnn import pad_sequence

from credit import parallel, runs
from credit import objectives as obj
from credit.config import TrainConfig
from credit.errors import UserError
from credit.evaluate import evaluate, merge_shares
from credit.logging import rollout_records
from credit.methods import Micro, Seen, StepBatch, Targets, build_method
from credit.models import load_model
from credit.rollout import SamplingConfig, build_engine, check_prompt_lengths, encode_prompts, sample
from credit.scoring import pack, response_hidden, response_logprobs
from credit.signal import head_token_logprobs, masked_sum, sampled_kl
from credit.tasks import Example, build_task
from credit.teacher import build_negative_contexts, build_teacher_contexts, problem_keys, sample_negative_groups
from credit.teacher.scorer import TeacherScorer
from credit.teacher.weights import build_teacher
from credit.threads import ThreadPolicy


def _rng(seed: int, step: int, stream: str) -> random.Random:
    return random.Random(f"{seed}/{step}/{stream}")


def _torch_gen(seed: int, step: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(_rng(seed, step, stream).getrandbits(62))


def step_prompts(train: list[Example], batch: int, seed: int, step: int) -> list[Example]:
    """The B examples of step ``step``: epoch e is a permutation seeded by (seed, e) cut into
    floor(|train| / B) steps; its last |train| mod B items are dropped (a different few each epoch),
    so the B examples of a step are always distinct."""
    if batch > len(train):
        raise ValueError(f"rollout.prompts_per_step={batch} is larger than the train split ({len(train)} "
                         "examples): a step holds distinct examples; lower rollout.prompts_per_step")
    epoch, pos = divmod(step, len(train) // batch)
    order = list(range(len(train)))
    _rng(seed, epoch, "order").shuffle(order)
    return [train[i] for i in order[pos * batch: pos * batch + batch]]


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """Everything a step needs, built from a validated config; ``run_step`` is one step, ``train()`` the loop."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator | None = None, task=None):
        """``task``: a task object to train on instead of ``build_task(cfg.task)`` (benchmarks, notebooks)."""
        self.cfg, self.threads = cfg, ThreadPolicy(cfg.threads)
        # bf16/fp16 compute under autocast over fp32 master weights: a bf16 parameter would round most
        # lr·update steps away (one bf16 AdamW step at lr 1e-6 changed 2% of the tiny model's weights)
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "no")
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # by torchrun / accelerate launch
        if accelerator is None and not launched:
            # accelerate keeps one global state, fixed by the first Accelerator of the process: a second
            # Trainer in one process (credit.fit in a notebook, a benchmark) may want another precision
            AcceleratorState._reset_state()
        timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.dist_timeout_s))
        # several processes on a machine without CUDA: accelerate's default device there is not distributed, so
        # each process would train alone (and write the same run directory); CPU processes train together
        cpu = cfg.device == "cpu" or (cfg.device is None and launched and not torch.cuda.is_available())
        self.acc = accelerator or Accelerator(cpu=cpu, mixed_precision=mixed, kwargs_handlers=[timeout])
        # FSDP2 shards only across processes; one process trains the whole model as it is
        self.sharded = cfg.parallel == "fsdp" and self.acc.num_processes > 1
        self.out = Path(cfg.out_dir)
        if self.acc.num_processes > 1 and cfg.credit.swap == "context" and build_method(cfg).num_negatives:
            raise ValueError("credit.swap=context needs every prompt group's teacher context in one process; "
                             "use credit.swap=input with several processes")
        self.task = task or build_task(cfg.task.name, **cfg.task.options)
        self.train_split = self.task.examples("train")
        if not self.train_split:
            raise ValueError(f"task '{cfg.task.name}' has no training examples")
        master = "float64" if cfg.model.dtype == "float64" else "float32"
        # LoRA as 8B models are tuned on one GPU: the frozen base in the compute dtype (half the bytes, no
        # re-cast per matmul), the adapters and their AdamW state in fp32 (peft keeps adapters fp32 over a
        # bf16 base). Sharded, FSDP2 wants one dtype per unit: the base stays fp32 and is gathered in bf16
        base = "bfloat16" if cfg.model.lora is not None and cfg.model.dtype == "bfloat16" and not self.sharded \
            else master
        model, self.tok = load_model(cfg.model.name, dtype=base, cache_dir=cfg.model.cache_dir)
        check_prompt_lengths(self.tok, model, self.task, cfg.rollout.max_new_tokens, cfg.model.chat_template_kwargs)
        if cfg.model.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        # a checkpointed model in train mode drops the KV cache that prefix sharing passes through it
        self.share_prefix = cfg.optim.share_prefix and not cfg.model.gradient_checkpointing
        if cfg.model.lora is not None:
            from peft import LoraConfig, get_peft_model

            lc = cfg.model.lora
            model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                     target_modules=lc.target_modules, task_type="CAUSAL_LM"))
        model.to(self.acc.device).train()
        self.method = build_method(cfg)
        # θ_T from the initial weights; GRPO never asks a teacher, so it keeps no copy ("live" holds nothing)
        teacher_kind = cfg.teacher.kind if self.method.uses_teacher else "live"
        compute = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.model.dtype)
        shard = (lambda m: parallel.shard(m, compute)) if self.sharded else None
        # before the student is sharded: a full teacher copy is made from its whole weights and sharded
        # alike; a LoRA EMA teacher adds its adapter to the student
        self.teacher = build_teacher(teacher_kind, cfg.teacher.update_rate, model, self.share_prefix, shard)
        # π_init for the KL metric (log.kl_every): a frozen teacher is it; else the base under LoRA, or a copy
        self.initial = None
        if cfg.log.kl_every:
            self.initial = self.teacher if self.teacher.kind == "frozen" else \
                build_teacher("frozen", 0.0, model, self.share_prefix, shard)
        if self.sharded:
            model = shard(model)
        # every pass shares prompt prefixes, the update's too: there, one forward of each distinct prompt and one
        # of the responses through its cache before one backward, sharded or not (tests/test_fsdp.py: sharded
        # equals one process to ~1e-14 in float64; tests/test_scoring.py: shared equals unshared)
        o = cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]  # under FSDP2: this rank's shards
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        # DDP through accelerate; a sharded model is ours (FSDP2 reduce-scatters its own gradients)
        self.model, self.optimizer = (model, optimizer) if self.sharded else self.acc.prepare(model, optimizer)
        self.scorer = TeacherScorer(self.teacher, self.unwrapped, cfg.rollout.temperature, cfg.optim.micro_batch)
        self.engine = build_engine(cfg.rollout.backend, self.unwrapped, self.tok)  # credit.rollout.ENGINES
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.pad_id = self.tok.pad_token_id
        self.start_step = self.skipped_steps = 0

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        frac = (step - o.warmup_steps) / max(1, self.cfg.steps * o.epochs * o.mini_batches - o.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[o.schedule]

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    # ---- 1-5: rollout, outcomes, teacher contexts and negatives, the method's targets

    def collect(self, step: int) -> tuple[StepBatch, Targets, dict, list[dict]]:
        cfg, c = self.cfg, self.cfg.credit
        world, rank = self.acc.num_processes, self.acc.process_index
        if cfg.rollout.prompts_per_step % world:
            raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must divide by {world} processes")
        metrics: dict[str, float] = {}

        # 1. prompts: the global batch is known to every process; each samples its own slice
        examples = step_prompts(self.train_split, cfg.rollout.prompts_per_step, cfg.seed, step)
        per_rank = len(examples) // world
        local = list(range(rank * per_rank, (rank + 1) * per_rank))

        # 2. rollout
        t0 = time.perf_counter()
        sampling = SamplingConfig(
            num_samples=cfg.rollout.samples_per_prompt, max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, stop=tuple(cfg.rollout.stop),
            micro_batch_size=cfg.rollout.micro_batch, backend=cfg.rollout.backend)
        chat = cfg.model.chat_template_kwargs
        prompt_ids = encode_prompts(self.tok, [examples[i].messages for i in local], chat_template_kwargs=chat)
        with parallel.gathered(self.model):  # sharded: whole weights once, then no collective per token
            self.engine.load_weights(self.unwrapped)  # what the last optimizer step (or a resume) wrote
            rollouts = sample(self.engine, self.tok, prompt_ids, sampling,
                              generator=_torch_gen(cfg.seed, step, f"sample{rank}"))
        metrics.update(rollouts.metrics())
        groups = [local[g] for g in rollouts.group]  # global prompt index of each local rollout

        # 3. outcomes
        t1 = time.perf_counter()
        outcomes = self.task.score_batch([examples[g] for g in groups], rollouts.texts)
        rewards = torch.tensor([o.reward for o in outcomes], dtype=torch.float32)
        feedback = torch.tensor([bool(o.feedback.strip()) for o in outcomes], dtype=torch.float32)
        # every process holds as many rollouts, so the mean of their means is the batch's mean
        task_means = reduce(torch.stack([rewards.mean(), (rewards >= cfg.teacher.success_threshold).float().mean(),
                                         feedback.mean(), rewards.double().pow(2).mean().float()]).to(self.acc.device),
                            reduction="mean").tolist()
        metrics.update(zip(("task/reward_mean", "task/success_fraction", "task/feedback_fraction"), task_means))
        # a collapsing reward spread is what GRPO's advantages and the demos need to be there
        metrics["task/reward_std"] = max(task_means[3] - task_means[0] ** 2, 0.0) ** 0.5
        # each reward function's own mean, when a task combines several (info["rewards"]: what it paid for)
        per_function = [o.info.get("rewards") for o in outcomes]
        if all(isinstance(p, dict) for p in per_function):
            for label in per_function[0]:
                metrics[f"task/reward/{label}"] = sum(float(p[label]) for p in per_function) / len(per_function)
        metrics["perf/score_s"] = time.perf_counter() - t1

        # 4. teacher contexts and negatives (other problems of the global batch)
        t2 = time.perf_counter()
        t = cfg.teacher
        contexts = build_teacher_contexts(
            self.tok, examples, groups, rollouts.texts, outcomes, success_threshold=t.success_threshold,
            dont_reprompt_on_self_success=t.dont_reprompt_on_self_success, strip_thinking=t.strip_thinking,
            include_feedback=t.include_feedback, feedback_only_without_demo=t.feedback_only_without_demo,
            max_context_tokens=t.max_context_tokens, chat_template_kwargs=chat)
        metrics.update(contexts.metrics())
        k = self.method.num_negatives
        negative_contexts, mine = [[] for _ in groups], [[] for _ in groups]
        if k:
            # drawn over the global batch with a shared generator, so every process agrees
            all_groups = [g for g in range(len(examples)) for _ in range(cfg.rollout.samples_per_prompt)]
            drawn = sample_negative_groups(all_groups, k, c.negative_strategy, _rng(cfg.seed, step, "negatives"),
                                           problems=problem_keys(examples))
            mine = drawn[rank * len(groups): (rank + 1) * len(groups)]
            negs = build_negative_contexts(self.tok, examples, groups, contexts, mine, swap=c.swap,
                                           max_context_tokens=t.max_context_tokens, chat_template_kwargs=chat)
            negative_contexts = negs.context_ids
            metrics.update(negs.metrics())
        responses, device = rollouts.response_ids, self.acc.device
        r_len = max(len(y) for y in responses)
        student = pack(rollouts.prompt_ids, responses, self.pad_id, r_len).to(device)
        metrics["perf/context_s"] = time.perf_counter() - t2

        # 5. the method's targets: teacher log-probs, G, advantages (no grad)
        t3 = time.perf_counter()
        old_logp = None
        dtype = torch.float64 if cfg.model.dtype == "float64" else torch.float32
        if self.method.needs_student_logp and not self.off_policy and rollouts.logprobs is not None:
            # ℓS as the engine drew the tokens (continuous): the score's baseline without a forward pass.
            # Off-policy, ℓold is the learner's own forward instead, so the first epoch's ratio is exactly 1.
            old_logp = pad_sequence([torch.tensor(lp, dtype=dtype) for lp in rollouts.logprobs], batch_first=True)
            old_logp = old_logp.to(device)  # (N, R), laid out as the packed responses, 0 after each one's end
        elif self.off_policy or self.method.needs_student_logp:
            with torch.no_grad(), parallel.gathered(self.model):
                old_logp = response_logprobs(self.unwrapped, student, cfg.rollout.temperature, cfg.optim.micro_batch,
                                             share_prefix=self.share_prefix)
        initial_logp = None
        if self.initial is not None and step % cfg.log.kl_every == 0:
            with torch.no_grad(), self.initial.modules(self.unwrapped) as [(initial, _)]:
                initial_logp = response_logprobs(initial, student, cfg.rollout.temperature, cfg.optim.micro_batch,
                                                 share_prefix=self.share_prefix)
        batch = StepBatch(
            student=student,
            teacher=pack(contexts.context_ids, responses, self.pad_id, r_len).to(device),
            negatives=[pack([n[j] if n else c_ for n, c_ in zip(negative_contexts, contexts.context_ids)],
                            responses, self.pad_id, r_len).to(device) for j in range(k)],
            rewards=rewards.to(device, dtype),
            has_signal=torch.tensor(contexts.has_signal, dtype=torch.float32, device=device),
            has_contrast=torch.tensor([len(n) == k > 0 for n in negative_contexts], dtype=torch.float32, device=device),
            group_size=cfg.rollout.samples_per_prompt,
            dtype=dtype,
            old_logp=old_logp,
            initial_logp=initial_logp,
        )
        # the teacher's weights gathered once for all its passes: a rank needs as many forwards as its own
        # rows with a signal (maybe none), and no forward inside the block is a collective
        with self.teacher.gathered(self.unwrapped) if self.method.uses_teacher else contextlib.nullcontext():
            targets = self.method.prepare(batch, self.scorer)
        metrics["perf/teacher_s"] = time.perf_counter() - t3
        metrics["perf/rollout_s"] = t1 - t0
        lc = cfg.log
        logged = self.acc.is_main_process and lc.rollouts_every and step % lc.rollouts_every == 0
        records = rollout_records(self.tok, step, examples, groups, rollouts, outcomes, contexts, negative_contexts,
                                  mine, lc.rollouts_per_step if logged else 0)
        return batch, targets, metrics, records

    @property
    def off_policy(self) -> bool:
        return self.cfg.optim.epochs * self.cfg.optim.mini_batches > 1

    # ---- 6: update

    def update(self, batch: StepBatch, targets: Targets, step: int) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        n = batch.rewards.shape[0]
        world = self.acc.num_processes
        seen = Seen.empty(batch)  # what the first epoch saw, for the metrics
        sums = {"loss": 0.0, "clip": 0.0, "tokens": 0.0}
        finite_steps, grad_norm = 0, 0.0
        gen = _torch_gen(cfg.seed, step, "minibatch")
        for epoch in range(o.epochs):
            order = torch.randperm(n, generator=gen) if o.mini_batches > 1 else torch.arange(n)
            for mb in order.to(batch.rewards.device).chunk(o.mini_batches):
                # global denominators: the same loss whatever the micro-batching or the process count
                tokens, seqs = reduce(torch.stack([self.method.loss_mask(batch, mb).sum(),
                                                   torch.tensor(float(len(mb)), device=batch.rewards.device)]),
                                      reduction="sum")
                norm = tokens if o.loss_aggregation == "token-mean" else seqs
                # no token carries an advantage (no teacher signal anywhere): no backward, no gradient
                micros = mb.split(o.micro_batch) if tokens > 0 else ()
                for i, rows in enumerate(micros):
                    ctx = self.acc.no_sync(self.model) if i < len(micros) - 1 else contextlib.nullcontext()
                    with ctx:
                        packed = batch.student.rows(rows)
                        # an autocast region of its own: autocast keeps the bf16 copy of each fp32 weight until
                        # its outermost region exits, blind to optimizer.step()'s in-place update
                        with self.acc.autocast():
                            hidden = response_hidden(self.model, packed, self.share_prefix)  # (n, R, H), no logits
                            logp = head_token_logprobs(hidden, packed.response_ids, cfg.rollout.temperature)
                            old = batch.old_logp[rows] if self.off_policy else logp.detach()
                            out = self.method.loss(Micro(rows, hidden, logp, old, self.off_policy, epoch == 0),
                                                   batch, targets, self.scorer)
                            if epoch == 0:
                                seen.record(rows, logp, out)
                            loss = obj.aggregate(out.loss, out.mask, o.loss_aggregation, normalizer=norm)
                        # each process's loss is its share of the global mean: DDP averages gradients over
                        # processes (hence × world), FSDP2 sums them (credit.parallel.shard)
                        self.acc.backward(loss if self.sharded else loss * world)
                        sums["loss"] += loss.item()
                        sums["tokens"] += packed.response_mask.sum().item()
                        if out.clipped is not None:
                            sums["clip"] += (out.clipped.float() * packed.response_mask).sum().item()
                grad_norm = self._clip_grad()
                if math.isfinite(grad_norm):
                    self.optimizer.step()
                    self.scheduler.step()
                    finite_steps += 1
                else:  # a NaN/inf never reaches the weights: the step is skipped and counted
                    self.skipped_steps += 1
                self.optimizer.zero_grad(set_to_none=True)
        t_teacher = time.perf_counter()
        if finite_steps:
            self.teacher.update(self.unwrapped)
        t_teacher = time.perf_counter() - t_teacher
        # the sampling policy's ℓ of its tokens: ℓold off-policy, else what the update's forward saw (none when
        # no row carried an advantage anywhere: then the policy/* metrics are not logged)
        sampled = batch.old_logp if self.off_policy else seen.student_logp if seen.scored else None
        mask = batch.student.response_mask
        policy = [0.0, 0.0]  # Σ −ℓ and Σ KL estimate over this process's sampled tokens
        if sampled is not None:
            policy[0] = -float(masked_sum(sampled.double(), mask))
            if batch.initial_logp is not None:  # unbiased for KL(π_θ ‖ π_init) on π_θ's own tokens
                policy[1] = float(masked_sum(sampled_kl(sampled.double(), batch.initial_logp.double()), mask))
        # each process holds its share of the globally normalized loss: the sum is the batch loss (in float64:
        # float32 partial sums would round the logged loss differently for every process count); the policy
        # sums over every process's tokens, so the means are the whole batch's
        shares = torch.tensor([sums["loss"], sums["clip"], sums["tokens"], float(mask.sum()), *policy],
                              dtype=torch.float64, device=self.acc.device)
        totals = reduce(shares, reduction="sum").tolist()
        sums = dict(zip(("loss", "clip", "tokens", "sampled", "entropy", "kl"), totals))
        metrics = {
            "loss/total": sums["loss"] / (o.epochs * o.mini_batches),
            "loss/grad_norm": grad_norm,
            "loss/skipped_steps": float(self.skipped_steps),
            "loss/lr": self.scheduler.get_last_lr()[0],
            "loss/clip_fraction": sums["clip"] / max(sums["tokens"], 1),
            "perf/teacher_update_s": t_teacher,
        }
        if sampled is not None:  # per sampled token, at the sampling temperature; a collapse shows here first
            metrics["policy/entropy"] = sums["entropy"] / max(sums["sampled"], 1)  # −mean ℓ: unbiased
            if batch.initial_logp is not None:
                metrics["policy/kl_initial"] = sums["kl"] / max(sums["sampled"], 1)
        metrics.update(self.method.metrics(batch, targets, seen, parallel.all_rows))  # the whole batch's
        return metrics

    def _clip_grad(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.cfg.optim.grad_clip or float("inf")
        return float(parallel.full(self.acc.clip_grad_norm_(params, max_norm)))  # a DTensor when sharded

    # ---- 7: checkpoints

    def state(self, step: int) -> dict:
        """The training state after ``step``. Sharded, the weights, the teacher's and the optimizer's state are
        not in it: every rank writes its own shards of them (``save_shards``), no rank gathers them."""
        state = {"step": step, "scheduler": self.scheduler.state_dict(), "skipped_steps": self.skipped_steps,
                 "config": self.cfg.model_dump(mode="json"), "world_size": self.acc.num_processes,
                 "parallel": "fsdp" if self.sharded else "ddp"}
        if not self.sharded:
            state.update(model=self.unwrapped.state_dict(), teacher=self.teacher.state_dict(),
                         optimizer=self.optimizer.state_dict())
        return state

    def _sharded_others(self) -> dict[str, torch.nn.Module]:
        teacher = self.teacher.own_weights()  # an EMA's sharded copy; under LoRA its adapter is the student's
        return {"teacher": teacher} if teacher is not None else {}

    def save_shards(self, folder: Path) -> None:
        """This rank's shards of the student, the teacher's copy and AdamW's state into ``folder`` (a collective)."""
        parallel.save_shards(folder, self.unwrapped, self.optimizer, self._sharded_others())

    def load_state(self, state: dict) -> None:
        saved = "fsdp" if state.get("parallel") == "fsdp" else "ddp"  # the optimizer state's layout
        if saved != ("fsdp" if self.sharded else "ddp"):
            # (parallel=fsdp in one process trains unsharded: a sharded run's shards need 2 or more)
            raise UserError(f"this checkpoint was written by a {saved} run with {state.get('world_size', 1)} "
                            f"processes; resume it with parallel={saved}"
                            + (" on 2 or more processes" if saved == "fsdp" else ""))
        if self.sharded:  # each rank reads its own shards
            parallel.load_shards(state["shards"], self.unwrapped, self.optimizer, self._sharded_others())
        else:
            self.unwrapped.load_state_dict(state["model"])
            self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = state["skipped_steps"]
        self.start_step = state["step"] + 1

    def run_step(self, step: int) -> tuple[dict, list[dict]]:
        threads, t0 = self.threads.before_step(), time.perf_counter()
        if self.acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (the head's log-probs) on tensor cores
        # one autocast region for rollout, ℓold and the teacher's passes (no weight changes inside, so its
        # cached bf16 weights serve every decode step); the update opens one per micro-batch (update())
        with self.acc.autocast(), parallel.stage(f"step {step}: rollout and teacher passes"):
            batch, targets, metrics, records = self.collect(step)
        t1 = time.perf_counter()
        with parallel.stage(f"step {step}: update"):
            metrics.update(self.update(batch, targets, step))
        metrics["perf/update_s"] = time.perf_counter() - t1
        metrics.update(self.scorer.pop_seconds())
        metrics["perf/step_s"] = time.perf_counter() - t0
        metrics["perf/tokens_per_s"] = batch.student.response_mask.sum().item() / metrics["perf/step_s"]
        metrics["perf/threads"] = float(threads)
        return parallel.reduce_metrics(metrics), records  # every rank's numbers, not rank 0's


class _Share:
    """A task whose test split is this process's share: items rank, rank + world, … of the first ``limit``."""

    def __init__(self, task, rank: int, world: int, limit: int | None):
        self.task, self.rank, self.world, self.limit = task, rank, world, limit

    def examples(self, split: str) -> list[Example]:
        return self.task.examples(split)[: self.limit][self.rank:: self.world]

    def __getattr__(self, name: str):
        return getattr(self.task, name)


def evaluate_model(trainer: Trainer) -> dict:
    """Held-out evaluation; with several processes each scores its share of the items from gathered
    weights, and the shares are merged (every process returns the same result)."""
    cfg, acc = trainer.cfg, trainer.acc
    world = acc.num_processes
    task = _Share(trainer.task, acc.process_index, world, cfg.eval.limit) if world > 1 else trainer.task
    result = None
    with parallel.stage("evaluation"), parallel.gathered(trainer.model):
        if world == 1 or task.examples("test"):  # one process: evaluate() names an empty split itself
            result = evaluate(trainer.unwrapped, trainer.tok, task, split="test", n=cfg.eval.samples,
                              temperature=cfg.eval.temperature,
                              max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                              batch_size=cfg.rollout.micro_batch, seed=cfg.seed,
                              limit=None if world > 1 else cfg.eval.limit,
                              chat_template_kwargs=cfg.model.chat_template_kwargs, backend=cfg.rollout.backend)
        if world == 1:
            return result
        shares = [None] * world
        torch.distributed.all_gather_object(shares, result)
    if all(s is None for s in shares):
        raise UserError(f"task '{cfg.task.name}' has no held-out (test) examples to evaluate")
    return merge_shares(shares)


def train(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False) -> dict:
    """Run a whole training job; returns the summary written to ``out_dir/summary.json`` (``train_run``)."""
    return train_run(cfg, resume, overwrite)[0]


def train_run(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False, task=None) -> tuple[dict, Trainer]:
    """Run a whole training job; returns the summary written to ``out_dir/summary.json`` and the trainer
    (its model is the trained student). ``task``: a task object built from ``cfg.task`` with what a
    config cannot hold (``credit.fit``'s reward callables).

    ``resume``: True continues the run in out_dir from its checkpoint, a path continues from that
    checkpoint file (or run directory); ``overwrite`` replaces the run in out_dir. Without either, a
    directory that holds a run is refused. What may change at resume, and how Ctrl-C and SIGTERM stop
    a run with a checkpoint, is decided in ``credit.runs``.
    """
    run = runs.Run(cfg, resume, overwrite)  # before any model loads: out_dir, the resume and its config
    trainer = Trainer(cfg, task=task)
    run.start(trainer)  # --overwrite, the checkpoint's state and RNG, logs, config.yaml
    with runs.Interrupts() as interrupts:
        run.evaluate_before(evaluate_model, interrupts)
        for step in run.steps():
            metrics, records = trainer.run_step(step)
            run.end_step(step, metrics, records, evaluate_model, interrupts)  # eval, logs, checkpoint, a stop
    return run.finish(evaluate_model), trainer
