"""What the analysis commands (eval, explain, pmi) read from a run, and their shared CLI options.

- ``load_model_from_args``: ``--model`` is a Hugging Face id or folder, the offline alias, a run
  directory (its ``final/`` when the run finished, else its ``checkpoint.pt``), or a checkpoint file
  (``checkpoint.pt``, ``checkpoints/step-*.pt``, ``checkpoint-best.pt``): a checkpoint is rebuilt
  from the model name (and LoRA shape) in the config it carries, then its weights are loaded.
- ``find_run_config`` / ``apply_run_config``: the config of the run ``--model`` points into (its
  ``config.yaml``, or the copy a checkpoint carries); its settings are the defaults of an analysis
  command, so a run is evaluated and explained the way it was trained; a flag given overrides them.
- ``loop_contexts``: one response's student, teacher and negative context ids, made by the builders
  the training loop uses (``encode_prompts``, ``build_teacher_contexts``, ``build_negative_contexts``)
  with the run's ``chat_template_kwargs``: analysis scores exactly what training scored.
- ``read_rollouts`` / ``read_rollout``: a run's ``rollouts.jsonl``, every record validated, every
  problem a one-line ``UserError`` naming the file and line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from credit.errors import UserError, one_line

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
    if model_cfg and "shards" in state:
        raise UserError(f"{path}: a sharded run's checkpoint (its weights are in the shards each process wrote); "
                        "evaluate the run's final/ or checkpoint-best.pt")
    if not model_cfg or "model" not in state:
        raise UserError(f"{path}: not a credit checkpoint (no 'model' weights and 'config.model' section)")
    model, tok = load_model(model_cfg["name"], dtype=dtype, cache_dir=model_cfg.get("cache_dir"))
    lora = model_cfg.get("lora")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    # the LoRA EMA teacher's adapter lives in the student's state dict; evaluation wants the student
    model.load_state_dict({k: v for k, v in state["model"].items() if ".credit_ema." not in k})
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


def mapping_arg(text: str) -> dict:
    """An argparse type: a YAML mapping such as ``'{enable_thinking: false}'``."""
    from credit.config import parse_value

    value = parse_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: give a mapping, e.g. '{{enable_thinking: false}}'")
    return value


def add_chat_template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-template-kwargs", type=mapping_arg, default=None, metavar="YAML",
                   help="extra chat-template variables, e.g. '{enable_thinking: false}' (model.chat_template_kwargs; "
                        "default: the run's, when --model is a run)")


# ----------------------------------------------------------------------------- the run behind --model


def _read_yaml_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({one_line(err)})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a run config (expected a mapping of sections)")
    return config


def find_run_config(spec: str) -> tuple[Path, dict] | None:
    """``(where, config)`` of the run that ``--model`` names or points into: a run directory, its
    ``final/``, or a checkpoint inside it (``checkpoint.pt``, ``checkpoint-best.pt``,
    ``checkpoints/step-*.pt``); read from the run's ``config.yaml``, else from the config a checkpoint
    file carries. None for a plain model (a hub id, a model folder outside a run)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".pt":
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif path.is_dir() and (path / "config.yaml").is_file():
        run_dir = path
    elif path.is_dir() and path.name == "final":
        run_dir = path.parent
    else:
        return None
    if (run_dir / "config.yaml").is_file():
        return run_dir / "config.yaml", _read_yaml_config(run_dir / "config.yaml")
    if path.is_file():
        import torch

        try:  # mmap: the config only, not the weights
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # noqa: BLE001 - not our checkpoint: loading the model will say so
            return None
        if isinstance(state, dict) and isinstance(state.get("config"), dict):
            return path, state["config"]
    return None


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


#: Per option of an analysis command: how to read its default from a run config.
RunDefault = Callable[[Mapping[str, Any]], Any]


def run_setting(*dotted: str) -> RunDefault:
    """The first of the ``dotted`` config keys that the run sets (not None)."""
    return lambda config: next((v for v in (_get(config, k) for k in dotted) if v is not None), None)


def apply_run_config(args: argparse.Namespace, from_run: Mapping[str, RunDefault],
                     builtin: Mapping[str, Any]) -> Path | None:
    """Fill every option in ``builtin`` that the user did not give (None) from the run ``--model``
    points into (``from_run``), else from ``builtin``; ``--task`` and ``--task-option`` likewise: the
    run's task and options unless ``--task`` names one (``--task-option`` then adds to the run's).
    Says on stderr which run config was used and what it set; returns its path (None: no run)."""
    found = find_run_config(args.model) if getattr(args, "model", None) else None
    taken = {}
    if found is not None:
        path, config = found
        for name, read in from_run.items():
            value = read(config)
            if getattr(args, name, None) is None and value is not None:
                setattr(args, name, value)
                taken[name] = value
        if hasattr(args, "task") and args.task is None and isinstance(_get(config, "task.name"), str):
            args.task = config["task"]["name"]
            args.run_task_options = dict(_get(config, "task.options") or {})
            taken["task"] = args.task
            if args.run_task_options:
                taken["task options"] = args.run_task_options
        shown = ", ".join(f"{k} {v}" for k, v in taken.items()) or "nothing the flags did not set"
        print(f"--model {args.model}: settings from the run config {path}: {shown} (a flag overrides them)",
              file=sys.stderr)
    for name, value in builtin.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return None if found is None else found[0]


def task_from_args(args: argparse.Namespace):
    """The task ``--task`` names, with the run's options (``apply_run_config``) and ``--task-option``."""
    from credit.tasks import build_task

    options = {**getattr(args, "run_task_options", {}), **parse_task_options(args.task_option)}
    return build_task(args.task, **options)


# ----------------------------------------------------------------------------- contexts, as the loop builds them


def loop_contexts(tokenizer, messages: Messages, *, feedback: str | None = None, demo: str | None = None,
                  negatives: Sequence[Messages] = (), chat_template_kwargs: Mapping[str, Any] | None = None,
                  max_context_tokens: int | None = None, templates=None) -> dict[str, Any]:
    """The student, teacher and negative (``swap=input``) context ids of one response with privileged
    ``feedback`` and/or ``demo``, made by the training loop's own builders, so that an analysis scores
    exactly the ids training scored. The response is the loop's sample 0 (reward 0, its feedback); a
    given demo is a second sample of the group that succeeded, used verbatim (a recorded demo is
    already stripped of ``<think>`` and cut to fit). Returns ``student``, ``teacher``, ``negatives``
    (one per prompt in ``negatives``) and ``privileged`` (the ``z`` used, after truncation)."""
    from credit.rollout import encode_prompts
    from credit.tasks.base import Example, Outcome
    from credit.teacher.contexts import Templates, build_teacher_contexts
    from credit.teacher.negatives import build_negative_contexts

    templates = templates or Templates()
    examples = [Example("explained", [dict(m) for m in messages]),
                *(Example(f"negative{k}", [dict(m) for m in neg]) for k, neg in enumerate(negatives))]
    groups, responses, outcomes = [0], [""], [Outcome(0.0, feedback or "")]
    if demo is not None:
        groups, responses, outcomes = [0, 0], ["", demo], [*outcomes, Outcome(1.0)]
    contexts = build_teacher_contexts(
        tokenizer, examples, groups, responses, outcomes, success_threshold=1.0, dont_reprompt_on_self_success=True,
        strip_thinking=False, include_feedback=True, feedback_only_without_demo=False,
        max_context_tokens=max_context_tokens, templates=templates, chat_template_kwargs=chat_template_kwargs)
    negative_ids: list[list[int]] = []
    if negatives:
        drawn = [list(range(1, len(examples)))] + [[]] * (len(groups) - 1)
        negative_ids = build_negative_contexts(
            tokenizer, examples, groups, contexts, drawn, swap="input", templates=templates,
            max_context_tokens=max_context_tokens, chat_template_kwargs=chat_template_kwargs).context_ids[0]
    return {"student": encode_prompts(tokenizer, [messages], chat_template_kwargs=chat_template_kwargs)[0],
            "teacher": contexts.context_ids[0], "negatives": negative_ids, "privileged": contexts.privileged[0],
            "has_signal": contexts.has_signal[0]}


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
