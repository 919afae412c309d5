"""What the analysis commands (eval, explain, pmi) read from a run, and their shared CLI options.

- ``load_model_from_args``: ``--model`` is a Hugging Face id or folder, the offline alias, a run
  directory (its ``final/`` when the run finished, else its ``checkpoint.pt``), or a checkpoint file
  (``checkpoint.pt``, ``checkpoints/step-*.pt``, ``checkpoint-best.pt``): a checkpoint is rebuilt
  from the model name (and LoRA shape) in the config it carries, then its weights are loaded.
- ``read_rollouts`` / ``read_rollout``: a run's ``rollouts.jsonl``, every record validated, every
  problem a one-line ``UserError`` naming the file and line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from credit.errors import UserError

Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------- --model


def add_common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="hub id, local folder, run directory, checkpoint file, or the alias "
                        "smollm2-135m-instruct (default)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda when available)")


def model_source(spec: str) -> tuple[str, str]:
    """What ``--model`` names: ``("checkpoint", file)`` or ``("model", name_or_folder)``.

    A run directory gives its ``final/`` folder (a finished run) or else its ``checkpoint.pt`` (a run
    still in progress or interrupted). Anything else is passed on to ``models.load_model``, which
    explains a missing path, an empty directory or an uncached hub id itself.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".pt":
            return "checkpoint", str(path)
        raise UserError(f"--model {spec}: a file that is not a checkpoint (.pt); give a model folder, "
                        "a run directory or a checkpoint.pt")
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        if (path / "final" / "config.json").is_file():
            return "model", str(path / "final")
        if (path / "checkpoint.pt").is_file():
            return "checkpoint", str(path / "checkpoint.pt")
    return "model", str(spec)


def load_checkpoint_model(path: str | Path, *, dtype: str = "float32", device=None):
    """``(model, tokenizer)`` from a training checkpoint: the base model named in its config (with
    its LoRA adapters merged), then the trained weights. The teacher and optimizer are not loaded."""
    import torch

    from credit.models import load_model

    try:  # mmap: only the student's tensors are read from a file that also holds teacher and optimizer
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a checkpoint we wrote
        raise UserError(f"{path}: not a readable credit checkpoint ({type(e).__name__}: {e})") from None
    model_cfg = (state.get("config") or {}).get("model") if isinstance(state, dict) else None
    if not model_cfg or "model" not in state:
        raise UserError(f"{path}: not a credit checkpoint (no 'model' weights and 'config.model' section)")
    model, tok = load_model(model_cfg["name"], dtype=dtype, cache_dir=model_cfg.get("cache_dir"))
    lora = model_cfg.get("lora")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    model.load_state_dict(state["model"])
    if lora:
        model = model.merge_and_unload()
    if device is not None:
        model.to(device)
    return model.eval(), tok


def load_model_from_args(args):
    import torch

    from credit.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    kind, where = model_source(args.model)
    if where != args.model:  # say which file of the run directory is used
        print(f"--model {args.model}: using {where}", file=sys.stderr)
    if kind == "checkpoint":
        return load_checkpoint_model(where, dtype=args.dtype, device=device)
    return load_model(where, dtype=args.dtype, device=device)


def parse_task_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars (``true``, ``3``, ``0.5``, text)."""
    from credit.config import parse_value

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--task-option {item!r}: expected key=value")
        out[key] = parse_value(value)
    return out


# ----------------------------------------------------------------------------- rollouts.jsonl


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line; a bad line is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    return rows


def check_messages(value: Any, where: str) -> Messages:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if (not isinstance(value, list) or not value
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)):
        raise UserError(f"{where}: expected chat messages (a list of {{\"role\", \"content\"}}) or a string")
    if value[-1].get("role") != "user":
        raise UserError(f"{where}: the last message must have role 'user'")
    return [dict(m) for m in value]


ROLLOUT_FIELDS = {"prompt_messages": list, "response": str, "response_ids": list}


def read_rollouts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``rollouts.jsonl`` (the first ``limit``), validated; each gets
    ``_where`` = ``"FILE:LINE"`` for messages."""
    return [_validate_rollout(rec, f"{path}:{lineno}") for lineno, rec in read_jsonl(path)[:limit]]


def read_rollout(path: str | Path, index: int) -> dict[str, Any]:
    """Record ``index`` (0-based, in file order) of a run's ``rollouts.jsonl``, validated."""
    rows = read_jsonl(path)
    if not -len(rows) <= index < len(rows):
        raise UserError(f"{path}: --index {index} is out of range; the file holds {len(rows)} rollouts")
    lineno, rec = rows[index]
    return _validate_rollout(rec, f"{path}:{lineno}")


def _validate_rollout(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise UserError(f"{where}: a rollout record must be a JSON object")
    for name, kind in ROLLOUT_FIELDS.items():
        if not isinstance(rec.get(name), kind):
            raise UserError(f"{where}: field '{name}' is missing or not a {kind.__name__}")
    if not all(isinstance(i, int) for i in rec["response_ids"]):
        raise UserError(f"{where}: field 'response_ids' must hold integers")
    for name in ("feedback", "demo"):
        if rec.get(name) is not None and not isinstance(rec[name], str):
            raise UserError(f"{where}: field '{name}' must be a string or null")
    ctx = rec.get("teacher_context_ids")
    if ctx is not None and not (isinstance(ctx, list) and all(isinstance(i, int) for i in ctx)):
        raise UserError(f"{where}: field 'teacher_context_ids' must be a list of integers")
    rec = dict(rec)
    rec["prompt_messages"] = check_messages(rec["prompt_messages"], f"{where}: field 'prompt_messages'")
    rec["negative_prompts"] = [check_messages(m, f"{where}: field 'negative_prompts'")
                               for m in rec.get("negative_prompts") or []]
    rec["_where"] = where
    return rec


def check_rollout_tokenizer(tokenizer, rec: Mapping[str, Any]) -> None:
    """The recorded ids must decode to the recorded text, else the tokenizer is not the run's."""
    decoded = tokenizer.decode(rec["response_ids"], skip_special_tokens=True)
    if decoded.strip() != rec["response"].strip():
        raise UserError(
            f"{rec.get('_where', 'rollout')}: the tokenizer does not match the run's: response_ids decode to "
            f"{decoded[:60]!r} but the recorded response is {rec['response'][:60]!r}; pass the run's model (--model)")


def check_ids_fit(model, tokenizer, ids: Sequence[int], what: str = "response") -> None:
    """Token ids must exist in both the tokenizer and the model's embedding table."""
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}: "
                        "they do not belong together (load the tokenizer saved with the model)")
    bad = [i for i in ids if not 0 <= int(i) < len(tokenizer)]
    if bad:
        raise UserError(f"{what} holds token ids {bad[:5]} outside the tokenizer's vocabulary of {len(tokenizer)}: "
                        "the ids were made with another tokenizer; use the run's model (--model)")
