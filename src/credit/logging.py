"""Where a run's numbers go: ``metrics.jsonl`` (always), TensorBoard (default), W&B (when asked),
``rollouts.jsonl`` (sampled rollouts with their teacher contexts), and a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from credit.config import TrainConfig


class RunLogger:
    def __init__(self, out: Path, cfg: TrainConfig, main: bool, start_step: int = 0):
        self.out, self.cfg, self.main = Path(out), cfg, main
        self.t0 = time.time()
        self.bar = None
        self.tb = self.wandb = None
        if not main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        # a resumed run drops what the crashed run logged after its last checkpoint
        for name in ("metrics.jsonl", "rollouts.jsonl"):
            path = self.out / name
            if path.exists():
                keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < start_step]
                path.write_text("".join(ln + "\n" for ln in keep))
        self.metrics_file = open(self.out / "metrics.jsonl", "a")
        self.rollouts_file = open(self.out / "rollouts.jsonl", "a")
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        if cfg.log.wandb:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("log.wandb=true needs `pip install wandb`") from None
            self.wandb = wandb.init(project="credit", dir=str(self.out), config=cfg.model_dump(mode="json"))

    def progress(self, steps, total: int, start: int):
        if not self.main or not self.cfg.log.progress:
            return steps
        self.bar = tqdm(steps, total=total, initial=start, desc=self.cfg.method, dynamic_ncols=True)
        return self.bar

    def log(self, step: int, metrics: dict, records: list[dict] = ()) -> None:
        if not self.main:
            return
        row = {"step": step, "time_s": round(time.time() - self.t0, 3), **metrics}
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        for r in records:
            self.rollouts_file.write(json.dumps(r) + "\n")
        self.rollouts_file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
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
