"""``credit eval``: held-out mean@n, pass@k and maj@n of a model, a checkpoint or a run directory.

The command line of ``credit.evaluate.evaluate`` (the loop's own held-out evaluation). With ``--model``
a run directory (or its ``final/`` or a checkpoint in it), every option marked "run:" defaults to the
run's ``config.yaml``, so the run is evaluated as it evaluated itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from credit.analysis import viz
from credit.evaluate import evaluate, headline


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = headline(result)
    table = Table(title=f"{result['task']} / {result['split']}: {result['num_items']} items × n={result['n']} "
                        f"(T={result['temperature']}, scorer {result.get('scorer')})")
    for k in metrics:
        table.add_column(k, justify="right")
    table.add_row(*(f"{v:.4f}" for v in metrics.values()))
    console = Console()
    console.print(table)
    console.print(f"{result['seconds']:.1f} s, {result['tokens_per_s']:.0f} tokens/s, mean response "
                  f"{result['response_len_mean']:.1f} tokens (at most {result['max_new_tokens']}), truncated "
                  f"{result['truncated_frac']:.1%}")
    if result.get("run_config"):
        console.print(f"settings from the run config {result['run_config']} (flags override them)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from credit.analysis.runfiles import add_chat_template_arg, add_common_model_args
    from credit.rollout import ENGINES

    p = sub.add_parser("eval", help="mean@n, pass@k, maj@n of a model or checkpoint on a task's held-out split",
                       description="Sample n responses per item of a task split (batched), score them, and "
                                   "report mean@n, unbiased pass@k and maj@n. With --model a run directory (or "
                                   "its final/ or a checkpoint in it), every option marked 'run:' defaults to "
                                   "the run's config.yaml, so the run is evaluated as it evaluated itself.")
    add_common_model_args(p)
    d = EVAL_DEFAULTS
    p.add_argument("--task", help="task name (run: task.name; else addition)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="task option (repeatable; run: added to task.options)")
    p.add_argument("--split", default="test", help="(default test)")
    p.add_argument("-n", "--num-samples", type=int, help=f"samples per item (run: eval.samples; else {d['num_samples']})")
    p.add_argument("-k", type=int, action="append", dest="ks", help="pass@k to report (repeatable; default 1,2,4..n)")
    p.add_argument("--temperature", type=float, help=f"(run: eval.temperature; else {d['temperature']})")
    p.add_argument("--top-p", type=float, default=1.0, help="(default 1.0)")
    p.add_argument("--max-new-tokens", type=int,
                   help=f"(run: eval.max_new_tokens, else rollout.max_new_tokens; else {d['max_new_tokens']})")
    p.add_argument("--batch-size", type=int,
                   help=f"sequences per generate call; each has its own seed (run: rollout.micro_batch; else {d['batch_size']})")
    p.add_argument("--seed", type=int, help=f"(run: seed; else {d['seed']})")
    p.add_argument("--backend", choices=list(ENGINES),
                   help=f"the rollout engine that decodes (credit.rollout.ENGINES; run: rollout.backend; else {d['backend']})")
    add_chat_template_arg(p)
    p.add_argument("--limit", type=int, help="only the first N items (run: eval.limit)")
    p.add_argument("--success-threshold", type=float, default=1.0, help="reward counted as correct (default 1.0)")
    p.add_argument("--json", dest="json_out", help="write the full result (with per-item data) as JSON here")
    p.set_defaults(func=run, command="eval")


#: ``credit eval``'s defaults when ``--model`` is not a run (the held-out settings of the default config).
EVAL_DEFAULTS = {"task": "addition", "num_samples": 4, "temperature": 0.7, "max_new_tokens": 64, "batch_size": 64,
                 "seed": 0, "backend": "generate"}


def run_defaults():
    """Which run setting each option takes: what ``credit.train.evaluate_model`` passes to ``evaluate``."""
    from credit.analysis.runfiles import run_setting

    return {"num_samples": run_setting("eval.samples"), "temperature": run_setting("eval.temperature"),
            "max_new_tokens": run_setting("eval.max_new_tokens", "rollout.max_new_tokens"),
            "batch_size": run_setting("rollout.micro_batch"), "seed": run_setting("seed"),
            "backend": run_setting("rollout.backend"), "limit": run_setting("eval.limit"),
            "chat_template_kwargs": run_setting("model.chat_template_kwargs")}


@viz.cli_entry
def run(args) -> int:
    from credit.analysis.runfiles import apply_run_config, load_model_from_args, task_from_args

    run_config = apply_run_config(args, run_defaults(), EVAL_DEFAULTS)
    task = task_from_args(args)
    model, tokenizer = load_model_from_args(args)
    result = evaluate(model, tokenizer, task, split=args.split, n=args.num_samples, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                      ks=args.ks, limit=args.limit, success_threshold=args.success_threshold, top_p=args.top_p,
                      backend=args.backend, chat_template_kwargs=args.chat_template_kwargs, progress=True)
    if run_config is not None:
        result["run_config"] = str(run_config)
    print_table(result)
    if args.json_out:
        viz.write_json(args.json_out, result)
    return 0
