"""Where a run's numbers go: ``metrics.jsonl`` (always), TensorBoard (default), W&B (when asked),
``rollouts.jsonl`` (sampled rollouts with their teacher contexts), and a progress bar."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from credit.config import TrainConfig
from credit.errors import UserError
from credit.runs import trim_jsonl


class RunLogger:
    def __init__(self, out: Path, cfg: TrainConfig, main: bool, start_step: int = 0):
        self.out, self.cfg, self.main = Path(out), cfg, main
        self.t0 = time.time()
        self.bar = None
        self.tb = self.wandb = None
        if not main:
            return
        if cfg.log.wandb:  # a missing package is found before any file is made
            require_wandb()
        self.out.mkdir(parents=True, exist_ok=True)
        # a resumed run drops what the crashed run logged after its last checkpoint (and a torn last line)
        for name in ("metrics.jsonl", "rollouts.jsonl"):
            trim_jsonl(self.out / name, start_step)
        self.metrics_file = _Appender(self.out / "metrics.jsonl")
        self.rollouts_file = _Appender(self.out / "rollouts.jsonl")
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        if cfg.log.wandb:
            self.wandb = _wandb_run(self.out, cfg, resumed=start_step > 0)

    def progress(self, steps, total: int, start: int):
        if not self.main or not self.cfg.log.progress:
            return steps
        self.bar = tqdm(steps, total=total, initial=start, desc=self.cfg.method, dynamic_ncols=True)
        return self.bar

    def log(self, step: int, metrics: dict, records: list[dict] = ()) -> None:
        if not self.main:
            return
        row = {"step": step, "time_s": round(time.time() - self.t0, 3), **metrics}
        self.metrics_file.write([json.dumps(row) + "\n"])
        self.rollouts_file.write([json.dumps(r) + "\n" for r in records])
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            if records:  # what the model wrote, beside its numbers
                self.tb.add_text("rollouts", samples_markdown(records), step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.bar is not None and "task/reward_mean" in metrics:
            self.bar.set_postfix(reward=f"{metrics['task/reward_mean']:.3f}", step_s=f"{metrics.get('perf/step_s', 0):.1f}")

    def close(self) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics_file.close()
        self.rollouts_file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class _Appender:
    """A jsonl file the run appends to, that stays the run's own: if something replaces or removes the
    file while the run is live (a ``git stash`` or checkout of a committed copy, a sync tool), the next
    write puts back everything this run wrote (still readable through the open file) at the path,
    atomically, and carries on there, instead of writing on into a file no path names any more."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a+")

    def write(self, lines: list[str]) -> None:
        try:
            replaced = os.stat(self.path).st_ino != os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            replaced = True
        if replaced:
            self.file.flush()
            self.file.seek(0)
            tmp = self.path.with_name(f".{self.path.name}.restore")
            tmp.write_text(self.file.read())
            os.replace(tmp, self.path)
            self.file.close()
            self.file = open(self.path, "a+")
        self.file.write("".join(lines))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def require_wandb():
    """The wandb module, or a one-line error saying how to get it. ``log.wandb`` is an optional
    integration: call this before the model loads (config time), not after minutes of loading."""
    try:
        import wandb
    except ImportError:
        raise UserError("log.wandb=true needs the wandb package: `pip install wandb` (or set log.wandb=false)") from None
    return wandb


def _wandb_run(out: Path, cfg: TrainConfig, resumed: bool):
    """A W&B run named after the config; its id is kept in ``out/wandb-run-id`` so that ``--resume``
    continues the same W&B run instead of starting a second one."""
    wandb = require_wandb()
    lc = cfg.log
    id_file = out / "wandb-run-id"
    run_id = id_file.read_text().strip() if resumed and id_file.is_file() else None
    run = wandb.init(project=lc.wandb_project, entity=lc.wandb_entity, name=lc.wandb_run_name or out.name,
                     tags=list(lc.wandb_tags) or None, dir=str(out), config=cfg.model_dump(mode="json"),
                     id=run_id, resume="allow" if run_id else None)
    if getattr(run, "id", None):
        id_file.write_text(str(run.id))
    return run


def samples_markdown(records: list[dict]) -> str:
    """Sampled rollouts as a Markdown table for TensorBoard's text tab: prompt, response, reward, feedback."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")[:500]

    rows = ["| prompt | response | reward | feedback |", "|---|---|---|---|"]
    for r in records:
        prompt = r["prompt_messages"][-1]["content"] if r.get("prompt_messages") else ""
        rows.append(f"| {cell(prompt)} | {cell(r['response'])} | {r['reward']:.3g} | {cell(r['feedback'])} |")
    return "\n".join(rows)


def rollout_records(tokenizer, step, examples, groups, rollouts, outcomes, contexts, negative_contexts,
                    negative_groups, count: int) -> list[dict]:
    """The first ``count`` rollouts of a step as ``rollouts.jsonl`` records: prompt, response ids, reward,
    feedback, the teacher context it was scored under and its negative prompts (``credit explain`` reads them)."""
    return [{
        "step": step, "prompt_messages": examples[groups[i]].messages, "response": rollouts.texts[i],
        "response_ids": rollouts.response_ids[i], "reward": outcomes[i].reward, "feedback": outcomes[i].feedback,
        "has_signal": contexts.has_signal[i], "teacher_context_ids": contexts.context_ids[i],
        "teacher_context": tokenizer.decode(contexts.context_ids[i]), "demo": contexts.privileged[i].demo,
        "negative_context_ids": negative_contexts[i],
        "negative_prompts": [examples[j].messages for j in negative_groups[i]],
    } for i in range(min(count, len(groups)))]
