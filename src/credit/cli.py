"""The ``credit`` command: train, eval, explain, pmi, report, bench."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from credit.errors import SetupError, one_line

# Before anything loads torch (OpenMP reads it once, when it loads): an OpenMP thread with nothing to do
# sleeps instead of spinning on a core that another process needs. Beside one busy process a step took
# 1.5x its idle time instead of 3.1x (credit.threads, BENCHMARKS.md §5). The environment's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# subcommands that live in their own modules; each has add_parser(subparsers) and run(args)
SUBCOMMAND_MODULES = [f"credit.analysis.{verb}"
                      for verb in ("eval_cli", "explain", "pmi", "report", "bench", "sweep", "plan")]


def _train(args) -> int:
    from credit.config import describe, load_config

    if args.help_config:
        print(describe())
        return 0
    positional = [args.config, *args.overrides] if args.config is not None else list(args.overrides)
    resume = args.resume
    # `--resume` takes an optional PATH, so argparse may have given it the config or an override that followed it
    if isinstance(resume, str) and resume.endswith((".yaml", ".yml")):
        positional, resume = [resume, *positional], True
    elif isinstance(resume, str) and "=" in resume and not os.path.exists(resume):
        positional, resume = [*positional, resume], True
    config, overrides = (positional[0], positional[1:]) if positional else (None, [])
    if config is not None and "=" in config and not os.path.exists(config):  # no file, only overrides
        config, overrides = None, positional
    cfg = load_config(config, overrides)  # validated before any model loads
    from credit.train import train

    summary = train(cfg, resume=resume, overwrite=args.overwrite)
    before = summary.get("eval_before", {})
    after = summary.get("eval_after", {})
    key = next((k for k in after if k.startswith("mean@")), None)
    if key and os.environ.get("RANK", "0") == "0":  # launched processes: the closing line once
        start = f"{before[key]:.3f}" if key in before else "not measured (eval.before: false)"
        print(f"held-out {key}: {start} -> {after[key]:.3f} "
              f"({summary['train_wall_s']:.0f} s training, run dir {cfg.out_dir})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="Train with GRPO, SDPO or CREDIT from a YAML config.")
    p.add_argument("config", nargs="?", help="YAML config (see configs/); omitted: all defaults")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. credit.lam=0.3")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="Continue the run in out_dir from its checkpoint.pt, or from PATH (a checkpoint file or a run "
                        "directory). The config may change only in what can apply; the log says what changed.")
    p.add_argument("--overwrite", action="store_true", help="Delete the run already in out_dir (only the files a run "
                   "writes) and start over.")
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("credit-distill")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    # The Hub is used when reachable; offline only when the user or the environment sets HF_HUB_OFFLINE
    # (models.load_model then says which model is missing from the cache).
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # `credit train CONFIG --overwrite key=value`: overrides after a flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from credit.runs import Interrupted

    try:
        return args.func(args)
    except Interrupted as e:  # a checkpoint was saved; 128 + the signal, as a shell reports it
        print(f"credit {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C while the step finished, or one outside the training loop
        print(f"credit {args.command}: interrupted (Ctrl-C); nothing saved since the last checkpoint", file=sys.stderr)
        return 130
    except (ValueError, ImportError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, SetupError) as e:
        print(f"credit {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
