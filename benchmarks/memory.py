"""Peak memory of the log-prob paths with a large vocabulary: chunked (ours) vs a naive full softmax.

Each variant runs in a fresh child process (``python memory.py --child VARIANT ...``) that allocates its
inputs, resets the kernel's RSS high-water mark and records its RSS (on ``--device cuda``:
``memory_allocated``), runs the variant (forward, and backward when ``--backward``), and reports the
high-water mark since (``VmHWM``; ``ru_maxrss`` where it cannot be reset; on CUDA ``max_memory_allocated``). The extra memory of a variant is ``peak − memory once its inputs exist``.

From logits (T, V) predicting T response tokens (the logits, and with backward their gradient, are
the same for every variant):
  token-naive      log_softmax(logits.float() / T_s).gather(tokens)          (full fp32 copy)
  token-chunked    credit.signal.token_logprobs (chunked logsumexp, 256 MiB chunks)
  topk-naive       log_softmax(logits.float()) then gather the top-K + tail bucket
  topk-chunked     credit.objectives.support_logprobs(logits, topk_index(logits, K), tail=True)

From hidden states (T, H) and the head W (V, H): the loss path of training, hidden states in, a
loss (−Σ A·ℓ with fixed random A) and its gradient out. ``--train-head`` also gives W a gradient
(full fine-tuning; under LoRA the head is frozen); that gradient, (V, H) in W's dtype, is reported as
``grad_gib`` with the states' own gradient, since AdamW needs it as ``.grad`` whatever computes it:
  hidden-naive     logits = h·Wᵀ (T, V), then token-naive                     (what the loop did before)
  hidden-fused     credit.signal.head_token_logprobs: lm_head + log-softmax per chunk of rows, backward
                   to h and W chunk by chunk; no (T, V) tensor
  hidden-topk      credit.signal.head_topk + head_logprobs at top-K and the token, then the top-K + tail
                   support (logit mode)

    python benchmarks/memory.py --vocab 150000 --tokens 4096 --dtype float32 --backward \
        --json benchmarks/results/memory_cpu.json
    python benchmarks/memory.py --vocab 151936 --tokens 8192 --hidden 4096 --backward --train-head \
        --variants hidden-fused --json benchmarks/results/memory_hidden_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VARIANTS = ("token-naive", "token-chunked", "topk-naive", "topk-chunked", "hidden-naive", "hidden-fused", "hidden-topk")


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux: ``/proc/self/clear_refs``), so that
    the peak measured is the variant's, not that of the inputs' construction."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset: bool) -> int:
    """VmHWM since the reset, else ``ru_maxrss`` (the whole process's peak)."""
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def loss_path(variant: str, states, weight, tokens, advantage, k: int = 100):
    """The loss of one hidden-state variant: −Σ A·ℓ (token variants) or −Σ A·support (top-K), a scalar.
    ``tests/test_fused.py`` checks that the gradients of ``hidden-fused`` and ``hidden-naive`` agree."""
    import torch

    from credit import objectives as obj
    from credit import signal

    if variant == "hidden-naive":
        logits = (states @ weight.t()).to(torch.promote_types(states.dtype, torch.float32))  # (T, V)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
        return -(advantage * logp).sum()
    head = signal.Hidden(states, weight)
    if variant == "hidden-fused":
        return -(advantage * signal.head_token_logprobs(head, tokens)).sum()
    index = signal.head_topk(head, k)  # (T, K)
    picked = signal.head_logprobs(head, torch.cat([index, tokens[:, None]], -1))  # (T, K+1)
    support = obj.support_from_topk(picked[:, :-1], tail=True)  # (T, K+1)
    return -(advantage[:, None] * support).sum() - (advantage * picked[:, -1]).sum()


def child(variant: str, vocab: int, tokens: int, dtype: str, backward: bool, k: int, device: str = "cpu",
          hidden: int = 4096, train_head: bool = False) -> dict:
    import time

    import torch

    from credit import objectives as obj
    from credit.signal import naive_token_logprobs, token_logprobs

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    cuda = device.startswith("cuda")
    ids = torch.randint(0, vocab, (tokens,), device=device)
    out, grad_bytes = None, 0
    if variant.startswith("hidden"):
        states = torch.randn(tokens, hidden, dtype=dt, device=device).requires_grad_(backward)  # (T, H)
        weight = torch.randn(vocab, hidden, dtype=dt, device=device).div_(hidden**0.5).requires_grad_(
            backward and train_head)  # (V, H), scaled in place: no second (V, H) tensor, even for a moment
        advantage = torch.randn(tokens, device=device)
        inputs = [states, weight]
        grad_bytes = sum(t.numel() * t.element_size() for t in inputs if t.requires_grad)
    else:
        logits = torch.randn(tokens, vocab, dtype=dt, device=device).requires_grad_(backward)  # (T, V)
        index = logits.detach().topk(k, dim=-1).indices if variant.startswith("topk") else None  # (T, K)
        inputs = [logits]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset = not cuda and _reset_peak_rss()
    base = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if variant.startswith("hidden"):
            out = loss_path(variant, states, weight, ids, advantage, k)
        elif variant == "token-naive":
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
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes(reset)
    return {"variant": variant, "peak_gib": peak / 2**30, "base_gib": base / 2**30,
            "extra_gib": (peak - base) / 2**30, "seconds": seconds,
            "inputs_gib": sum(t.numel() * t.element_size() for t in inputs) / 2**30,
            "grad_gib": grad_bytes / 2**30, "extra_minus_grad_gib": (peak - base - grad_bytes) / 2**30}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="peak memory: chunked vs naive log-probs (fresh process per variant)")
    p.add_argument("--vocab", type=int, default=150_000)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backward", action="store_true", help="also backpropagate (the student's path)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--hidden", type=int, default=4096, help="hidden size of the hidden-* variants")
    p.add_argument("--train-head", action="store_true", help="hidden-*: the head W gets a gradient too")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (max_memory_allocated)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.vocab, args.tokens, args.dtype, args.backward, args.top_k, args.device,
                               args.hidden, args.train_head)))
        return 0
    rows = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", v, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
               "--dtype", args.dtype, "--top-k", str(args.top_k), "--device", args.device, "--hidden", str(args.hidden)]
        cmd += (["--backward"] if args.backward else []) + (["--train-head"] if args.train_head else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            rows.append({"variant": v, "error": out.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    res = {"device": args.device, "vocab": args.vocab, "tokens": args.tokens, "dtype": args.dtype, "backward": args.backward,
           "top_k": args.top_k, "hidden": args.hidden, "train_head": args.train_head, "rows": rows}
    if args.json_out:
        from credit.analysis.viz import write_json

        write_json(args.json_out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
