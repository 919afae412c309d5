"""A run directory a researcher can trust: never overwritten by accident, resumed only under a config
that can continue it, and stopped by Ctrl-C or SIGTERM with a checkpoint instead of a traceback.

``train()`` reads the lifecycle as a few calls of ``Run`` (at the end of this module), which uses, in order:
  1. ``prepare_run_dir``   an existing run (a logged line in metrics.jsonl, checkpoint.pt or summary.json)
                           is refused unless ``--resume`` or ``--overwrite`` says what to do with it, and
                           an out_dir that cannot be written is named, before any model loads;
  2. ``load_resume``       the checkpoint to continue from (``--resume`` or ``--resume PATH``);
  3. ``reconcile``         the saved config against the new one: what cannot apply is refused, the
                           rest is applied and listed (``optim.lr/betas/weight_decay`` are restored
                           with the optimizer's state, so ``apply_optimizer_config`` re-applies them);
  4. ``clear_run``         (``--overwrite``) removes only what a run writes;
  5. ``trim_jsonl``        drops what a crashed run logged after its checkpoint, and a torn last line;
  6. ``Interrupts``        SIGINT/SIGTERM set a flag that the loop reads after each step.

Policy on a changed config at resume (decided once, here, and written to ``run.log``):
  refused  method, credit.mode, model.name, model.dtype, model.lora (shape), task.*, seed,
           rollout.prompts_per_step, rollout.samples_per_prompt, teacher.kind, optim.epochs,
           optim.mini_batches — the checkpoint's weights, teacher state, data order or schedule
           position would not mean what the new config says;
  applied  everything else, from the next step on. The schedule follows the new optim.lr, warmup,
           schedule and steps at the same optimizer-step position (so its value can jump).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from credit import checkpoint
from credit.errors import UserError

#: A directory holding any of these holds a run (the logs only once they hold a line: a run that failed
#: before its first step leaves empty ones, and they must not block the retry).
RUN_MARKERS = ("metrics.jsonl", "checkpoint.pt", "summary.json")
#: What a run writes into out_dir; ``--overwrite`` removes these and nothing else. A folder's entry
#: names the files inside it that a run writes (glob patterns): anything else there stays.
RUN_OUTPUTS: dict[str, tuple[str, ...] | None] = {
    "config.yaml": None, "metrics.jsonl": None, "rollouts.jsonl": None, "summary.json": None,
    "checkpoint.pt": None, "checkpoint-best.pt": None, "run.log": None, "wandb-run-id": None,
    "checkpoints": ("step-*.pt", "step-*.shards", ".*.tmp", ".*.old"),  # .shards: a sharded run's folders
    "tb": ("events.out.tfevents.*",),
    "wandb": ("run-*", "offline-run-*", "latest-run", "debug*.log"),
    # save_pretrained of a model, its LoRA adapters and its tokenizer
    "final": ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
              "pytorch_model*.bin", "adapter_config.json", "adapter_model.*", "README.md", "tokenizer*",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
              "chat_template.jinja", "chat_template.json"),
}

#: Config keys (or key prefixes) a resumed run cannot change, with the reason the user is shown.
REFUSED_CHANGES = {
    "method": "the checkpoint's teacher and optimizer state belong to the saved method",
    "credit.mode": "the saved update rule produced the checkpoint's optimizer state",
    "model.name": "the checkpoint holds the saved model's weights",
    "model.dtype": "the checkpoint's weights and optimizer state are in the saved dtype",
    "model.lora": "the checkpoint's adapters have the saved shape",
    "task": "the data order and the held-out split are the saved task's",
    "seed": "every draw of step s is seeded by (seed, step); another seed is another run",
    "rollout.prompts_per_step": "step s reads prompts s·B..s·B+B-1 of the data order; another B skips or repeats examples",
    "rollout.samples_per_prompt": "G fixes the groups of GRPO's normalization and of the saved rollouts",
    "teacher.kind": "the checkpoint's teacher state is the saved kind's",
    "optim.epochs": "the schedule counts optimizer steps (steps × epochs × mini_batches); its position would move",
    "optim.mini_batches": "the schedule counts optimizer steps (steps × epochs × mini_batches); its position would move",
}
#: Changes inside a refused prefix that are safe (LoRA dropout is not part of the adapters' shape).
ALLOWED_INSIDE_REFUSED = ("model.lora.dropout",)
#: Keys that are not part of what the run computes: where it writes and on which device.
IGNORED_KEYS = ("out_dir", "device")


def note(out: Path | None, message: str) -> None:
    """One line for the user on stderr, kept in ``out/run.log`` with the time (what actually ran)."""
    print(message, file=sys.stderr, flush=True)
    if out is not None and out.is_dir():
        with open(out / "run.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


# ----------------------------------------------------------------------------- 1. the run directory


def _holds_a_line(path: Path) -> bool:
    """Whether a log file holds anything but whitespace (its first 4 KiB are enough to tell)."""
    with open(path, "rb") as f:
        return bool(f.read(4096).strip())


def existing_run(out: Path) -> list[str]:
    """The run files in ``out`` (empty: no run there). A run begins with its first logged line: the
    empty logs of a run that failed before it (a raising reward, a missing package) are no run."""
    if not out.is_dir():
        return []
    return [name for name in RUN_MARKERS if (out / name).is_file()
            and (not name.endswith(".jsonl") or _holds_a_line(out / name))]


def check_writable(out: Path) -> None:
    """Create ``out`` (and its parents) and write a file in it, or say in one line that out_dir cannot be
    written (and remove the folders made for the attempt). Done before any model loads: the first write
    of a run comes after minutes of loading, and its error would name a file, not out_dir. A folder
    made for a check that passed stays: every process of a distributed run checks at once."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    probe = out / f".credit-write-check.{os.getpid()}.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        for p in missing:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(out) else ""
        raise UserError(f"out_dir={out} cannot be written: {e.strerror or e}{where}; set out_dir to a directory "
                        "you can write") from None


def prepare_run_dir(out: Path, resume: bool | str, overwrite: bool) -> None:
    """Refuse to write into a directory that holds a run unless ``--resume`` or ``--overwrite`` is given,
    or into one that cannot be written."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: --resume continues the run in "
                        f"{out}, --overwrite deletes it; give one")
    if out.exists() and not out.is_dir():
        raise UserError(f"out_dir={out} is a file, not a directory; set out_dir to a directory")
    found = existing_run(out)
    if found and not resume and not overwrite:
        raise UserError(f"out_dir={out} already holds a run ({', '.join(found)}); continue it with --resume, "
                        f"replace it with --overwrite, or set out_dir=<another directory>")
    check_writable(out)


def clear_run(out: Path) -> list[str]:
    """Remove what a run writes (``RUN_OUTPUTS`` and our temporary files), nothing else: out_dir may be
    a directory the user keeps other things in (even ``.``), and a file of theirs inside ``tb/`` or
    ``final/`` stays, with its folder. Returns the names removed (``tb/events...`` for a file of a
    folder that stays)."""
    removed, kept = [], []
    if not out.is_dir():
        return removed
    for entry in sorted(out.iterdir()):
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            checkpoint.remove_entry(entry)
            removed.append(name)
            continue
        if name not in RUN_OUTPUTS:
            continue
        patterns = RUN_OUTPUTS[name]
        if patterns is None or entry.is_symlink() or not entry.is_dir():
            checkpoint.remove_entry(entry)
            removed.append(name)
            continue
        inside = sorted(entry.iterdir())
        ours = [p for p in inside if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
        for p in ours:
            checkpoint.remove_entry(p)
        if len(ours) == len(inside):
            entry.rmdir()
            removed.append(name)
        else:
            removed += [f"{name}/{p.name}" for p in ours]
            kept += [f"{name}/{p.name}" for p in inside if p not in ours]
    if kept:
        note(None, f"--overwrite: kept {', '.join(kept)} in {out} (not written by a run)")
    return removed


# ----------------------------------------------------------------------------- 2. what to resume from


def resume_path(out: Path, resume: bool | str) -> Path | None:
    """The checkpoint file ``--resume`` names: out_dir's ``checkpoint.pt`` (None when there is none
    yet: the run starts at step 0), or a given run directory's, or a given checkpoint file."""
    if not resume:
        return None
    if resume is True:
        path = out / "checkpoint.pt"
        return path if path.is_file() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        if not (path / "checkpoint.pt").is_file():
            raise UserError(f"--resume {resume}: that directory has no checkpoint.pt")
        return path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such checkpoint file or run directory")
    return path


def load_resume(out: Path, resume: bool | str) -> tuple[Path | None, dict | None]:
    """``(path, state)`` of the checkpoint to continue from, or ``(None, None)`` to start fresh."""
    path = resume_path(out, resume)
    if path is None:
        if resume is True and existing_run(out):
            note(None, f"--resume: no checkpoint in {out} yet; starting from step 0 (steps logged so far are dropped)")
        return None, None
    return path, checkpoint.load_file(path)


def read_summary(out: Path) -> dict:
    """The summary.json of the run being continued ({} when it has none yet)."""
    path = out / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); move it away to resume") from None


def check_not_finished(summary: dict, state: dict | None, steps: int, out: Path) -> None:
    """A finished run has nothing to resume: say how to train it further instead of re-evaluating it."""
    done = state["step"] + 1 if state is not None else 0
    if state is not None and done >= steps and "eval_after" in summary:
        raise UserError(f"the run in {out} is complete at step {done}; to train it further resume with steps= "
                        f"above {done} (e.g. steps={2 * done}), or start another run with --overwrite")


# ----------------------------------------------------------------------------- 3. the config at resume


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; ``task.options`` stays one value (a task's
    options are compared as a whole)."""
    out = {}
    for key, value in tree.items():
        dotted = prefix + key
        if isinstance(value, dict) and dotted != "task.options":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, saved, new)`` for every key whose value differs; a key only one side knows (a field
    added or removed by a code update, or model.lora null vs set) appears with ``None`` opposite."""
    a, b = flatten(saved), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not k.startswith(IGNORED_KEYS)]


def refusal(key: str) -> str | None:
    if key in ALLOWED_INSIDE_REFUSED:
        return None
    for prefix, why in REFUSED_CHANGES.items():
        if key == prefix or key.startswith(prefix + "."):
            return why
    return None


def reconcile(saved: dict | None, new: dict, source: Path) -> list[str]:
    """Compare the config a checkpoint was trained with to the one given now. Raises a ``UserError``
    naming every change that cannot apply; returns the applied changes as ``key: old -> new``."""
    if saved is None:
        return []
    changes = config_changes(saved, new)
    refused = [(k, old, new_, refusal(k)) for k, old, new_ in changes if refusal(k)]
    if refused:
        what = "; ".join(f"{k}: {old!r} -> {new_!r} ({why})" for k, old, new_, why in refused)
        raise UserError(f"--resume {source}: cannot change {what}. Keep the saved value, or start a new run "
                        "(another out_dir, or --overwrite)")
    return [f"{k}: {old!r} -> {new_!r}" for k, old, new_ in changes]


def saved_config(state: dict, path: Path) -> dict | None:
    """The config the checkpoint was trained with: the copy inside it, else its run's config.yaml."""
    if isinstance(state.get("config"), dict):
        return state["config"]
    yaml_path = path.parent / "config.yaml"
    if yaml_path.is_file():
        import yaml

        return yaml.safe_load(yaml_path.read_text())
    return None


def apply_optimizer_config(optimizer, scheduler, optim_cfg) -> None:
    """Re-apply lr, betas and weight decay after ``optimizer.load_state_dict`` restored the saved ones,
    and recompute the current lr from the (new) schedule at the restored position. With an unchanged
    config this reproduces the saved values bit for bit (LambdaLR computes ``base_lr * factor(pos)``)."""
    groups = optimizer.param_groups
    for g in groups:
        g["initial_lr"] = optim_cfg.lr
        g["betas"] = tuple(optim_cfg.betas)
        g["weight_decay"] = optim_cfg.weight_decay
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.base_lrs = [optim_cfg.lr] * len(groups)
        for g, factor in zip(groups, scheduler.lr_lambdas, strict=True):
            g["lr"] = optim_cfg.lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in groups]


# ----------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    """Seed the global generators (LoRA init, dropout); the loop's own draws are seeded per step."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def rng_state() -> dict:
    """The global generators' state, saved with a checkpoint so that dropout resumes exactly."""
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict | None) -> None:
    import torch

    if not state:
        return
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


# ----------------------------------------------------------------------------- 5. logs a crash left


def trim_jsonl(path: Path, before_step: int) -> int:
    """Keep the rows of ``path`` with ``step < before_step`` (what the checkpoint covers). A torn last
    line (a crash mid-write) is dropped with a warning; a bad line elsewhere is an error naming it.
    Rewritten atomically. Returns the number of rows dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep, dropped = [], 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = row["step"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if lineno == len(lines):
                note(path.parent, f"warning: {path}:{lineno}: dropped a torn last line (a crash mid-write)")
                dropped += 1
                continue
            raise UserError(f"{path}:{lineno}: not a metrics row ({type(e).__name__}: {e}); remove the line, "
                            "or start over with --overwrite") from None
        if step < before_step:
            keep.append(line)
        else:
            dropped += 1
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
    return dropped


# ----------------------------------------------------------------------------- 6. interrupts


class Interrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after saving a checkpoint; the CLI exits 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if checkpoint is None:
            super().__init__(f"{name}: interrupted before the first step; nothing to save")
        else:
            super().__init__(f"{name}: interrupted at step {step}; checkpoint saved ({checkpoint}); "
                             "resume with --resume")


class Interrupts:
    """While active, SIGINT and SIGTERM only set ``signum``; the loop stops at its next safe point
    (after the current step, with a checkpoint). A second SIGINT aborts at once (KeyboardInterrupt),
    for a user who cannot wait for the step to end. Handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            # os.write, not print: a handler may run in the middle of another write to stderr
            os.write(2, f"\ncredit train: {signal.Signals(signum).name} received; stopping after this step with "
                        "a checkpoint (Ctrl-C again aborts without saving)\n".encode())

    def __enter__(self) -> Interrupts:
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (a notebook worker, a test thread): leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self, accelerator=None) -> int | None:
        """The signal to stop on, agreed by every process (one may have caught it before the others)."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.signum
        import torch

        caught = accelerator.gather(torch.tensor([self.signum or 0], device=accelerator.device))
        return int(caught.max().item()) or None


# ----------------------------------------------------------------------------- what a run writes


def save_checkpoint(trainer, out: Path, step: int) -> Path:
    """The full state after ``step`` (and the global RNG, for dropout) as the run's latest checkpoint."""
    trainer.acc.wait_for_everyone()
    state = trainer.state(step)
    if trainer.sharded:  # every process writes its own shards first; the step file then names their folder
        state["shards"] = checkpoint.write_shards(out, step + 1, trainer.save_shards, trainer.acc.is_main_process,
                                                  trainer.acc.wait_for_everyone)
    if trainer.acc.is_main_process:
        state["rng"] = rng_state()
        checkpoint.save(out, state, keep=trainer.cfg.checkpoint_keep)
    trainer.acc.wait_for_everyone()  # no process runs on before the checkpoint exists
    return out / checkpoint.CHECKPOINT


def keep_best(trainer, out: Path, summary: dict, result: dict, step: int) -> None:
    """``checkpoint-best.pt`` when this held-out mean@n beats every earlier one of the run."""
    key = next((k for k in result if k.startswith("mean@")), None)
    best = summary.get("best")
    if key is None or (best is not None and result[key] <= best["value"]):
        return
    summary["best"] = {"step": step + 1, "metric": key, "value": result[key], "path": checkpoint.BEST}
    from credit import parallel

    trainer.acc.wait_for_everyone()
    weights = parallel.full_state_dict(trainer.unwrapped)  # every process (gathered to rank 0 when sharded)
    if trainer.acc.is_main_process:
        checkpoint.save_best(out, {"step": step, "model": weights, "eval": result,
                                   "config": trainer.cfg.model_dump(mode="json")})
    write_summary(out, summary, trainer)


def save_final(trainer, path: Path) -> None:
    """``final/``: a Hugging Face folder (every process calls this; rank 0 writes). Sharded, the whole
    weights are gathered to rank 0 first. Under LoRA only the student's adapter is written (not the EMA
    teacher's); with ``model.merge_lora_on_save`` it is folded into the weights (a plain model that loads
    without peft)."""
    from credit import parallel

    model = trainer.unwrapped
    weights = parallel.full_state_dict(model) if parallel.is_sharded(model) else None
    if not trainer.acc.is_main_process:
        return
    lora = trainer.cfg.model.lora is not None
    if lora and trainer.cfg.model.merge_lora_on_save:
        model = model.merge_and_unload()  # the run is over: the student may lose its adapters now
        lora = False
    kwargs = {"selected_adapters": ["default"]} if lora else {}
    if weights is not None:
        kwargs["state_dict"] = weights
    model.save_pretrained(path, **kwargs)
    trainer.tok.save_pretrained(path)


def write_summary(out: Path, summary: dict, trainer) -> None:
    if trainer.acc.is_main_process:
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out / "summary.json")


# ----------------------------------------------------------------------------- the lifecycle, as train() reads it


class Run:
    """One run directory around the training loop, in the order ``train()`` calls it:

    ``Run(cfg, resume, overwrite)``  before any model loads: out_dir, the checkpoint to resume, the config
                                     changes it allows, a missing optional integration; the global seed
    ``start(trainer)``               --overwrite, the checkpoint's state and RNG, logs, config.yaml, run.log
    ``evaluate_before(evaluate)``    held-out accuracy before training (once per run, not per resume)
    ``steps()``                      the steps still to run, with a progress bar
    ``end_step(step, ...)``          held-out evaluation and checkpoint-best.pt when due, logs, a checkpoint
                                     when due or asked for, and the stop a SIGINT/SIGTERM asked for
    ``finish(evaluate)``             held-out accuracy after, summary.json, final/; returns the summary
    """

    def __init__(self, cfg, resume: bool | str, overwrite: bool):
        self.cfg, self.out, self.overwrite = cfg, Path(cfg.out_dir), overwrite
        prepare_run_dir(self.out, resume, overwrite)
        if cfg.log.wandb:
            from credit.logging import require_wandb

            require_wandb()  # a missing optional integration is found before minutes of model loading
        self.source, self.state = load_resume(self.out, resume)
        saved = saved_config(self.state, self.source) if self.state is not None else None
        self.changes = reconcile(saved, cfg.model_dump(mode="json"), self.source) if self.state is not None else []
        self.summary = read_summary(self.out) if self.state is not None else {}
        check_not_finished(self.summary, self.state, cfg.steps, self.out)
        seed_everything(cfg.seed)  # LoRA init and dropout; the loop's own draws are seeded per step
        self.trainer = self.logger = self.saved = None

    def start(self, trainer) -> None:
        from credit.config import dump
        from credit.logging import RunLogger

        self.trainer, cfg, out = trainer, self.cfg, self.out
        main = trainer.acc.is_main_process
        if self.overwrite and main:
            clear_run(out)
        trainer.acc.wait_for_everyone()
        if self.state is not None:
            trainer.load_state(self.state)
            apply_optimizer_config(trainer.optimizer, trainer.scheduler, cfg.optim)
            set_rng_state(self.state.get("rng"))
        self.logger = RunLogger(out, cfg, main, start_step=trainer.start_step)
        if main:
            (out / "config.yaml").write_text(dump(cfg))  # what actually runs, changes applied at resume included
        if self.state is not None:
            self.summary["resumed_from_step"] = trainer.start_step
            self.summary.setdefault("resumes", []).append({"step": trainer.start_step, "checkpoint": str(self.source),
                                                           "changes": self.changes})
            if main:
                note(out, f"credit train: resumed from {self.source} at step {trainer.start_step} of {cfg.steps}"
                          + (f"; config changes applied: {', '.join(self.changes)}" if self.changes else ""))
        self.state = None  # the checkpoint's tensors are in the trainer now
        # train_wall_s sums every process's share of the run; it is written with each checkpoint, so a run
        # killed without warning keeps the time that produced its last checkpoint
        self.wall_before, self.t_start = self.summary.get("train_wall_s", 0.0), time.perf_counter()

    def _log_eval(self, step: int, result: dict) -> dict:
        from credit.evaluate import headline

        numbers = headline(result)
        self.logger.log(step, {f"eval/{k}": v for k, v in numbers.items()})
        return numbers

    def _count_wall(self) -> None:
        self.summary["train_wall_s"] = self.wall_before + time.perf_counter() - self.t_start

    def evaluate_before(self, evaluate, interrupts: Interrupts) -> None:
        """Held-out accuracy before training; a stop asked for meanwhile leaves the loaded checkpoint as it is."""
        if self.cfg.eval.before and "eval_before" not in self.summary:
            self.summary["eval_before"] = evaluate(self.trainer)
            self._log_eval(self.trainer.start_step, self.summary["eval_before"])
            write_summary(self.out, self.summary, self.trainer)
        if signum := interrupts.requested(self.trainer.acc):  # nothing trained yet
            self.logger.close()
            raise Interrupted(signum, self.trainer.start_step, self.source)

    def steps(self):
        start = self.trainer.start_step
        return self.logger.progress(range(start, self.cfg.steps), self.cfg.steps, start)

    def end_step(self, step: int, metrics: dict, records: list[dict], evaluate, interrupts: Interrupts) -> None:
        cfg, trainer = self.cfg, self.trainer
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.steps:
            from credit.evaluate import headline

            result = headline(evaluate(trainer))
            metrics.update({f"eval/{k}": v for k, v in result.items()})
            keep_best(trainer, self.out, self.summary, result, step)
        self.logger.log(step, metrics, records)
        signum = interrupts.requested(trainer.acc)  # SIGINT/SIGTERM: stop here, after a whole step
        if signum or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or step + 1 == cfg.steps:
            self.saved = save_checkpoint(trainer, self.out, step)
            self._count_wall()
            write_summary(self.out, self.summary, trainer)
        if signum:
            self.logger.close()
            raise Interrupted(signum, step + 1, self.saved)

    def finish(self, evaluate) -> dict:
        cfg, trainer = self.cfg, self.trainer
        self.summary["eval_after"] = evaluate(trainer)
        after = self._log_eval(cfg.steps, self.summary["eval_after"])
        if cfg.eval.every:
            keep_best(trainer, self.out, self.summary, after, cfg.steps - 1)
        self._count_wall()
        self.summary["skipped_steps"] = trainer.skipped_steps
        write_summary(self.out, self.summary, trainer)
        save_final(trainer, self.out / "final")
        self.logger.close()
        return self.summary
