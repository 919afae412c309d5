"""What the signal does (issue 12, item 6): where |ΔV_t| and |S_t| put their mass on a response.

Over the rollouts a run logged (``rollouts.jsonl``: response ids, the teacher context it was scored
under, the demo/feedback, the negative prompts), each response token is put in a class by what it
depends on, and ΔV_t and S_t are recomputed with ``credit.analysis.explain.explain`` (a *live* teacher: the
given model scores student, teacher and negative contexts; the training-time teacher was an EMA of
it, so this reads the signal's shape, not the exact training values).

Addition (``What is a + b?``; or a × b, a − b with the task's ``op``, read from the run's
``config.yaml``): a token whose text is digits found in ``a`` or ``b`` is **copied** from the input;
digits of the result that are not copied are **computed**; everything else is **generic** (words,
punctuation, other numbers). The CREDIT claim, quantified: the input-specific
part S should put a larger share of its mass on copied/computed tokens than ΔV does.

    python study/signal_share.py RUN_DIR [RUN_DIR ...] --model smollm2-135m-instruct --out study/signal
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

from credit.tasks.math import AdditionTask

CLASSES = ("copied", "computed", "generic")


def operands(messages: list[dict]) -> tuple[str, str] | None:
    found = re.findall(r"\d+", messages[-1]["content"])
    return (found[0], found[1]) if len(found) >= 2 else None


def token_class(piece: str, a: str, b: str, op: str = "+") -> str:
    digits = piece.strip()
    if not digits.isdigit():
        return "generic"
    if digits in a or digits in b:
        return "copied"
    if digits in str(AdditionTask.OPS[op][1](int(a), int(b))):
        return "computed"
    return "generic"


def run_op(run: Path) -> str:
    """The run's arithmetic operator (``task.options.op``, "+" when absent)."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return str(((cfg.get("task") or {}).get("options") or {}).get("op", "+"))


def whole_contexts(records: list[dict]) -> list[tuple[list[dict], list[int]]]:
    """(prompt, recorded teacher context) of every logged rollout with a teacher signal: the negatives
    of ``swap="context"``. A run logs a few rollouts of one problem per step, not the teacher contexts
    of its negatives, so each rollout gets one of these drawn from another problem instead of its
    training-time negative (same distribution: another problem with its own demo/feedback)."""
    return [(r["prompt_messages"], list(r["teacher_context_ids"])) for r in records
            if r.get("has_signal") and r.get("teacher_context_ids")]


def analyse(records: list[dict], model, tokenizer, negatives_pool: list[list[dict]], seed: int = 0,
            op: str = "+", whole: list[tuple[list[dict], list[int]]] | None = None) -> dict:
    """``whole``: other problems' whole teacher contexts to draw one negative from (``whole_contexts``,
    ``swap="context"``); None: each negative keeps this rollout's z (``swap="input"``, as trained)."""
    from credit.analysis.explain import explain

    rng = random.Random(seed)
    mass = {name: defaultdict(float) for name in ("dv", "s")}
    signed = {name: defaultdict(float) for name in ("dv", "s")}
    count: dict[str, int] = defaultdict(int)
    used = 0
    for rec in records:
        ab = operands(rec["prompt_messages"])
        if not rec.get("has_signal") or ab is None or not rec["response_ids"]:
            continue
        negs, neg_ctx = rec.get("negative_prompts") or [], None
        if whole is not None:
            others = [w for w in whole if w[0] != rec["prompt_messages"]]
            if not others:
                raise ValueError("swap=context: the log holds no other problem with a teacher signal to contrast with")
            prompt, context = rng.choice(others)
            negs, neg_ctx = [prompt], [context]
        elif not negs:  # SDPO/GRPO runs log no negatives: draw another problem of the pool
            others = [p for p in negatives_pool if p != rec["prompt_messages"]]
            negs = [rng.choice(others)]
        e = explain(model, tokenizer, rec["prompt_messages"], rec["response_ids"], feedback=rec.get("feedback"),
                    demo=rec.get("demo"), negatives=negs, teacher_context_ids=rec.get("teacher_context_ids"),
                    negative_context_ids=neg_ctx)
        used += 1
        for piece, dv, s in zip(e.tokens, e.dv, e.s):
            c = token_class(piece, *ab, op)
            count[c] += 1
            mass["dv"][c] += abs(dv)
            mass["s"][c] += abs(s)
            signed["dv"][c] += dv
            signed["s"][c] += s
    out = {"rollouts": used, "tokens": dict(count), "classes": {}}
    for c in CLASSES:
        n = max(count[c], 1)
        out["classes"][c] = {
            "tokens": count[c],
            "share_abs_dv": mass["dv"][c] / max(sum(mass["dv"].values()), 1e-12),
            "share_abs_s": mass["s"][c] / max(sum(mass["s"].values()), 1e-12),
            "mean_abs_dv": mass["dv"][c] / n, "mean_abs_s": mass["s"][c] / n,
            "mean_dv": signed["dv"][c] / n, "mean_s": signed["s"][c] / n,
        }
    return out


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / (2 * len(results))
    for i, (label, r) in enumerate(results.items()):
        for j, (key, name) in enumerate((("share_abs_dv", "|ΔV|"), ("share_abs_s", "|S|"))):
            xs = [k + (2 * i + j) * width for k in range(len(CLASSES))]
            axes[0].bar(xs, [r["classes"][c][key] for c in CLASSES], width, label=f"{name} {label}")
            axes[1].bar(xs, [r["classes"][c][key.replace("share", "mean")] for c in CLASSES], width,
                        label=f"{name} {label}")
    for ax, title in zip(axes, ("share of the mass per token class", "mean |value| per token")):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(CLASSES))], CLASSES)
        ax.set_title(title)
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(1.1, -0.12), ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories with rollouts.jsonl")
    p.add_argument("--model", default="smollm2-135m-instruct", help="the live teacher/student (default: base model)")
    p.add_argument("--limit", type=int, default=200, help="rollouts per run (default 200)")
    p.add_argument("--out", default="study/signal", help="folder for signal_share.json and signal_share.png")
    p.add_argument("--swap", choices=("input", "context"), default="input",
                   help="negatives keep this rollout's demo/feedback and swap the input (default, as trained), "
                        "or are the other problem's whole teacher context (credit.swap=context)")
    args = p.parse_args()

    from credit.models import load_model

    model, tok = load_model(args.model)
    results = {}
    for run in args.runs:
        lines = Path(run, "rollouts.jsonl").read_text().splitlines()
        every = [json.loads(line) for line in lines]
        records = every[: args.limit]
        pool = [r["prompt_messages"] for r in records]
        whole = whole_contexts(every) if args.swap == "context" else None
        label = Path(run).parent.name + "/" + Path(run).name
        results[label] = analyse(records, model, tok, pool, op=run_op(Path(run)), whole=whole)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "signal_share.json").write_text(json.dumps({"model": args.model, "swap": args.swap, "runs": results}, indent=2))
    plot(results, out / "signal_share.png")
    for label, r in results.items():
        print(label, r["rollouts"], "rollouts")
        for c in CLASSES:
            x = r["classes"][c]
            print(f"  {c:9s} {x['tokens']:5d} tokens  share |ΔV| {x['share_abs_dv']:.3f}  share |S| {x['share_abs_s']:.3f}"
                  f"  mean |ΔV| {x['mean_abs_dv']:.3f}  mean |S| {x['mean_abs_s']:.3f}")


if __name__ == "__main__":
    main()
