"""pMI checks: is Σ_t ΔV_t really the pointwise mutual information the method says it is?

Two checks on given examples, the teacher being the same model (a live teacher):

1. **Telescoping** (exact): ``Σ_t ΔV_t`` from the training scoring path (``credit.scoring`` packing,
   chunked log-probs, ``credit.signal``) against ``log π(y|c) − log π(y|x)`` from two *independent*
   full forward passes (one unpadded sequence each, a plain fp32 ``log_softmax`` over the whole
   vocabulary). Their difference must be float noise; anything else is a bug in packing, masking,
   position ids or temperature handling.

2. **Posterior compatibility** (empirical): when the privileged ``z`` is feedback that is a
   deterministic function of ``(x, y)`` (a task scorer's feedback), the true pMI is
   ``log P(z|x,y) − log P(z|x) = −log P(z|x)``. ``P(z|x)`` is estimated by sampling ``M`` responses
   ``y' ~ π(·|x)`` and counting those whose feedback equals ``z``. The estimate is
   ``(count + 1) / (M + 1)``: ``y`` itself is an on-policy sample with feedback ``z``, so it is
   counted too; this also keeps the log finite. The teacher's ``Σ ΔV`` is a good pMI estimate to the
   extent it correlates with ``−log P̂(z|x)`` across examples (the paper's assumption, App. D).

Student prompts and teacher contexts are made by the loop's builders (``encode_prompts``,
``build_teacher_contexts``) with the run's ``chat_template_kwargs``, so both sides of the check see the
prompt format training saw.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from credit.analysis import viz
from credit.errors import UserError


# ----------------------------------------------------------------------------- telescoping


@torch.no_grad()
def sequence_logprob(model, context_ids: Sequence[int], response_ids: Sequence[int], temperature: float = 1.0) -> float:
    """``log π(y|ctx)`` at ``temperature`` from one unpadded forward pass with a full-vocabulary
    fp32 log-softmax; deliberately shares no code with ``credit.scoring``."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(context_ids) + list(response_ids)], device=device)  # (1, C+R)
    logits = model(input_ids=ids, use_cache=False).logits[0].double()  # (C+R, V)
    c = len(context_ids)
    logp = torch.log_softmax(logits[c - 1 : -1] / temperature, dim=-1)  # (R, V): row t predicts y_t
    target = torch.tensor(list(response_ids), device=device)
    return float(logp.gather(-1, target[:, None]).sum())


@torch.no_grad()
def scored_delta_v_sums(model, pad_id: int, student_ctx: Sequence[Sequence[int]], teacher_ctx: Sequence[Sequence[int]],
                        responses: Sequence[Sequence[int]], temperature: float = 1.0,
                        micro_batch: int | None = None) -> list[float]:
    """``Σ_t ΔV_t`` per item through the training path: one pack of all student and teacher rows."""
    from credit.scoring import pack, response_logprobs
    from credit.signal import delta_v, sequence_sum

    n = len(responses)
    packed = pack([*student_ctx, *teacher_ctx], [*responses, *responses], pad_id)
    packed = packed.to(next(model.parameters()).device)
    logp = response_logprobs(model, packed, temperature, micro_batch=micro_batch).float().cpu()  # (2N, R)
    mask = packed.response_mask[:n].cpu()  # (N, R)
    return sequence_sum(delta_v(logp[n:], logp[:n]), mask).tolist()


def telescoping(model, tokenizer, student_ctx, teacher_ctx, responses, temperature: float = 1.0,
                micro_batch: int | None = None) -> list[dict[str, float]]:
    """Per item: ``sum_dv`` (scoring path), ``log_p_teacher``, ``log_p_student`` (independent passes),
    ``pmi`` = their difference, and ``diff`` = ``sum_dv − pmi``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        sums = scored_delta_v_sums(model, pad, student_ctx, teacher_ctx, responses, temperature, micro_batch)
        out = []
        for s, xs, xt, y in zip(sums, student_ctx, teacher_ctx, responses):
            lt = sequence_logprob(model, xt, y, temperature)
            ls = sequence_logprob(model, xs, y, temperature)
            out.append({"sum_dv": s, "log_p_teacher": lt, "log_p_student": ls, "pmi": lt - ls,
                        "diff": s - (lt - ls)})
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------- posterior check


def log_p_feedback_estimate(count: int, m: int) -> float:
    """``log P̂(z|x) = log((count + 1) / (M + 1))``: ``y`` itself counts as one more sample with ``z``."""
    if not 0 <= count <= m:
        raise ValueError(f"count={count} must be in [0, M={m}]")
    return math.log((count + 1) / (m + 1))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None with fewer than 2 points or no spread."""
    n = len(xs)
    if n < 2 or len(ys) != n:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    return pearson(_ranks(xs), _ranks(ys)) if len(xs) >= 2 else None


@dataclass
class PMIConfig:
    """Options of ``pmi_report``."""

    split: str = "train"
    """Which split's examples to check."""
    num_examples: int = 8
    """How many examples (the first ones of the split)."""
    responses_per_example: int = 1
    """Responses y sampled per example and checked."""
    mc_samples: int = 16
    """M: samples y' ~ π(·|x) per example to estimate P(z|x)."""
    temperature: float = 1.0
    """Sampling and scoring temperature."""
    max_new_tokens: int = 32
    """Response budget for y and y'."""
    batch_size: int = 64
    """Sequences per generate call."""
    seed: int = 0
    """Sampling seed (y uses ``seed``, y' uses ``seed + 1``)."""
    chat_template_kwargs: dict | None = None
    """The run's ``model.chat_template_kwargs`` (student prompts and teacher contexts alike)."""

    def __post_init__(self):
        for name in ("num_examples", "responses_per_example", "mc_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (log-probs are taken at it), got {self.temperature}")


def pmi_report(model, tokenizer, task, config: PMIConfig | None = None) -> dict[str, Any]:
    """Both checks on ``config.num_examples`` examples of ``task`` (see the module docstring).

    Returns ``{"items": [...], "summary": {...}}``; items whose feedback is empty have no teacher
    signal and are listed with ``skipped``.
    """
    from credit.rollout import SamplingConfig, encode_prompts, sample
    from credit.teacher.contexts import build_teacher_contexts

    cfg = config or PMIConfig()
    examples = task.examples(cfg.split)[: cfg.num_examples]
    if not examples:
        raise UserError(f"task {task.name!r} has no examples in split {cfg.split!r}")
    prompts = encode_prompts(tokenizer, [e.messages for e in examples], chat_template_kwargs=cfg.chat_template_kwargs)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              micro_batch_size=cfg.batch_size)
    ys = sample(model, tokenizer, prompts, sampling, num_samples=cfg.responses_per_example, seed=cfg.seed)
    y_examples = [examples[g] for g in ys.group]
    outcomes = task.score_batch(y_examples, ys.texts)
    mc = sample(model, tokenizer, prompts, sampling, num_samples=cfg.mc_samples, seed=cfg.seed + 1)
    mc_feedback = [o.feedback for o in task.score_batch([examples[g] for g in mc.group], mc.texts)]

    items: list[dict[str, Any]] = []
    todo = []  # indices of items with a teacher signal
    for n, (ex, o) in enumerate(zip(y_examples, outcomes)):
        item = {"example": ex.id, "response": ys.texts[n], "tokens": len(ys.response_ids[n]),
                "reward": o.reward, "feedback": o.feedback}
        if not o.feedback.strip() or not ys.response_ids[n]:
            item["skipped"] = "empty feedback: no teacher signal" if ys.response_ids[n] else "empty response"
        else:
            g = ys.group[n]
            same = sum(f == o.feedback for f in mc_feedback[g * cfg.mc_samples:(g + 1) * cfg.mc_samples])
            log_p = log_p_feedback_estimate(same, cfg.mc_samples)
            item.update({"feedback_matches": same, "mc_samples": cfg.mc_samples,
                         "log_p_z_given_x": log_p, "empirical_pmi": 0.0 - log_p})
            todo.append(n)
        items.append(item)

    if todo:
        student = [ys.prompt_ids[n] for n in todo]
        # z is the feedback alone: no success threshold is reachable, so no peer becomes a demo (the
        # posterior check needs z to be a function of (x, y))
        contexts = build_teacher_contexts(tokenizer, examples, ys.group, ys.texts, outcomes, success_threshold=math.inf,
                                          chat_template_kwargs=cfg.chat_template_kwargs)
        teacher = [contexts.context_ids[n] for n in todo]
        checks = telescoping(model, tokenizer, student, teacher, [ys.response_ids[n] for n in todo],
                             cfg.temperature, micro_batch=cfg.batch_size)
        for n, c in zip(todo, checks):
            items[n].update(c)
    return {"config": vars(cfg) | {"task": task.name}, "items": items, "summary": summarize(items)}


def summarize(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    checked = [i for i in items if "sum_dv" in i]
    with_post = [i for i in checked if "empirical_pmi" in i]
    dv = [i["sum_dv"] for i in with_post]
    emp = [i["empirical_pmi"] for i in with_post]
    return {
        "items": len(items),
        "checked": len(checked),
        "skipped": len(items) - len(checked),
        "max_abs_diff": max((abs(i["diff"]) for i in checked), default=None),
        "mean_sum_dv": sum(i["sum_dv"] for i in checked) / len(checked) if checked else None,
        "pearson_dv_vs_empirical_pmi": pearson(dv, emp),
        "spearman_dv_vs_empirical_pmi": spearman(dv, emp),
    }


def rollout_telescoping(model, tokenizer, records: Sequence[dict[str, Any]], temperature: float = 1.0,
                        micro_batch: int | None = None, chat_template_kwargs: dict | None = None) -> dict[str, Any]:
    """The telescoping check on a run's recorded rollouts (original response and context ids; a record
    without its teacher context gets one from the loop's builders, with ``chat_template_kwargs``)."""
    from credit.analysis.runfiles import loop_contexts

    student, teacher, responses, items = [], [], [], []
    for rec in records:
        built = loop_contexts(tokenizer, rec["prompt_messages"], feedback=rec.get("feedback") or None,
                              demo=rec.get("demo"), chat_template_kwargs=chat_template_kwargs)
        ctx = rec.get("teacher_context_ids") or (built["teacher"] if built["has_signal"] else None)
        if not ctx:
            items.append({"where": rec["_where"], "skipped": "no demo and no feedback: no teacher signal"})
            continue
        if not rec["response_ids"]:
            items.append({"where": rec["_where"], "skipped": "empty response"})
            continue
        student.append(built["student"])
        teacher.append(list(ctx))
        responses.append(rec["response_ids"])
        items.append({"where": rec["_where"], "tokens": len(rec["response_ids"]), "reward": rec.get("reward"),
                      "feedback": rec.get("feedback")})
    checks = telescoping(model, tokenizer, student, teacher, responses, temperature, micro_batch) if responses else []
    it = iter(checks)
    for item in items:
        if "skipped" not in item:
            item.update(next(it))
    return {"items": items, "summary": summarize(items)}


# ----------------------------------------------------------------------------- output


def item_names(items: Sequence[dict[str, Any]]) -> tuple[list[str], str]:
    """Short item names for the table, and the file they come from: ``line 12`` of a rollouts file
    (its path, often long and temporary, goes in the title once), else the example id."""
    files = {str(i["where"]).rpartition(":")[0] for i in items if "where" in i}
    if len(files) == 1:
        return [f"line {str(i['where']).rpartition(':')[2]}" if "where" in i else str(i.get("example", ""))
                for i in items], files.pop()
    return [str(i.get("example", i.get("where", ""))) for i in items], ""


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    names, source = item_names(result["items"])
    table = Table(title="pMI checks (live teacher)" + (f": {source}" if source else ""))
    # Σ ΔV: training scoring path; pMI: log π(y|c) − log π(y|x) from two independent passes
    for col in ("item", "tok", "reward", "Σ ΔV", "pMI", "diff", "P̂(z|x)", "−log P̂"):
        if col == "item":  # never cut an id: fold it onto several lines
            table.add_column(col, justify="left", overflow="fold", min_width=min(max(map(len, names), default=4), 24))
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for name, i in zip(names, result["items"]):
        if "skipped" in i:
            table.add_row(name, str(i.get("tokens", "")), viz.format_number(i.get("reward", "")),
                          "skipped", *["-"] * 4)  # the reason is in the JSON ("skipped")
            continue
        p = f"{math.exp(i['log_p_z_given_x']):.3f}" if "log_p_z_given_x" in i else "-"
        e = f"{i['empirical_pmi']:.3f}" if "empirical_pmi" in i else "-"
        table.add_row(name, str(i["tokens"]), viz.format_number(i.get("reward", "")), f"{i['sum_dv']:.4f}",
                      f"{i['pmi']:.4f}", f"{i['diff']:.2e}", p, e)
    console = Console()
    console.print(table)
    s = result["summary"]
    console.print("Σ ΔV: training scoring path; pMI: log π(y|c) − log π(y|x) from two independent forward "
                  "passes; P̂(z|x): fraction of M samples y' with the same feedback (y counted)")
    line = (f"checked {s['checked']} of {s['items']}; max |Σ ΔV − pMI| = "
            f"{'n/a' if s['max_abs_diff'] is None else viz.format_number(s['max_abs_diff'])}")
    if any("empirical_pmi" in i for i in result["items"]):  # the posterior check ran (not --rollouts)
        pearson_, spearman_ = s["pearson_dv_vs_empirical_pmi"], s["spearman_dv_vs_empirical_pmi"]
        line += (f"; corr(Σ ΔV, −log P̂(z|x)) = {'n/a' if pearson_ is None else f'{pearson_:.3f}'} (Spearman "
                 f"{'n/a' if spearman_ is None else f'{spearman_:.3f}'}; n/a: fewer than 2 items or no spread)")
    console.print(line)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from credit.analysis.runfiles import add_chat_template_arg, add_common_model_args

    p = sub.add_parser(
        "pmi", help="check Σ ΔV against log π(y|c) − log π(y|x) and the empirical pMI −log P̂(z|x)",
        description="Telescoping check (scoring path vs two independent forward passes) and, for a task "
                    "whose feedback is a deterministic function of (x, y), the posterior-compatibility "
                    "check with P(z|x) estimated from M samples. Or, with --rollouts, the telescoping "
                    "check on a run's recorded rollouts.")
    add_common_model_args(p)
    p.add_argument("--task", help="task name (run: task.name; else addition)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="task option, e.g. answer_feedback=true (repeatable; run: added to task.options)")
    add_chat_template_arg(p)
    p.add_argument("--rollouts", help="a run's rollouts.jsonl: telescoping check on its records instead")
    p.add_argument("--limit", type=int, default=16, help="with --rollouts: the first N records (default 16)")
    d = PMIConfig()
    p.add_argument("--split", default=d.split, help=f"(default {d.split})")
    p.add_argument("-n", "--num-examples", type=int, default=d.num_examples, help=f"(default {d.num_examples})")
    p.add_argument("--responses-per-example", type=int, default=d.responses_per_example,
                   help=f"responses y checked per example (default {d.responses_per_example})")
    p.add_argument("-m", "--mc-samples", type=int, default=d.mc_samples,
                   help=f"M samples y' ~ π(·|x) to estimate P(z|x) (default {d.mc_samples})")
    p.add_argument("--temperature", type=float, help=f"(run: rollout.temperature; else {d.temperature})")
    p.add_argument("--max-new-tokens", type=int, help=f"(run: rollout.max_new_tokens; else {d.max_new_tokens})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument("--json", dest="json_out", help="write the full result as JSON here")
    p.set_defaults(func=run, command="pmi")


@viz.cli_entry
def run(args) -> int:
    from credit.analysis.runfiles import apply_run_config, load_model_from_args, read_rollouts, run_setting, task_from_args

    d = PMIConfig()
    apply_run_config(args, {"chat_template_kwargs": run_setting("model.chat_template_kwargs"),
                            "temperature": run_setting("rollout.temperature"),
                            "max_new_tokens": run_setting("rollout.max_new_tokens")},
                     {"task": "addition", "temperature": d.temperature, "max_new_tokens": d.max_new_tokens})
    if args.rollouts:
        if args.temperature <= 0:
            raise UserError("--temperature must be > 0")
        records = read_rollouts(args.rollouts, args.limit)
        if not records:
            raise UserError(f"{args.rollouts}: holds no rollout records")
        model, tokenizer = load_model_from_args(args)
        from credit.analysis.runfiles import check_ids_fit, check_rollout_tokenizer

        for rec in records:
            check_rollout_tokenizer(tokenizer, rec)
            check_ids_fit(model, tokenizer, rec["response_ids"])
        result = rollout_telescoping(model, tokenizer, records, args.temperature,
                                     chat_template_kwargs=args.chat_template_kwargs)
    else:
        cfg = PMIConfig(split=args.split, num_examples=args.num_examples,
                        responses_per_example=args.responses_per_example, mc_samples=args.mc_samples,
                        temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, seed=args.seed, chat_template_kwargs=args.chat_template_kwargs)
        task = task_from_args(args)
        model, tokenizer = load_model_from_args(args)
        result = pmi_report(model, tokenizer, task, cfg)
    print_table(result)
    if args.json_out:
        viz.write_json(args.json_out, result)
    return 0
