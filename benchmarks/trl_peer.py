"""Our SDPO (and CREDIT K=1) step vs TRL's ``trl.experimental.sdpo.SDPOTrainer``, in one process.

Matched settings: the same model folder, the same B synthetic prompts (``credit.analysis.bench.SyntheticTask``,
chat template applied by both), G rollouts each, responses forced to exactly L tokens on both sides
(eos suppressed with ``min_new_tokens``), T = 1, top-k/top-p off, one optimizer step per rollout batch
(TRL: per_device_train_batch_size = B·G, gradient_accumulation_steps = 1; ours: one mini-batch),
sampled-token distillation with the reverse-KL family (TRL distillation_mode=sampled_token, alpha=1),
EMA teacher r = 0.05, demos from successful peers (rewards 1,0,1,0… in each group, no feedback),
the same learning rate. Interleaved: after every TRL step (timed by a callback, step end to step
end, generation included) the callback runs one step of each of our methods, and TRL's clock
restarts afterwards. The first step of each side is a warm-up and is dropped.

    python benchmarks/trl_peer.py --model smollm2-135m-instruct -B 5 -G 4 --response-len 24 --steps 3 \
        --threads 1 --json benchmarks/results/trl_peer_cpu.json

Throughput ratio = (our tokens/s) / (TRL's tokens/s) = TRL step time / our step time (same tokens).
``--jsonl`` appends each timed step of either side as one JSON line the moment it ends (a run cut short
keeps them; the warm-up steps are marked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from credit.analysis.bench import Bench, append_jsonl, methods_for  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("-B", "--prompts", type=int, default=5)
    p.add_argument("-G", "--samples", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=24)
    p.add_argument("--response-len", type=int, default=24)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (one warm-up step more)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--ours", default="sdpo-token,credit-token-k1", help="our methods to interleave")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids OpenMP collapse on a shared machine)")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--jsonl", help="append each step of either side here as one JSON line when it ends")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from credit.models import load_tokenizer, resolve

    wanted = args.ours.split(",")
    methods = [m for m in methods_for((1,), 100, args.prompts) if m.label in wanted]
    bench = Bench(model=args.model, prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
                  response_len=args.response_len, dtype=args.dtype, methods=methods)
    cuda = bench.device_type == "cuda"
    model_dir = resolve(bench.model_dir)
    tokenizer = load_tokenizer(model_dir)
    n, L, g = args.prompts * args.samples, args.response_len, args.samples
    examples = bench.task.examples("train")
    emit = (lambda rec: append_jsonl(args.jsonl, rec)) if args.jsonl else (lambda rec: None)
    where = {"kind": "peer_step", **bench.describe()}
    ds = Dataset.from_list([{"prompt": e.messages} for _ in range(args.steps + 2) for e in examples])

    def reward(completions, **kw):  # 1, 0, 1, 0 … as SyntheticTask
        return [1.0 if i % 2 == 0 else 0.0 for i in range(len(completions))]

    ours: dict[str, list[dict]] = {m.label: [] for m in methods}

    class Interleave(TrainerCallback):
        def __init__(self):
            self.trl: list[float] = []
            self.start = None

        def _sync(self):
            if cuda:
                torch.cuda.synchronize()

        def on_train_begin(self, *a, **k):
            self._sync()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self._sync()
            self.trl.append(time.perf_counter() - self.start)
            step = len(self.trl) - 1  # 0 is the warm-up
            emit({**where, "side": "trl-sdpo", "step": step, "warmup": step == 0, "seconds": self.trl[-1],
                  "tokens": n * L})
            for m in methods:
                ours[m.label].append(bench.step(m))
                emit({**where, "side": m.label, "step": step, "warmup": step == 0, "seconds": ours[m.label][-1]["step"],
                      "tokens": ours[m.label][-1]["tokens"], "phases": ours[m.label][-1]})
            self._sync()
            self.start = time.perf_counter()

    cfg = SDPOConfig(
        output_dir=os.path.join(bench._tmp.name, "trl"), use_cpu=not cuda, bf16=cuda and args.dtype == "bfloat16",
        fp16=False, per_device_train_batch_size=n, num_generations=g, gradient_accumulation_steps=1,
        max_completion_length=L, generation_kwargs={"min_new_tokens": L}, temperature=1.0, top_p=1.0, top_k=0,
        max_steps=args.steps + 1, learning_rate=bench.lr, logging_steps=1, save_strategy="no", report_to="none",
        seed=0, dataloader_num_workers=0, shuffle_dataset=False, use_vllm=False,
        distillation_mode="sampled_token", distillation_alpha=1.0, distillation_weight=1.0,
        teacher_model_kind="ema", teacher_update_rate=0.05, use_successful_as_teacher=True,
        success_reward_threshold=1.0, include_environment_feedback=False)
    trainer = SDPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, train_dataset=ds,
                          processing_class=tokenizer)
    cb = Interleave()
    trainer.add_callback(cb)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    lengths = [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]

    trl_steps = cb.trl[1:]
    trl_med = statistics.median(trl_steps)
    res = {
        "device": bench.device_name, "model": args.model, "dtype": args.dtype, "torch": torch.__version__,
        "batch": {"prompts": args.prompts, "samples": g, "prompt_words": args.prompt_len, "response_len": L},
        "trl": {"step_s": trl_steps, "median_step_s": trl_med, "tokens_per_s": n * L / trl_med,
                "mean_completion_len": lengths},
        "ours": {}, "notes": "first step of each side dropped (warm-up); medians; ratio = TRL step s / our step s",
    }
    for label, rs in ours.items():
        steps = [r["step"] for r in rs[1:]]
        med = statistics.median(steps)
        res["ours"][label] = {"step_s": steps, "median_step_s": med, "tokens_per_s": rs[0]["tokens"] / med,
                              "throughput_vs_trl": trl_med / med,
                              "phases_median_s": {k: statistics.median(r[k] for r in rs[1:]) for k in rs[0]
                                                  if k not in ("tokens", "peak_mem_bytes")}}
    bench.close()
    print(json.dumps(res, indent=1))
    for label, r in res["ours"].items():
        print(f"{label}: {r['median_step_s']:.2f} s/step vs TRL SDPO {trl_med:.2f} s/step -> "
              f"throughput ratio {r['throughput_vs_trl']:.2f}")
    if args.json_out:
        from credit.analysis.viz import write_json

        write_json(args.json_out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
