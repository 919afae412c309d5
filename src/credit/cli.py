"""The ``credit`` command: train, eval, explain, pmi, report, bench."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommands that live in their own modules; each has add_parser(subparsers) and run(args)
SUBCOMMAND_MODULES = ["credit.evaluate", "credit.explain", "credit.pmi", "credit.report", "credit.bench"]


def _train(args) -> int:
    from credit.config import describe, load_config

    if args.help_config:
        print(describe())
        return 0
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.exists(config):  # no file, only overrides
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)  # validated before any model loads
    from credit.train import train

    summary = train(cfg, resume=args.resume)
    before = summary.get("eval_before", {})
    after = summary.get("eval_after", {})
    key = next((k for k in after if k.startswith("mean@")), None)
    if key:
        print(f"held-out {key}: {before.get(key, float('nan')):.3f} -> {after[key]:.3f} "
              f"({summary['train_wall_s']:.0f} s training, run dir {cfg.out_dir})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="Train with GRPO, SDPO or CREDIT from a YAML config.")
    p.add_argument("config", nargs="?", help="YAML config (see configs/); omitted: all defaults")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. credit.lam=0.3")
    p.add_argument("--resume", action="store_true", help="Continue from out_dir/checkpoint.pt if present.")
    p.add_argument("--help-config", action="store_true", help="List every config field with its default and help.")
    p.set_defaults(func=_train)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"credit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
