"""``credit train``: the on-policy loop of SPEC.md §1, one code path for GRPO, SDPO and CREDIT.

Each step, in the order the data flows:
  1. prompts   B examples of the train split; the order is fixed by (seed, step)
  2. rollout   G samples per prompt from the student
  3. tasks     every rollout -> Outcome(reward, feedback)
  4. teacher   contexts c (demo and/or feedback), CREDIT's negatives c^(k), teacher log-probs
  5. update    credit mode -> per-token loss -> the one aggregation -> AdamW (epochs × mini-batches)
  6. teacher   θ_T update, metrics, sampled rollouts, atomic checkpoint

Where it departs from the SDPO reference code (on purpose):
  - the teacher context is truncated in the demo and the feedback, never in the problem statement;
  - teacher (and negative) forward passes run only for rollouts that have a teacher signal;
  - every random draw of a step (prompts, sampling, negatives, mini-batch order) is seeded by
    (seed, step), so a run resumed from a checkpoint continues exactly as the uninterrupted one;
  - with fewer than two prompt groups CREDIT cannot contrast: the config refuses it before any model
    loads, and every step reports ``credit/contrast_possible`` from the negatives it built.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import reduce

from credit import checkpoint, signal
from credit import objectives as obj
from credit.config import TrainConfig, dump
from credit.evaluate import evaluate, headline
from credit.rollout import SamplingConfig, encode_prompts, sample
from credit.scoring import Packed, pack, response_logits, response_logprobs
from credit.signal import token_logprobs
from credit.tasks import Example, build_task
from credit.teacher import build_negative_contexts, build_teacher_contexts, sample_negative_groups
from credit.teacher.weights import Teacher


# ----------------------------------------------------------------------------- what one step produces


@dataclass
class StepBatch:
    """Everything the update needs; row n is rollout n of this process (N rows, R response columns)."""

    student: Packed  # (x, y)
    teacher: Packed  # (c, y)
    negatives: list[Packed]  # K packs of (c^(k), y); rows without a teacher signal repeat c
    rewards: torch.Tensor  # (N,)
    has_signal: torch.Tensor  # (N,) 1.0 where the teacher has demo or feedback
    grpo_adv: torch.Tensor  # (N,) group-normalized reward
    teacher_logp: torch.Tensor | None = None  # (N, R) ℓT, token/sequence modes
    generic_logp: torch.Tensor | None = None  # (N, R) G, CREDIT token/sequence modes
    seq_adv: torch.Tensor | None = None  # (N,) sequence mode
    old_logp: torch.Tensor | None = None  # (N, R) ℓold, off-policy updates


def _rng(seed: int, step: int, stream: str) -> random.Random:
    return random.Random(f"{seed}/{step}/{stream}")


def _torch_gen(seed: int, step: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(_rng(seed, step, stream).getrandbits(62))


def step_prompts(train: list[Example], batch: int, seed: int, step: int) -> list[Example]:
    """Epoch-wise shuffled order: step s takes items s·B .. s·B+B−1 of the concatenated permutations."""
    out = []
    for i in range(step * batch, step * batch + batch):
        epoch, pos = divmod(i, len(train))
        order = list(range(len(train)))
        _rng(seed, epoch, "order").shuffle(order)
        out.append(train[order[pos]])
    return out


# ----------------------------------------------------------------------------- teacher scoring


@torch.no_grad()
def _score_pairs(teacher: Teacher, model, packed: Packed, temperature: float, micro: int) -> torch.Tensor:
    """ℓ of the response tokens under the teacher for each packed row: (M, R)."""
    parts = []
    for s in range(0, packed.input_ids.shape[0], micro):
        rows = packed.rows(slice(s, s + micro))
        parts.append(token_logprobs(teacher.response_logits(model, rows), rows.response_ids, temperature))
    return torch.cat(parts) if parts else torch.zeros(0, packed.response_len)


def score_teacher(teacher, model, batch: StepBatch, k: int, aggregator: str, temperature: float, micro: int):
    """ℓT and G for the rows with a signal, one batched pass; zeros elsewhere. -> (N, R), (N, R) | None."""
    n, r = batch.student.response_ids.shape
    active = batch.has_signal.nonzero().squeeze(-1)
    teacher_logp = torch.zeros(n, r, device=batch.student.input_ids.device)
    generic = torch.zeros_like(teacher_logp) if k else None
    if active.numel() == 0:
        return teacher_logp, generic
    packs = [batch.teacher.rows(active)] + [neg.rows(active) for neg in batch.negatives]
    joined = Packed(*(_cat_padded([getattr(p, f) for p in packs], f) for f in Packed.__dataclass_fields__))
    logp = _score_pairs(teacher, model, joined, temperature, micro).view(1 + k, active.numel(), r)
    teacher_logp[active] = logp[0]
    if k:
        generic[active] = signal.generic_part(logp[1:].transpose(0, 1), aggregator)
    return teacher_logp, generic


def _cat_padded(tensors: list[torch.Tensor], field: str) -> torch.Tensor:
    """Concatenate packs whose context widths differ: left-pad the (N, C+R) fields to one width."""
    if field in ("response_ids", "response_mask"):
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0)) for t in tensors])


# ----------------------------------------------------------------------------- credit modes


@dataclass
class Micro:
    """One micro-batch of the update: the student's forward with gradient and the step's targets."""

    rows: torch.Tensor  # (n,) row indices into the StepBatch
    logits: torch.Tensor  # (n, R, V) student logits (grad)
    logp: torch.Tensor  # (n, R) ℓS (grad)
    old_logp: torch.Tensor  # (n, R) ℓold
    off_policy: bool


def token_credit(m: Micro, b: StepBatch, cfg: TrainConfig, teacher: Teacher, model, lam: float) -> torch.Tensor:
    """SDPO/CREDIT token mode: −sg(r^λ_t)·w_t·ℓS_t, r^λ = (1−λ)ΔV + λS (optionally reward-to-go, clipped)."""
    c, mask = cfg.credit, b.student.response_mask[m.rows]
    t_lp = b.teacher_logp[m.rows]
    dv = signal.delta_v(t_lp, m.logp.detach())
    spec = dv if b.generic_logp is None else signal.specific_part(t_lp, b.generic_logp[m.rows])
    adv = signal.credit_reward(dv, spec, lam)
    if c.reward_to_go:
        adv = signal.reward_to_go(adv, mask, c.gamma)
    adv = signal.clip_advantage(adv, c.clip_advantage)
    weight = obj.importance_weight(m.logp, m.old_logp, cfg.optim.is_clip) if m.off_policy else None
    return obj.reinforce_loss(m.logp, adv, weight)


def logit_credit(m: Micro, b: StepBatch, cfg: TrainConfig, teacher: Teacher, model, lam: float) -> torch.Tensor:
    """SDPO logit mode D_α(p_S, p_T) or CREDIT's −Σ_v p_S(v)·sg(A(v)) on the student's top-K (+ tail)."""
    c, temp = cfg.credit, cfg.rollout.temperature
    index = obj.topk_index(m.logits, c.top_k) if c.top_k else None
    student = obj.support_logprobs(m.logits, index, temp, c.tail)
    teacher_sup = obj.support_logprobs(teacher.response_logits(model, b.teacher.rows(m.rows)), index, temp, c.tail)
    if lam > 0:
        negs = torch.stack([obj.support_logprobs(teacher.response_logits(model, neg.rows(m.rows)), index, temp, c.tail)
                            for neg in b.negatives], dim=1)  # (n, K, R, U)
        generic = signal.AGGREGATORS[c.aggregator](negs)
        loss = obj.credit_logit_loss(student, teacher_sup, generic, lam)
    else:
        loss = obj.divergence(student, teacher_sup, c.alpha)
    if m.off_policy:
        loss = loss * obj.importance_weight(m.logp, m.old_logp, cfg.optim.is_clip)
    return loss


def sequence_credit(m: Micro, b: StepBatch, cfg: TrainConfig, teacher: Teacher, model, lam: float) -> torch.Tensor:
    """Sequence mode: the group-normalized contrastive score Σ_t S_t broadcast to every token."""
    adv = b.seq_adv[m.rows, None].expand_as(m.logp)
    weight = obj.importance_weight(m.logp, m.old_logp, cfg.optim.is_clip) if m.off_policy else None
    return obj.reinforce_loss(m.logp, adv, weight)


CREDIT_MODES = {"token": token_credit, "logits": logit_credit, "sequence": sequence_credit}


def grpo_loss(m: Micro, b: StepBatch, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Outcome RL: PPO-clipped surrogate with the group-normalized reward. -> (loss, clipped) (n, R)."""
    adv = b.grpo_adv[m.rows, None].expand_as(m.logp)
    return obj.ppo_clip_loss(m.logp, m.old_logp, adv, cfg.optim.eps_low, cfg.optim.eps_high)


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """Builds everything from a validated config, then ``run()`` trains; ``run_step`` is one step."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator | None = None):
        from credit.models import load_model

        self.cfg = cfg
        self.acc = accelerator or Accelerator(cpu=cfg.device == "cpu")
        self.out = Path(cfg.out_dir)
        if self.acc.num_processes > 1 and cfg.method == "credit" and cfg.credit.swap == "context":
            raise ValueError("credit.swap=context needs every prompt group's teacher context in one process; "
                             "use credit.swap=input with several processes")
        self.task = build_task(cfg.task.name, **cfg.task.options)
        self.train_split = self.task.examples("train")
        if not self.train_split:
            raise ValueError(f"task '{cfg.task.name}' has no training examples")
        model, self.tok = load_model(cfg.model.name, dtype=cfg.model.dtype, cache_dir=cfg.model.cache_dir)
        if cfg.model.lora is not None:
            from peft import LoraConfig, get_peft_model

            lc = cfg.model.lora
            model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                     target_modules=lc.target_modules, task_type="CAUSAL_LM"))
        model.to(self.acc.device).train()
        # θ_T from the initial weights; GRPO never asks a teacher, so it keeps no copy ("live" holds nothing)
        teacher_kind = "live" if cfg.method == "grpo" else cfg.teacher.kind
        self.teacher = Teacher(teacher_kind, cfg.teacher.update_rate, model, cfg.optim.share_prefix)
        o = cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.pad_id = self.tok.pad_token_id
        self.start_step = 0
        self.skipped_steps = 0

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        frac = (step - o.warmup_steps) / max(1, self.cfg.steps * o.epochs * o.mini_batches - o.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - frac, "cosine": 0.5 * (1 + math.cos(math.pi * frac))}[o.schedule]

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    # ---- 1-4: rollout, outcomes, teacher contexts, scoring

    def collect(self, step: int) -> tuple[StepBatch, dict, list[dict], float]:
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
            micro_batch_size=cfg.rollout.micro_batch)
        prompt_ids = encode_prompts(self.tok, [examples[i].messages for i in local])
        rollouts = sample(self.unwrapped, self.tok, prompt_ids, sampling,
                          generator=_torch_gen(cfg.seed, step, f"sample{rank}"))
        metrics.update(rollouts.metrics())
        groups = [local[g] for g in rollouts.group]  # global prompt index of each local rollout

        # 3. outcomes
        t1 = time.perf_counter()
        outcomes = self.task.score_batch([examples[g] for g in groups], rollouts.texts)
        rewards = torch.tensor([o.reward for o in outcomes], dtype=torch.float32)
        feedback = torch.tensor([bool(o.feedback.strip()) for o in outcomes], dtype=torch.float32)
        task_means = reduce(torch.stack([rewards.mean(), (rewards >= cfg.teacher.success_threshold).float().mean(),
                                         feedback.mean()]).to(self.acc.device), reduction="mean").tolist()
        metrics.update(zip(("task/reward_mean", "task/success_fraction", "task/feedback_fraction"), task_means))
        metrics["perf/score_s"] = time.perf_counter() - t1

        # 4. teacher contexts and negatives
        t2 = time.perf_counter()
        t = cfg.teacher
        contexts = build_teacher_contexts(
            self.tok, examples, groups, rollouts.texts, outcomes, success_threshold=t.success_threshold,
            dont_reprompt_on_self_success=t.dont_reprompt_on_self_success, strip_thinking=t.strip_thinking,
            include_feedback=t.include_feedback, feedback_only_without_demo=t.feedback_only_without_demo,
            max_context_tokens=t.max_context_tokens)
        metrics.update(contexts.metrics())
        lam, k = self._lam_and_k()
        negative_contexts, mine = [[] for _ in groups], [[] for _ in groups]
        if k:
            # drawn over the global batch with a shared generator, so every process agrees
            all_groups = [g for g in range(len(examples)) for _ in range(cfg.rollout.samples_per_prompt)]
            drawn = sample_negative_groups(all_groups, c.num_negatives, c.negative_strategy,
                                           _rng(cfg.seed, step, "negatives"))
            mine = drawn[rank * len(groups): (rank + 1) * len(groups)]
            negs = build_negative_contexts(self.tok, examples, groups, contexts, mine, swap=c.swap,
                                           max_context_tokens=t.max_context_tokens)
            negative_contexts = negs.context_ids
            metrics.update(negs.metrics())
        r_len = max(len(y) for y in rollouts.response_ids)
        responses = rollouts.response_ids
        device = self.acc.device
        batch = StepBatch(
            student=pack(rollouts.prompt_ids, responses, self.pad_id, r_len).to(device),
            teacher=pack(contexts.context_ids, responses, self.pad_id, r_len).to(device),
            negatives=[pack([n[j] if n else c_ for n, c_ in zip(negative_contexts, contexts.context_ids)],
                            responses, self.pad_id, r_len).to(device) for j in range(k)],
            rewards=rewards.to(device),
            has_signal=torch.tensor(contexts.has_signal, dtype=torch.float32, device=device),
            grpo_adv=signal.group_advantages(rewards, cfg.rollout.samples_per_prompt, c.grpo_scale_std).to(device),
        )
        metrics["perf/context_s"] = time.perf_counter() - t2

        # teacher scoring once per step (logit mode scores inside the update, on the student's top-K)
        t3 = time.perf_counter()
        needs_teacher = cfg.method != "grpo" and (c.mode != "logits")
        if needs_teacher:
            batch.teacher_logp, batch.generic_logp = score_teacher(
                self.teacher, self.unwrapped, batch, k, c.aggregator, cfg.rollout.temperature, cfg.optim.micro_batch)
        if cfg.method == "credit" and c.mode == "sequence":
            s = signal.specific_part(batch.teacher_logp, batch.generic_logp if k else batch.teacher_logp)
            score = signal.sequence_sum(s, batch.student.response_mask)
            if c.sequence_length_normalize:
                score = score / batch.student.response_mask.sum(-1).clamp(min=1)
            batch.seq_adv = signal.group_advantages(score.cpu(), cfg.rollout.samples_per_prompt).to(device)
        if cfg.optim.epochs * cfg.optim.mini_batches > 1:
            with torch.no_grad():
                batch.old_logp = response_logprobs(self.unwrapped, batch.student, cfg.rollout.temperature,
                                                   cfg.optim.micro_batch, share_prefix=cfg.optim.share_prefix)
        metrics["perf/teacher_s"] = time.perf_counter() - t3
        metrics["perf/rollout_s"] = t1 - t0
        records = self._records(step, examples, groups, rollouts, outcomes, contexts, negative_contexts, mine)
        return batch, metrics, records, lam

    def _lam_and_k(self) -> tuple[float, int]:
        """λ and K of this run; the config already refuses CREDIT with fewer than two prompt groups."""
        cfg = self.cfg
        if cfg.method != "credit":
            return 0.0, 0
        k = cfg.rollout.prompts_per_step - 1 if cfg.credit.negative_strategy == "all" else cfg.credit.num_negatives
        return cfg.credit.lam, k

    # ---- 5: update

    def update(self, batch: StepBatch, lam: float, step: int) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        n = batch.rewards.shape[0]
        off_policy = o.epochs * o.mini_batches > 1
        w = 1.0 if cfg.method == "grpo" else cfg.credit.grpo_weight
        sd_fn = CREDIT_MODES[cfg.credit.mode]
        world = self.acc.num_processes
        seen_logp = torch.zeros_like(batch.student.response_mask)
        sums = {"loss": 0.0, "clip": 0.0, "tokens": 0.0}
        finite_steps = 0
        gen = _torch_gen(cfg.seed, step, "minibatch")
        for epoch in range(o.epochs):
            order = torch.randperm(n, generator=gen) if o.mini_batches > 1 else torch.arange(n)
            for mb in order.to(batch.rewards.device).chunk(o.mini_batches):
                mask = batch.student.response_mask[mb]
                sd_mask = mask * batch.has_signal[mb, None]
                # global denominators: the same loss whatever the micro-batching or the process count
                norms = reduce(torch.stack([mask.sum(), sd_mask.sum(), torch.tensor(float(len(mb)), device=mask.device)]),
                               reduction="sum")
                tok_norm = norms[0] if o.loss_aggregation == "token-mean" else norms[2]
                sd_norm = norms[1] if o.loss_aggregation == "token-mean" else norms[2]
                micros = mb.split(o.micro_batch)
                for i, rows in enumerate(micros):
                    ctx = self.acc.no_sync(self.model) if i < len(micros) - 1 else contextlib.nullcontext()
                    with ctx:
                        packed = batch.student.rows(rows)
                        logits = response_logits(self.model, packed, o.share_prefix)
                        logp = token_logprobs(logits, packed.response_ids, cfg.rollout.temperature)
                        old = batch.old_logp[rows] if off_policy else logp.detach()
                        m = Micro(rows, logits, logp, old, off_policy)
                        mmask = batch.student.response_mask[rows]
                        loss = torch.zeros((), device=logp.device)
                        if w > 0:
                            g_loss, clipped = grpo_loss(m, batch, cfg)
                            loss = loss + w * obj.aggregate(g_loss, mmask, o.loss_aggregation, normalizer=tok_norm.clamp(min=1))
                            sums["clip"] += signal.masked_sum(clipped.float(), mmask).item()
                        if w < 1 and norms[1] > 0:
                            sd = sd_fn(m, batch, cfg, self.teacher, self.unwrapped, lam)
                            smask = mmask * batch.has_signal[rows, None]
                            loss = loss + (1 - w) * obj.aggregate(sd, smask, o.loss_aggregation,
                                                                  normalizer=sd_norm.clamp(min=1))
                        if loss.requires_grad:  # False only when no rollout of the batch has a teacher signal
                            self.acc.backward(loss * world)  # DDP averages gradients over processes
                        sums["loss"] += loss.item()
                        sums["tokens"] += mmask.sum().item()
                        if epoch == 0:
                            seen_logp[rows] = logp.detach()
                grad_norm = self._clip_grad()
                if math.isfinite(grad_norm):
                    self.optimizer.step()
                    self.scheduler.step()
                    finite_steps += 1
                else:  # a NaN/inf never reaches the weights: the step is skipped and counted
                    self.skipped_steps += 1
                self.optimizer.zero_grad(set_to_none=True)
        if finite_steps:
            self.teacher.update(self.unwrapped)
        # each process holds its share of the globally normalized loss: the sum is the batch loss
        totals = reduce(torch.tensor([sums["loss"], sums["clip"], sums["tokens"]], device=self.acc.device),
                        reduction="sum").tolist()
        sums = dict(zip(("loss", "clip", "tokens"), totals))
        metrics = {
            "loss/total": sums["loss"] / (o.epochs * o.mini_batches),
            "loss/grad_norm": grad_norm,
            "loss/skipped_steps": float(self.skipped_steps),
            "loss/lr": self.scheduler.get_last_lr()[0],
        }
        if w > 0:
            metrics["loss/clip_fraction"] = sums["clip"] / max(sums["tokens"], 1)
        metrics.update(self._signal_metrics(batch, seen_logp))
        return metrics

    def _clip_grad(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.cfg.optim.grad_clip or float("inf")
        return float(self.acc.clip_grad_norm_(params, max_norm))

    def _signal_metrics(self, b: StepBatch, student_logp: torch.Tensor) -> dict:
        """signal/*: ΔV, S, G over tokens of rollouts with a teacher signal (token/sequence modes)."""
        if b.teacher_logp is None:
            return {}
        mask = b.student.response_mask * b.has_signal[:, None]
        if not mask.any():
            return {"signal/active_fraction": 0.0}
        dv = signal.delta_v(b.teacher_logp, student_logp)
        pmi = signal.sequence_sum(dv, mask)
        active = b.has_signal.bool()
        out = {
            "signal/active_fraction": active.float().mean().item(),
            "signal/dv_mean": signal.masked_mean(dv, mask).item(),
            "signal/dv_std": signal.masked_std(dv, mask).item(),
            "signal/pmi_mean": pmi[active].mean().item(),
        }
        if active.sum() > 1 and b.rewards[active].std() > 0 and pmi[active].std() > 0:
            out["signal/pmi_reward_corr"] = torch.corrcoef(torch.stack([pmi[active], b.rewards[active]]))[0, 1].item()
        if b.generic_logp is not None:
            s = signal.specific_part(b.teacher_logp, b.generic_logp)
            out.update({
                "signal/s_mean": signal.masked_mean(s, mask).item(),
                "signal/s_std": signal.masked_std(s, mask).item(),
                "signal/g_mean": signal.masked_mean(b.generic_logp, mask).item(),
                "signal/contrastive_mean": signal.sequence_sum(s, mask)[active].mean().item(),
                "signal/s_negative_fraction": signal.masked_mean((s < 0).float(), mask).item(),
            })
        return out

    # ---- 6: logging, checkpoints

    def _records(self, step, examples, groups, rollouts, outcomes, contexts, negative_contexts, negative_groups):
        lc = self.cfg.log
        if not lc.rollouts_every or step % lc.rollouts_every or not self.acc.is_main_process:
            return []
        out = []
        for i in range(min(lc.rollouts_per_step, len(groups))):
            out.append({
                "step": step, "prompt_messages": examples[groups[i]].messages, "response": rollouts.texts[i],
                "response_ids": rollouts.response_ids[i], "reward": outcomes[i].reward, "feedback": outcomes[i].feedback,
                "has_signal": contexts.has_signal[i], "teacher_context_ids": contexts.context_ids[i],
                "teacher_context": self.tok.decode(contexts.context_ids[i]),
                "demo": contexts.privileged[i].demo, "negative_context_ids": negative_contexts[i],
                "negative_prompts": [examples[j].messages for j in negative_groups[i]],
            })
        return out

    def state(self, step: int) -> dict:
        return {
            "step": step, "model": self.unwrapped.state_dict(), "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "skipped_steps": self.skipped_steps, "config": self.cfg.model_dump(mode="json"),
        }

    def load_state(self, state: dict) -> None:
        self.unwrapped.load_state_dict(state["model"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = state["skipped_steps"]
        self.start_step = state["step"] + 1

    def run_step(self, step: int) -> tuple[dict, list[dict]]:
        t0 = time.perf_counter()
        batch, metrics, records, lam = self.collect(step)
        t1 = time.perf_counter()
        metrics.update(self.update(batch, lam, step))
        metrics["perf/update_s"] = time.perf_counter() - t1
        metrics["perf/step_s"] = time.perf_counter() - t0
        metrics["perf/tokens_per_s"] = batch.student.response_mask.sum().item() / metrics["perf/step_s"]
        return metrics, records


def evaluate_model(trainer: Trainer) -> dict:

    cfg = trainer.cfg
    return evaluate(trainer.unwrapped, trainer.tok, trainer.task, split="test", n=cfg.eval.samples,
                    temperature=cfg.eval.temperature, max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                    batch_size=cfg.rollout.micro_batch, seed=cfg.seed, limit=cfg.eval.limit)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run a whole training job; returns the summary written to ``out_dir/summary.json``."""
    from credit.logging import RunLogger

    trainer = Trainer(cfg)
    out = trainer.out
    state = checkpoint.load(out) if resume else None
    if state is not None:
        trainer.load_state(state)
    elif resume:
        trainer.acc.print(f"--resume: no checkpoint in {out}, starting fresh")
    logger = RunLogger(out, cfg, trainer.acc.is_main_process, start_step=trainer.start_step)
    if trainer.acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump(cfg))
    summary = json.loads((out / "summary.json").read_text()) if state is not None and (out / "summary.json").exists() else {}
    t_start = time.perf_counter()
    if cfg.eval.before and "eval_before" not in summary:
        summary["eval_before"] = evaluate_model(trainer)
        logger.log(trainer.start_step, {f"eval/{k}": v for k, v in headline(summary["eval_before"]).items()})
        _write_summary(out, summary, trainer)
    for step in logger.progress(range(trainer.start_step, cfg.steps), cfg.steps, trainer.start_step):
        metrics, records = trainer.run_step(step)
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.steps:
            metrics.update({f"eval/{k}": v for k, v in headline(evaluate_model(trainer)).items()})
        logger.log(step, metrics, records)
        if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == cfg.steps:
            trainer.acc.wait_for_everyone()
            if trainer.acc.is_main_process:
                checkpoint.save(out, trainer.state(step))
    summary["eval_after"] = evaluate_model(trainer)
    logger.log(cfg.steps, {f"eval/{k}": v for k, v in headline(summary["eval_after"]).items()})
    summary["train_wall_s"] = summary.get("train_wall_s", 0.0) + time.perf_counter() - t_start
    summary["skipped_steps"] = trainer.skipped_steps
    _write_summary(out, summary, trainer)
    if trainer.acc.is_main_process:
        trainer.unwrapped.save_pretrained(out / "final")
        trainer.tok.save_pretrained(out / "final")
    logger.close()
    return summary


def _write_summary(out: Path, summary: dict, trainer: Trainer) -> None:
    if trainer.acc.is_main_process:
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out / "summary.json")
