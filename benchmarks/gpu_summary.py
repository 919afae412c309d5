"""Last step of ``benchmarks/gpu.sh``: which parts wrote records, as ``summary.json`` and a table.

Reads ``parts.tsv`` (one line per part that ran: name, JSONL file, exit status, seconds, time limit)
and counts each JSONL's records: ``setup`` lines are not records; a line with ``error`` is a failed
measurement (part b's out-of-memory is a result), one with ``skipped`` says why a part did not run.
A torn last line (a process killed while writing) is counted apart and ignored. Exit status 1 when a
part wrote no record, or when a part of ``--require-measured`` measured nothing. Standard library only.

    python benchmarks/gpu_summary.py out --require-measured a,c,d
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def count(path: Path) -> dict:
    """Records of one JSONL file by what they are."""
    out = {"records": 0, "measured": 0, "errors": 0, "skipped": 0, "torn": 0}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            out["torn"] += 1
            continue
        if rec.get("kind") == "setup" and "error" not in rec:
            continue
        out["records"] += 1
        key = "skipped" if "skipped" in rec else "errors" if rec.get("error") else "measured"
        out[key] += 1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="gpu.sh's output folder (holds parts.tsv)")
    p.add_argument("--require-measured", default="", help="parts that must have measured something")
    args = p.parse_args(argv)
    parts = {}
    for line in (args.out / "parts.tsv").read_text().splitlines():
        name, jsonl, rc, seconds, limit = line.split("\t")
        parts[name] = {"jsonl": jsonl, "exit": int(rc), "seconds": int(seconds), "limit_s": int(limit),
                       "timed_out": int(rc) in (124, 137), **count(args.out / jsonl)}
    required = [x for x in args.require_measured.split(",") if x]
    failed = [n for n, r in parts.items() if r["records"] == 0] + [
        n for n in required if n in parts and parts[n]["measured"] == 0 and parts[n]["records"]]
    (args.out / "summary.json").write_text(json.dumps({"parts": parts, "failed": failed}, indent=1))
    print(f"{'part':<4} {'file':<18} {'records':>7} {'measured':>8} {'errors':>6} {'skipped':>7} {'exit':>4} "
          f"{'s':>5} {'limit':>5}")
    for name, r in parts.items():
        note = " (cut by its time limit)" if r["timed_out"] else ""
        print(f"{name:<4} {r['jsonl']:<18} {r['records']:>7} {r['measured']:>8} {r['errors']:>6} {r['skipped']:>7} "
              f"{r['exit']:>4} {r['seconds']:>5} {r['limit_s']:>5}{note}")
    if failed:
        print(f"FAILED: part(s) {', '.join(sorted(set(failed)))} wrote no record"
              + (f", or measured nothing where a measurement is required ({','.join(required)})" if required else ""))
        return 1
    print("every part wrote its records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
