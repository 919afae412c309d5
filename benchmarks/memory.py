"""Peak memory of the log-prob paths with a large vocabulary: chunked (ours) vs a naive full softmax.

Each variant runs in a fresh child process (on ``--device cuda``: ``max_memory_allocated`` instead of RSS) (``python memory.py --child VARIANT ...``) that allocates
the logits, records its RSS, runs the variant (forward, and backward when ``--backward``), and
reports ``ru_maxrss`` (the process's high-water mark). The extra memory of a variant is
``peak − RSS after the logits exist``; the logits themselves (and, with backward, their gradient,
which autograd needs in every variant) are the same for all.

Variants (logits (T, V) predicting T response tokens):
  token-naive      log_softmax(logits.float() / T_s).gather(tokens)          (full fp32 copy)
  token-chunked    credit.signal.token_logprobs (chunked logsumexp, 256 MiB chunks)
  topk-naive       log_softmax(logits.float()) then gather the top-K + tail bucket
  topk-chunked     credit.objectives.support_logprobs(logits, topk_index(logits, K), tail=True)

    python benchmarks/memory.py --vocab 150000 --tokens 4096 --dtype float32 --backward \
        --json benchmarks/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VARIANTS = ("token-naive", "token-chunked", "topk-naive", "topk-chunked")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, vocab: int, tokens: int, dtype: str, backward: bool, k: int, device: str = "cpu") -> dict:
    import time

    import torch

    from credit import objectives as obj
    from credit.signal import naive_token_logprobs, token_logprobs

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    cuda = device.startswith("cuda")
    logits = torch.randn(tokens, vocab, dtype=dt, device=device).requires_grad_(backward)  # (T, V)
    ids = torch.randint(0, vocab, (tokens,), device=device)
    index = logits.detach().topk(k, dim=-1).indices if variant.startswith("topk") else None  # (T, K)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if variant == "token-naive":
            out = naive_token_logprobs(logits, ids)
        elif variant == "token-chunked":
            out = token_logprobs(logits, ids)
        elif variant == "topk-naive":
            full = torch.log_softmax(logits.float(), dim=-1)
            top = full.gather(-1, index)
            tail = torch.log(-torch.expm1(torch.logsumexp(top, -1, keepdim=True).clamp(max=-1e-7)))
            out = torch.cat([top, tail], -1)
        else:
            out = obj.support_logprobs(logits, index, 1.0, tail=True)
        if backward:
            out.float().sum().backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB
    return {"variant": variant, "peak_gib": peak / 2**30, "base_gib": base / 2**30,
            "extra_gib": (peak - base) / 2**30, "seconds": seconds,
            "logits_gib": logits.numel() * logits.element_size() / 2**30}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="peak memory: chunked vs naive log-probs (fresh process per variant)")
    p.add_argument("--vocab", type=int, default=150_000)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backward", action="store_true", help="also backpropagate (the student's path)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (max_memory_allocated)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.vocab, args.tokens, args.dtype, args.backward, args.top_k, args.device)))
        return 0
    rows = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", v, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
               "--dtype", args.dtype, "--top-k", str(args.top_k), "--device", args.device] + (["--backward"] if args.backward else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            rows.append({"variant": v, "error": out.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    res = {"device": args.device, "vocab": args.vocab, "tokens": args.tokens, "dtype": args.dtype, "backward": args.backward,
           "top_k": args.top_k, "rows": rows}
    if args.json_out:
        from credit.viz import write_json

        write_json(args.json_out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
