"""What a run's policy learned to write: does it restate the input, and does it end on the answer?

The signal analysis (signal_share.py) shows that S, the input-specific part of the credit, puts half
its mass on tokens that copy the problem's numbers. This reads the other end: over the rollouts a
run logged late in training (``rollouts.jsonl``, ``step >= --from-step``), the share of responses that

- **restate** the input: every operand of the prompt (its first two numbers) is a number of the
  response;
- are **correct**: the logged reward, the task's strict scorer, is 1.

A policy paid for restating but not for computing restates and does not get the answer right.

    python study/behaviour.py RUN_DIR [RUN_DIR ...] --from-step 20
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

NUMBER = re.compile(r"\d+")


def restates(prompt: str, response: str) -> bool:
    """Every operand (the prompt's first two numbers) is one of the response's numbers."""
    operands = NUMBER.findall(prompt)[:2]
    said = set(NUMBER.findall(response))
    return bool(operands) and all(x in said for x in operands)


def behaviour(records: list[dict], from_step: int) -> dict:
    late = [r for r in records if r["step"] >= from_step]
    if not late:
        raise ValueError(f"no logged rollout at step >= {from_step}")
    n = len(late)
    return {
        "rollouts": n,
        "steps": sorted({r["step"] for r in late}),
        "restates": sum(restates(r["prompt_messages"][-1]["content"], r["response"]) for r in late) / n,
        "correct": sum(r["reward"] >= 1.0 for r in late) / n,
        "response_tokens": sum(len(r["response_ids"]) for r in late) / n,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories holding rollouts.jsonl")
    p.add_argument("--from-step", type=int, default=20, help="read rollouts logged at this step or later")
    args = p.parse_args(argv)
    print(f"rollouts logged at step >= {args.from_step}\n")
    print("| run | rollouts | restates the input | correct (strict) | response tokens |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        path = run / "rollouts.jsonl"
        try:  # a missing or torn log is one line naming the file, not a traceback
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            b = behaviour(records, args.from_step)
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"{path}: {type(e).__name__}: {e}") from None
        print(f"| {run} | {b['rollouts']} | {b['restates']:.2f} | {b['correct']:.2f} | {b['response_tokens']:.1f} |")


if __name__ == "__main__":
    main()
