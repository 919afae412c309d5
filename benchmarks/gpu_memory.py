"""Part d of ``benchmarks/gpu.sh``: ``benchmarks/memory.py`` one variant at a time, one JSON line each.

``memory.py`` writes its table when every variant has run; here each variant is its own ``memory.py
--variants V`` run, so a part cut by its timeout keeps the variants it finished. The variants are
``memory.VARIANTS`` as that file has them now; every other option is passed through unchanged.

    python benchmarks/gpu_memory.py --jsonl out/memory.jsonl -- --device cuda --dtype bfloat16 \
        --vocab 151936 --tokens 4096 --backward
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMORY = Path(__file__).with_name("memory.py")


def variants() -> list[str]:
    spec = importlib.util.spec_from_file_location("credit_bench_memory", MEMORY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its top level imports only the standard library
    return list(module.VARIANTS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jsonl", required=True)
    p.add_argument("--variants", help="comma-separated (default: all of memory.VARIANTS)")
    p.add_argument("memory_args", nargs=argparse.REMAINDER, help="-- then memory.py's options")
    args = p.parse_args(argv)
    passed = [a for a in args.memory_args if a != "--"]
    status = 0
    for variant in (args.variants.split(",") if args.variants else variants()):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "memory.json"
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, str(MEMORY), *passed, "--variants", variant, "--json", str(out)],
                                  capture_output=True, text=True)
            record = {"kind": "memory", "variant": variant, "seconds_wall": time.perf_counter() - t0}
            if done.returncode or not out.exists():
                status = 1
                record["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            else:
                result = json.loads(out.read_text())
                rows = result.pop("rows")
                record.update({**result, **(rows[0] if len(rows) == 1 else {"rows": rows})})
        with open(args.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
