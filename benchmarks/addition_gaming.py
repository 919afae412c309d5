"""How much a fixed string that knows nothing earns on the addition task, per scorer (issue 9).

The lenient rule (the TRL peer's: any number equal to a + b anywhere) pays for listing numbers; the
strict rule (the number the response ends with) pays a list only what its last number is worth.
Prints, for each fixed string, the fraction of the split's prompts it scores 1 on under each scorer.

    python benchmarks/addition_gaming.py [--split train]
"""

from __future__ import annotations

import argparse

from credit.tasks.math import AdditionTask

GAMING = {
    "1 2 3 ... 40": " ".join(str(i) for i in range(1, 41)),
    "eight most common sums": "17 18 19 20 21 22 23 24",  # a, b in 1..20: sums 17..24 cover the middle
    "the single most common sum": "21",                     # an honest constant guess, for scale
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="train", choices=["train", "test"])
    args = p.parse_args()
    print(f"{args.split} split: fraction of prompts a fixed string scores 1 on")
    print(f"{'string':<28}" + "".join(f"{s:>18}" for s in AdditionTask.SCORERS))
    tasks = [AdditionTask(scorer=s) for s in AdditionTask.SCORERS]
    for label, text in GAMING.items():
        cells = []
        for task in tasks:
            examples = task.examples(args.split)
            hits = int(sum(task.score(e, text).reward for e in examples))
            cells.append(f"{hits:>4}/{len(examples)} = {hits / len(examples):.3f}")
        print(f"{label:<28}" + "".join(f"{c:>18}" for c in cells))

if __name__ == "__main__":
    main()
