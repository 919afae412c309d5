"""Part b of ``benchmarks/gpu.sh``: does the training step run on a large model with LoRA, and its peak memory.

The step of ``credit bench`` (``credit.analysis.bench.Bench``: rollout, teacher, negatives, update, EMA on a fixed
synthetic batch) with LoRA adapters, on the architectures of ``--models`` in turn, largest first,
with random bf16 weights. A model whose step runs ends the list: it is the largest that fits. A step
that fails — out of memory or anything else — is a record too: its error, one line. Each step (and a
model that cannot even be built) is appended to ``--jsonl`` as one JSON line when it ends.

One step per method, no warm-up (building an 8B model costs more than a step): its seconds include
first-call costs; the memory and whether it runs are what this part is for.

    python benchmarks/gpu_lora.py --models qwen3-8b,qwen3-4b --dtype bfloat16 -B 8 -G 8 \
        --prompt-len 64 --response-len 512 --micro-batch 4 --jsonl out/lora.jsonl
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from credit.analysis.bench import Bench, append_jsonl, error_line, free_memory, methods_for


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="qwen3-8b,qwen3-4b", help="architectures to try, largest first")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("-B", "--prompts", type=int, default=8)
    p.add_argument("-G", "--samples", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    p.add_argument("--methods", default="credit-token-k1,sdpo-token", help="labels of credit bench, in this order")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--override", action="append", default=[], help="more config overrides (section.key=value)")
    p.add_argument("--jsonl", required=True)
    args = p.parse_args(argv)

    emit = functools.partial(append_jsonl, args.jsonl)
    wanted = args.methods.split(",")
    known = {m.label: m for m in methods_for((1,), 100, args.prompts)}
    methods = [known[label] for label in wanted]
    overrides = (f"model.lora.r={args.lora_r}", f"model.lora.alpha={2 * args.lora_r}", *args.override)
    for model in args.models.split(","):
        t0 = time.perf_counter()
        try:
            bench = Bench(model=model, prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
                          response_len=args.response_len, micro_batch=args.micro_batch, dtype=args.dtype,
                          methods=methods, overrides=overrides)
        except Exception as e:  # out of memory (or disk) while drawing or saving the weights
            error = error_line(e)
        else:
            error = None
        if error is not None:
            free_memory()
            emit({"kind": "setup", "model": model, "error": error, "seconds": time.perf_counter() - t0})
            print(f"{model}: cannot be built: {error}", flush=True)
            continue
        print(f"{model}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            result = bench.run(repeats=1, warmup=0, keep_going=True,
                               record=lambda rec: emit({**rec, "model": model, "lora_r": args.lora_r}))
        finally:
            bench.close()
            del bench
            free_memory()
        if result["methods"]:  # some step ran: the largest model that fits
            if torch.cuda.is_available():
                print(f"{model}: device memory {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
            for label, m in result["methods"].items():
                print(f"{model} {label}: step {m['seconds']['step']:.2f} s, peak {m['peak_mem_gib']:.2f} GiB",
                      flush=True)
            return 0
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
