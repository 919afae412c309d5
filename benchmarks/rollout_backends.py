"""Rollout engines side by side (``credit.rollout.ENGINES``), each with its place on the roofline.

Three settings, each a fixed set of prompts sampled by every backend in turn (interleaved, ``--repeats``
rounds, medians), so that a shared, noisy machine slows every backend alike:

- ``quickstart``: the quickstart's rollout, 8 addition prompts x 8 samples, <= 24 tokens, T = 1;
- ``eval``: the held-out evaluation, 60 items x 4 samples, <= 24 tokens, T = 0.7;
- ``forced``: 8 prompts x 8 samples of exactly ``--forced-len`` tokens (eos suppressed): no row ends
  early, so this is the per-token cost alone.

A backend is an engine name, optionally with modifiers (``continuous+bf16``), for what issue 26 asks
to measure on a CPU:

- ``+autocast``: sampled under ``torch.autocast`` in bfloat16, as the loop samples when
  ``model.dtype: bfloat16`` (matmuls in bf16 over the fp32 weights, cast once per call);
- ``+bf16``: the engine over a bfloat16 copy of the weights (native bf16 decoding). Its distribution is
  the bf16 model's, not the fp32 learner's: a measurement, not an engine the loop offers;
- ``+compile``: the engine over a copy whose forward is compiled by inductor (``torch.compile``,
  dynamic shapes); its warm-up includes the compilation.

Roofline columns: the useful work of a call — each distinct prompt prefilled once per micro-batch (its
last token with the first decode step), one position with logits per response token — in FLOPs
(``credit.analysis.bench.ModelCost``: 2 per matmul weight per position, the head only where logits are needed),
over the call's seconds, against the matmul probe's peak at the dtype the matmuls run in
(``credit.analysis.bench.probe_peak``, measured once before the first setting). ``generate`` decodes ended rows
too; that work is not counted, so its fraction says how far it is from decoding only what it keeps.

Responses end on their own only with a trained model (SmolLM2, the default); with random weights
(``--model qwen3-0.6b`` on a GPU) only ``forced`` is meaningful.

Warm-up, just before a backend's first timed call: 2 prompts x 2; ``static`` and ``+compile`` sample the
setting's own batch once (a compiled decode step is specialised to its shapes, and a smaller warm-up
would compile again inside the timed round). ``--jsonl`` appends one line per sampling call (warm-ups
included, marked) as it finishes, so a run cut short keeps what it timed.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rollout_backends.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import tempfile
import time

import torch

from credit.analysis.bench import append_jsonl, best_peak, model_cost, prepare_model, probe_peak
from credit.models import load_model
from credit.rollout import ENGINES, SamplingConfig, encode_prompts, sample
from credit.tasks import build_task

MODIFIERS = ("autocast", "bf16", "compile")


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


class Backend:
    """An engine name with modifiers: the module it decodes with and the context it samples in."""

    def __init__(self, spec: str, model, device: str):
        self.spec, (self.engine, *mods) = spec, spec.split("+")
        if self.engine not in ENGINES or set(mods) - set(MODIFIERS):
            raise SystemExit(f"--backends: {spec!r}: an engine of {', '.join(ENGINES)} with modifiers "
                             f"+{', +'.join(MODIFIERS)}")
        self.model, self.device, self.bf16 = model, device, "bf16" in mods or "autocast" in mods
        self.autocast = "autocast" in mods
        if "bf16" in mods:
            self.model = copy.deepcopy(model).to(torch.bfloat16)
        self.compiled = "compile" in mods
        if self.compiled:
            self.model = copy.deepcopy(self.model)
            self.model.forward = torch.compile(self.model.forward, dynamic=True)

    def sample(self, tok, prompts, cfg, **kw):
        ctx = torch.autocast(torch.device(self.device).type, torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with ctx:
            return sample(self.model, tok, prompts, cfg, backend=self.engine, **kw)


def useful_flops(cost, prompts: list[list[int]], cfg: SamplingConfig, response_tokens: int) -> float:
    """Each distinct prompt once per micro-batch (but its last token), one position with logits per token."""
    seqs = [tuple(p) for p in prompts for _ in range(cfg.num_samples)]
    mb = cfg.micro_batch_size or len(seqs)
    prefill = sum(len(p) - 1 for s in range(0, len(seqs), mb) for p in set(seqs[s:s + mb]))
    return cost.forward_flops(prefill + response_tokens, response_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="smollm2-135m-instruct (default) | an architecture with random weights (qwen3-0.6b) | a path")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default="generate,continuous,loop,static",
                    help="engines, each optionally with +autocast, +bf16, +compile (default generate,continuous,loop,static)")
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
    specs = args.backends.split(",")
    backends = {spec: Backend(spec, model, args.device) for spec in specs}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    peaks = {dtype: probe_peak(args.device, dtype)
             for dtype in dict.fromkeys([args.dtype, *(["bfloat16"] if any(b.bf16 for b in backends.values()) else [])])}
    costs = {dtype: model_cost(model, dtype) for dtype in peaks}
    result = {"model": args.model, "dtype": args.dtype, "device": args.device, "device_name": device_name,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "loadavg": os.getloadavg(),
              "peak": peaks, "settings": {}}
    print(f"{device_name}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; peak "
          + ", ".join(f"{d} {p['flop_s'] / 1e9:,.0f} GFLOP/s ({p['source']})" for d, p in peaks.items()), flush=True)
    emit = (lambda rec: append_jsonl(args.jsonl, rec)) if args.jsonl else (lambda rec: None)
    for label in args.settings.split(","):
        conversations, cfg = settings(task, args.forced_len)[label]
        prompts = encode_prompts(tok, conversations)
        where = {"kind": "rollout", "setting": label, "model": args.model, "dtype": args.dtype,
                 "device": device_name, "sequences": len(prompts) * cfg.num_samples,
                 "max_new_tokens": cfg.max_new_tokens}
        runs = {spec: [] for spec in specs}
        for r in range(args.repeats):
            for spec, backend in backends.items():
                if r == 0:  # its warm-up (a compiled one: its compilation) just before its first round
                    t0 = time.perf_counter()
                    if backend.engine == "static" or backend.compiled:
                        backend.sample(tok, prompts, cfg)
                    else:
                        backend.sample(tok, prompts[:2], cfg, num_samples=2)
                    emit({**where, "backend": spec, "warmup": True, "seconds": time.perf_counter() - t0})
                out = backend.sample(tok, prompts, cfg)
                runs[spec].append((out.seconds, out.tokens))
                emit({**where, "backend": spec, "warmup": False, "round": r + 1, "seconds": out.seconds,
                      "tokens": out.tokens, "tokens_per_s": out.tokens / out.seconds})
        rows = {}
        for spec, rs in runs.items():
            dtype = "bfloat16" if backends[spec].bf16 else args.dtype
            seconds = statistics.median(r[0] for r in rs)
            tokens = statistics.median(r[1] for r in rs)
            flop_s = useful_flops(costs[dtype], prompts, cfg, tokens) / seconds
            rows[spec] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "flop_s": flop_s,
                          "peak_dtype": dtype, "frac_peak": flop_s / peaks[dtype]["flop_s"]}
        for spec in specs:
            rows[spec]["speedup"] = rows[spec]["tokens_per_s"] / rows[specs[0]]["tokens_per_s"]
        result["settings"][label] = {"sequences": len(prompts) * cfg.num_samples, "max_new_tokens": cfg.max_new_tokens,
                                     "backends": rows}
        print(f"{label}: {len(prompts)} prompts x {cfg.num_samples}, <= {cfg.max_new_tokens} tokens")
        for spec, r in rows.items():
            print(f"  {spec:24s} {r['seconds']:7.2f} s  {r['tokens_per_s']:7.1f} tokens/s  x{r['speedup']:.2f} "
                  f"tokens/s vs {specs[0]}  {r['flop_s'] / 1e9:6.1f} GFLOP/s = {100 * r['frac_peak']:4.1f}% of "
                  f"{r['peak_dtype']} peak  ({r['tokens']:.0f} tokens)", flush=True)
    for dtype in peaks:  # probed again at the end: a busy moment lowers one probe, rarely both
        peaks[dtype] = best_peak(peaks[dtype], probe_peak(args.device, dtype))
    result["loadavg_after"] = os.getloadavg()
    print("peak, the better of the probes at the start and at the end: "
          + ", ".join(f"{d} {p['flop_s'] / 1e9:,.0f} GFLOP/s" for d, p in peaks.items()))
    for label, setting in result["settings"].items():
        for spec, r in setting["backends"].items():
            r["frac_peak"] = r["flop_s"] / peaks[r["peak_dtype"]]["flop_s"]
            print(f"  {label:10s} {spec:24s} {r['tokens_per_s']:7.1f} tokens/s  x{r['speedup']:.2f}  "
                  f"{100 * r['frac_peak']:4.1f}% of the {r['peak_dtype']} peak")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
