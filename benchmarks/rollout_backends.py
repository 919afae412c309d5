"""Rollout backends side by side: transformers ``generate`` vs the row-dropping ``loop`` vs ``static``.

Three settings, each a fixed set of prompts sampled by every backend in turn (interleaved, ``--repeats``
rounds, medians), so that a shared, noisy machine slows every backend alike:

- ``quickstart``: the quickstart's rollout, 8 addition prompts x 8 samples, <= 24 tokens, T = 1;
- ``eval``: the held-out evaluation, 60 items x 4 samples, <= 24 tokens, T = 0.7;
- ``forced``: 8 prompts x 8 samples of exactly ``--forced-len`` tokens (eos suppressed): no row ends
  early, so this is the per-token cost alone.

Responses end on their own only with a trained model (SmolLM2, the default); with random weights
(``--model qwen3-0.6b`` on a GPU) only ``forced`` is meaningful.

Warm-up, just before a backend's first timed call: ``generate`` and ``loop`` sample 2 prompts x 2;
``static`` samples the setting's own batch once, because its compiled decode step (CUDA) is specialised
to the batch and cache shape, and a smaller warm-up would compile it a second time inside the timed
round. ``--jsonl`` appends one line per sampling call (warm-ups included, marked) as it finishes, so a
run cut short keeps what it timed (the backends in ``--backends`` order).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rollout_backends.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from credit.bench import append_jsonl, prepare_model
from credit.models import load_model
from credit.rollout import SamplingConfig, encode_prompts, sample
from credit.tasks import build_task


def settings(task, forced_len: int) -> dict[str, tuple[list, SamplingConfig]]:
    train = [e.messages for e in task.examples("train")[:8]]
    test = [e.messages for e in task.examples("test")[:60]]
    return {
        "quickstart": (train, SamplingConfig(num_samples=8, max_new_tokens=24, temperature=1.0, seed=0)),
        "eval": (test, SamplingConfig(num_samples=4, max_new_tokens=24, temperature=0.7, seed=0,
                                      micro_batch_size=64)),
        "forced": (train, SamplingConfig(num_samples=8, max_new_tokens=forced_len, min_new_tokens=forced_len,
                                         temperature=1.0, seed=0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="smollm2-135m-instruct (default) | an architecture with random weights (qwen3-0.6b) | a path")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default="generate,loop,static")
    ap.add_argument("--settings", default="quickstart,eval,forced")
    ap.add_argument("--forced-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--jsonl", help="append one JSON line per sampling call here as it finishes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        name = prepare_model(args.model, args.dtype, folder, args.device)
        model, tok = load_model(name, dtype=args.dtype, device=args.device)
    task = build_task("addition")
    backends = args.backends.split(",")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    result = {"model": args.model, "dtype": args.dtype, "device": args.device, "device_name": device_name,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "settings": {}}
    emit = (lambda rec: append_jsonl(args.jsonl, rec)) if args.jsonl else (lambda rec: None)
    for label in args.settings.split(","):
        conversations, cfg = settings(task, args.forced_len)[label]
        prompts = encode_prompts(tok, conversations)
        where = {"kind": "rollout", "setting": label, "model": args.model, "dtype": args.dtype,
                 "device": device_name, "sequences": len(prompts) * cfg.num_samples,
                 "max_new_tokens": cfg.max_new_tokens}
        runs = {b: [] for b in backends}
        for r in range(args.repeats):
            for backend in backends:
                if r == 0:  # its warm-up (and, for static on CUDA, its one compilation) just before its first round
                    t0 = time.perf_counter()
                    if backend == "static":
                        sample(model, tok, prompts, cfg, backend=backend)
                    else:
                        sample(model, tok, prompts[:2], cfg, num_samples=2, backend=backend)
                    emit({**where, "backend": backend, "warmup": True, "seconds": time.perf_counter() - t0})
                out = sample(model, tok, prompts, cfg, backend=backend)
                runs[backend].append((out.seconds, out.tokens, sum(len(y) for y in out.response_ids)))
                emit({**where, "backend": backend, "warmup": False, "round": r + 1, "seconds": out.seconds,
                      "tokens": out.tokens, "tokens_per_s": out.tokens / out.seconds})
        rows = {}
        for backend, rs in runs.items():
            seconds = statistics.median(r[0] for r in rs)
            tokens = statistics.median(r[1] for r in rs)
            rows[backend] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        for backend in backends:
            rows[backend]["speedup"] = rows[backends[0]]["seconds"] / rows[backend]["seconds"]
        result["settings"][label] = {"sequences": len(prompts) * cfg.num_samples, "max_new_tokens": cfg.max_new_tokens,
                                     "backends": rows}
        print(f"{label}: {len(prompts)} prompts x {cfg.num_samples}, <= {cfg.max_new_tokens} tokens")
        for backend, r in rows.items():
            print(f"  {backend:9s} {r['seconds']:7.2f} s  {r['tokens_per_s']:8.1f} tokens/s  "
                  f"x{r['speedup']:.2f} vs {backends[0]}  ({r['tokens']:.0f} tokens)", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
