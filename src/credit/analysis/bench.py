"""``credit bench``: where one training step's time goes, and what CREDIT costs over SDPO (docs/method.md §5).

One process, one model, one ``Trainer``; a fixed synthetic batch (B prompts × G rollouts, prompts of
about ``prompt_len`` tokens, responses forced to exactly ``response_len`` tokens by suppressing eos),
and the real step: ``Trainer.run_step`` (rollout → outcomes → teacher contexts and negatives →
``method.prepare`` → update → ``teacher.update``), on a fresh Trainer each time so that every step
starts from the same weights; each Trainer is freed before the next is built (its LR scheduler and
the Trainer refer to each other, so only ``gc.collect()`` frees it; then CUDA's cache is emptied),
so one method's memory never counts in another's peak. Methods are interleaved across repeats
(A B C … A B C …) so machine noise hits all of them alike; medians are reported, and CREDIT/SDPO
ratios are taken per repeat (paired) before the median. ``--jsonl`` appends every step and every
paired ratio as one JSON line the moment it is measured, so a run cut short keeps what it measured.

Phases (seconds, per step):
  rollout         ``sample`` (generation)                 tokens/s over the N·L response tokens
  task, context   outcomes; teacher contexts, negatives, packing
  teacher         ℓT forward passes under c               N·L tokens scored
  negatives       forward passes under the K contexts c^(k)  K·N·L tokens scored
  update          student forward/backward + AdamW (minus the teacher forwards logit mode runs inside it)
  teacher_update  the EMA θ_T ← (1−r)θ_T + rθ

Every phase comes from the loop's own ``perf/*`` metrics: the teacher's forward time by role
(``perf/teacher_fwd_s``, ``perf/negatives_fwd_s``; a batched token-mode pass over rows
``[c | c^(1) | … | c^(K)]`` attributes each micro-batch by its rows) and ``perf/teacher_update_s``.
In token mode the teacher runs before the update; in logit mode inside it, so its forwards are
subtracted from ``perf/update_s``.

Roofline: every phase's FLOPs and bytes (``step_work``: 2 FLOPs per matmul weight per position, the
head only where logits are needed, prefix sharing's distinct contexts once per micro-batch; the
weights read once per forward pass, the KV cache per attended position while decoding) over its
median seconds, next to the machine's peak (``probe_peak``: a matmul and a copy probe, after the first
step and again at the end, the better kept; a GPU's data sheet where the device is known). A phase whose FLOP/byte is below
the machine's balance (peak FLOP/s ÷ peak bytes/s) is bound by memory, above it by compute.

CREDIT's cost floor: a negative pass costs what the teacher pass costs, so exact CREDIT with K
negatives cannot take less than ``1 + K·t_teacher / t_step(SDPO)`` of SDPO's step; the ratio table
prints it beside the measured ratio.

Synthetic pieces: ``SyntheticTask`` gives B fixed prompts and rewards 1, 0, 1, 0… within each group,
no feedback, so every rollout has a demo (G ≥ 3) and a teacher signal. It is handed to the Trainer
as an object, never registered: it is not a task a user can train on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from credit.tasks import BaseTask, Example, Outcome

_WORDS = ("apple river stone light paper number garden window silver morning bridge engine quiet "
          "yellow market travel winter doctor forest planet answer circle summer button animal ocean "
          "signal copper letter mountain pencil orange season thunder village wonder basket candle "
          "dragon feather harbor island jacket kettle ladder meadow needle pillow rocket saddle "
          "tunnel velvet wagon").split()


class SyntheticTask(BaseTask):
    """B fixed prompts of ~``prompt_words`` words; rewards alternate 1, 0, 1, 0 within each batch."""

    name = "bench-synthetic"

    def __init__(self, prompts: int = 4, prompt_words: int = 32, seed: int = 0):
        rng = random.Random(seed)
        self._examples = [
            Example(id=f"bench-{i}", messages=[{"role": "user", "content": "Repeat these words: "
                                                + " ".join(rng.choice(_WORDS) for _ in range(prompt_words))}])
            for i in range(prompts)]

    def examples(self, split: str) -> list[Example]:
        return list(self._examples)

    def score(self, example: Example, response: str) -> Outcome:
        return Outcome(reward=1.0)

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Outcome]:
        return [Outcome(reward=1.0 if i % 2 == 0 else 0.0) for i in range(len(responses))]


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    label: str
    overrides: tuple[str, ...]
    family: str  # "token" | "logit" | "grpo": which SDPO a CREDIT variant is compared to
    k: int = 0


def methods_for(ks: Sequence[int], top_k: int, prompts: int) -> list[Method]:
    logit = (f"credit.top_k={top_k}", "credit.tail=true", "credit.mode=logits", "credit.alpha=1.0")
    out = [Method("grpo", ("method=grpo",), "grpo"),
           Method("sdpo-token", ("method=sdpo", "credit.mode=token"), "token"),
           Method("sdpo-logit", ("method=sdpo", *logit), "logit")]
    for k in ks:
        if k > prompts - 1:
            print(f"credit bench: skipping K={k}: only {prompts - 1} other prompt groups (raise --prompts)")
            continue
        out.append(Method(f"credit-token-k{k}", ("method=credit", "credit.mode=token", f"credit.num_negatives={k}"), "token", k))
        out.append(Method(f"credit-logit-k{k}", ("method=credit", *logit, f"credit.num_negatives={k}"), "logit", k))
    return out


# ----------------------------------------------------------------------------- model and timers

#: Larger architectures for speed and memory measurements only (``credit.models.ARCHITECTURES`` holds the
#: ones tests and examples use). Values copied from the published config.json files.
LARGE_ARCHITECTURES: dict[str, dict] = {
    "qwen3-4b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
    ),
    "qwen3-8b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
    ),
}


def prepare_model(spec: str, dtype: str, folder: str, device: str | None = None) -> str:
    """A name ``Trainer`` can load: ``tiny`` and architecture names are built with random weights and
    saved into ``folder``; anything else is returned as is. ``tiny`` is on the SmolLM2 tokenizer (a
    word-level stand-in where its package is missing); an architecture on a word-level tokenizer with one
    word per id of its vocabulary, so that every id it samples decodes and re-encodes to itself (a demo
    in a teacher context is as long as the response it quotes). On a GPU the weights are drawn there
    (seconds for 8B parameters, where a CPU takes minutes)."""
    from credit.models import ARCHITECTURES, load_tokenizer, model_from_config, tiny_model

    if spec != "tiny" and spec not in ARCHITECTURES and spec not in LARGE_ARCHITECTURES:
        return spec
    device = device if device is not None else ("cuda" if torch.cuda.is_available() else None)
    if spec == "tiny":
        try:
            tok = load_tokenizer()
        except ImportError:  # no SmolLM2 package (e.g. a bare GPU machine)
            tok = word_tokenizer(32_000)
        model = tiny_model(tok, dtype=dtype, device=device)
    else:
        arch = LARGE_ARCHITECTURES.get(spec) or ARCHITECTURES[spec]
        tok = word_tokenizer(arch["vocab_size"])
        model = model_from_config(arch, dtype=dtype, device=device)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    free_memory()
    return folder


def free_memory() -> None:
    """Free what nothing refers to any more, cycles included (a Trainer and its LR scheduler refer to
    each other), and hand CUDA's cached blocks back so the next peak starts from what is live."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """One JSON line, appended and closed at once: a run killed later keeps every line written before."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def word_tokenizer(size: int):
    """A word-level tokenizer (ids of ``w3``…, the prompt words, ChatML specials) with a chat template:
    enough to run the benchmark where no real tokenizer is installed. Speed does not depend on it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<|im_end|>": 1, "<unk>": 2, "<|im_start|>": 3}
    for w in ("user", "assistant", "system", "Repeat", "these", "words:", *_WORDS):
        vocab.setdefault(w, len(vocab))
    vocab.update({f"w{i}": i for i in range(len(vocab), size)})
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|im_end|>", eos_token="<|im_end|>",
                                  unk_token="<unk>", padding_side="left",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    return tok


@contextlib.contextmanager
def forced_length():
    """Responses of exactly ``max_new_tokens``: eos is suppressed until then (``min_new_tokens``), in
    whichever engine samples (a patch of ``credit.rollout.Engine.sample``; the loop's config has no
    such field)."""
    import credit.rollout as ro

    original = ro.Engine.sample

    def forced(self, prompts, sampling=None, *, generator=None, progress=None, **overrides):
        cfg = dataclasses.replace(sampling or ro.SamplingConfig(), **overrides)
        return original(self, prompts, dataclasses.replace(cfg, min_new_tokens=cfg.max_new_tokens),
                        generator=generator, progress=progress)

    ro.Engine.sample = forced
    try:
        yield
    finally:
        ro.Engine.sample = original


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated``, else the process RSS sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif os.path.exists("/proc/self/statm"):
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


def phases(metrics: dict) -> dict[str, float]:
    """Seconds per phase of one step, from the loop's ``perf/*`` metrics (see the module docstring)."""
    teacher, negatives = metrics.get("perf/teacher_fwd_s", 0.0), metrics.get("perf/negatives_fwd_s", 0.0)
    # logit mode runs the teacher inside the update: whatever forward time the collect phase did not hold
    inside_update = max(0.0, teacher + negatives - metrics["perf/teacher_s"])
    out = {
        "rollout": metrics["perf/rollout_s"], "task": metrics["perf/score_s"], "context": metrics["perf/context_s"],
        "teacher": teacher, "negatives": negatives,
        "update": metrics["perf/update_s"] - inside_update - metrics["perf/teacher_update_s"],
        "teacher_update": metrics["perf/teacher_update_s"], "step": metrics["perf/step_s"],
    }
    out["learner"] = out["teacher"] + out["negatives"] + out["update"] + out["teacher_update"]
    return out


# ----------------------------------------------------------------------------- roofline


@dataclass(frozen=True)
class ModelCost:
    """What a token costs the model, for the roofline. FLOPs: 2 per matmul weight per position
    (attention's own ``4·layers·width·context`` per position is left out: ~2% at these lengths);
    bytes: the matmul weights, read once per forward pass, and the key/value cache, read once per
    attended position while decoding (activations left out)."""

    body_params: int
    """Matmul weights below the head (every ``nn.Linear``, LoRA adapters included): every position."""
    head_params: int
    """The LM head (V × H): only positions whose logits are needed."""
    trainable_params: int
    """Matmul weights that get a weight gradient (the backward of the others computes only dX)."""
    weight_bytes: int
    """All matmul weights at the compute dtype: what one forward pass reads."""
    kv_bytes: int
    """Keys and values of one position over all layers, at the compute dtype."""

    def forward_flops(self, body_tokens: float, head_tokens: float) -> float:
        """``2·body·(positions run) + 2·head·(positions scored)``."""
        return 2 * self.body_params * body_tokens + 2 * self.head_params * head_tokens


def model_cost(model, dtype: str) -> ModelCost:
    """``ModelCost`` of a (peft or plain) causal LM computing in ``dtype`` (the config's model.dtype)."""
    head = model.get_output_embeddings()
    body = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            body += module.weight.numel()
            trainable += module.weight.numel() if module.weight.requires_grad else 0
    head_params = head.weight.numel()
    trainable += head_params if head.weight.requires_grad else 0
    width = torch.finfo(getattr(torch, dtype)).bits // 8
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelCost(body_params=body, head_params=head_params, trainable_params=trainable,
                     weight_bytes=(body + head_params) * width,
                     kv_bytes=2 * config.num_hidden_layers * kv_heads * head_dim * width)


def distinct_contexts(packed, micro_batch: int) -> tuple[int, int]:
    """(tokens, contexts) a prefix-sharing pass runs over ``packed``'s context part: each distinct
    context once per micro-batch of ``micro_batch`` rows."""
    width = packed.input_ids.shape[1] - packed.response_ids.shape[1]
    tokens = contexts = 0
    for start in range(0, packed.input_ids.shape[0], micro_batch):
        rows = slice(start, start + micro_batch)
        seen = dict(zip(map(tuple, packed.input_ids[rows, :width].tolist()),
                        packed.attention_mask[rows, :width].sum(1).tolist()))
        tokens, contexts = tokens + sum(seen.values()), contexts + len(seen)
    return int(tokens), contexts


def step_work(cost: ModelCost, batch, k: int, micro_batch: int, rollout_micro_batch: int) -> dict[str, dict]:
    """FLOPs and bytes of each phase of a step, from its ``StepBatch`` (what was scored) and the
    micro-batch sizes. ``{phase: {"flops", "bytes"}}`` for rollout, teacher, negatives, update:

    - rollout: the prompts prefilled once per micro-batch (their last token runs with the first decode
      step), then one position per response token with its logits; bytes: the weights once for the
      prefill and once per decode step (the longest response), the KV cache once per position per step;
    - teacher, negatives (K passes): each distinct context once per micro-batch, then the responses,
      the head on the response positions; the weights once per micro-batch;
    - update: the student's forward and backward, ``(2 + trainable/all)`` forwards (the backward's dX
      for every weight, dW for the trained ones); the weights read three times per micro-batch, and
      AdamW's 28 bytes per trained weight (read p, g, m, v; write p, m, v; fp32)."""
    student = batch.student
    lengths = student.response_mask.sum(1).tolist()  # (N,) response tokens per row
    prompts = student.attention_mask[:, :student.input_ids.shape[1] - student.response_ids.shape[1]].sum(1).tolist()
    resp, rows = sum(lengths), len(lengths)
    passes = -(-rows // micro_batch)
    prompt_tokens, distinct = distinct_contexts(student, rollout_micro_batch)
    prefill = prompt_tokens - distinct  # a prompt's last token runs with the first decode step
    attended = sum(r * p + r * (r - 1) / 2 for r, p in zip(lengths, prompts))  # Σ over decode steps of cached positions
    work = {"rollout": {"flops": cost.forward_flops(prefill + resp, resp),
                        "bytes": cost.weight_bytes * (1 + max(lengths, default=0)) + cost.kv_bytes * attended}}

    def scored(packed) -> dict:
        return {"flops": cost.forward_flops(distinct_contexts(packed, micro_batch)[0] + resp, resp),
                "bytes": cost.weight_bytes * passes}

    work["teacher"] = scored(batch.teacher)
    negs = [scored(p) for p in batch.negatives[:k]]
    work["negatives"] = {key: sum(n[key] for n in negs) for key in ("flops", "bytes")}
    trained = cost.trainable_params / (cost.body_params + cost.head_params)
    fwd = cost.forward_flops(distinct_contexts(student, micro_batch)[0] + resp, resp)
    work["update"] = {"flops": (2 + trained) * fwd, "bytes": 3 * cost.weight_bytes * passes + 28 * cost.trainable_params}
    return work


#: Dense peak FLOP/s (bf16; fp32 is TF32 on tensor cores, as the loop sets it) and memory bytes/s from
#: the data sheets, by a part of the CUDA device name. Other devices: the probe's figure.
GPU_PEAKS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12, "bytes": 2.0e12},
    "H100": {"bfloat16": 989e12, "float32": 495e12, "bytes": 3.35e12},  # SXM (80GB HBM3)
    "H200": {"bfloat16": 989e12, "float32": 495e12, "bytes": 4.8e12},
}


def probe_peak(device: str, dtype: str, repeats: int = 5) -> dict:
    """The machine's peak: a matmul probe (the best 2n³/t over n = 256 … 2048 on CPU, 4096, 8192 on
    CUDA, best of ``repeats``) at the compute dtype, and a copy probe (2·bytes/t of a 256 MiB copy,
    1 GiB on CUDA). On a GPU the data sheet's figure (``GPU_PEAKS``) is the peak where the device is
    known; the probes are kept beside it. On CPU: with the threads torch uses now. A busy moment
    lowers a probe; ``best_peak`` keeps the better of two taken apart."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    tdtype = getattr(torch, dtype)

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - t0)
        return best

    flop_s = 0.0
    for n in ((4096, 8192) if cuda else (256, 512, 1024, 2048)):
        a, b = torch.randn(n, n, device=dev, dtype=tdtype), torch.randn(n, n, device=dev, dtype=tdtype)
        a @ b  # warm-up (kernel choice, page faults)
        flop_s = max(flop_s, 2 * n**3 / timed(lambda: a @ b))
    src = torch.empty((2**30 if cuda else 2**28) // 4, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    byte_s = 2 * src.numel() * 4 / timed(lambda: dst.copy_(src))
    probe = {"flop_s": flop_s, "byte_s": byte_s}
    out = {**probe, "source": "probe", "probe": probe, "dtype": dtype,
           "threads": None if cuda else torch.get_num_threads()}
    if cuda:
        name = torch.cuda.get_device_name(dev)
        sheet = next((v for k, v in GPU_PEAKS.items() if k in name), None)
        if sheet is not None:
            out.update(flop_s=sheet.get(dtype, sheet["float32"]), byte_s=sheet["bytes"], source=f"data sheet ({name})")
    return out


def best_peak(a: dict | None, b: dict) -> dict:
    """The higher of two probes of one machine (a data sheet's figure stays the peak)."""
    if a is None:
        return b
    if a["source"] != "probe":
        return {**a, "probe": {k: max(a["probe"][k], b["probe"][k]) for k in ("flop_s", "byte_s")}}
    return {**a, **{k: max(a[k], b[k]) for k in ("flop_s", "byte_s")}, "probe": {k: max(a["probe"][k], b["probe"][k])
                                                                              for k in ("flop_s", "byte_s")}}


def roofline(seconds: dict[str, float], work: dict[str, dict], peak: dict) -> dict[str, dict]:
    """Per phase that ran: achieved FLOP/s and bytes/s, their fractions of the peak, and the phase's
    arithmetic intensity (FLOP/byte) beside the machine's balance ``peak FLOP/s ÷ peak bytes/s``: a phase
    below the balance is bound by memory, above it by compute."""
    out = {}
    for phase, w in work.items():
        t = seconds.get(phase, 0.0)
        if t <= 0 or not w["flops"]:
            continue
        out[phase] = {"seconds": t, "flops": w["flops"], "bytes": w["bytes"],
                      "flop_s": w["flops"] / t, "byte_s": w["bytes"] / t,
                      "frac_flops": w["flops"] / t / peak["flop_s"], "frac_bytes": w["bytes"] / t / peak["byte_s"],
                      "intensity": w["flops"] / w["bytes"], "balance": peak["flop_s"] / peak["byte_s"]}
    return out


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    """Every step on a fresh Trainer of its method, built from the same saved weights."""

    model: str = "tiny"
    prompts: int = 5
    samples: int = 4
    prompt_len: int = 32
    response_len: int = 32
    ks: tuple[int, ...] = (1, 2, 4)
    top_k: int = 100
    micro_batch: int | None = None
    device: str | None = None
    dtype: str = "float32"
    lr: float = 1e-6
    seed: int = 0
    threads: int | str | None = None
    methods: list[Method] = field(default_factory=list)
    warmup_len: int | None = None  # response tokens of a warm-up step (None: response_len)
    backend: str = "generate"  # the rollout engine (credit.rollout.ENGINES)
    overrides: tuple[str, ...] = ()  # more config overrides for every method (e.g. model.lora.r=16)

    def __post_init__(self):
        from credit.config import load_config

        self._tmp = tempfile.TemporaryDirectory(prefix="credit-bench-")
        self.micro_batch = self.micro_batch or self.prompts * self.samples
        self.methods = self.methods or methods_for(self.ks, self.top_k, self.prompts)
        self.task = SyntheticTask(self.prompts, self.prompt_len, self.seed)

        def configs(response_len: int) -> dict:
            base = [f"model.name={self.model_dir}", f"model.dtype={self.dtype}", f"seed={self.seed}",
                    f"out_dir={self._tmp.name}/run", "task.name=bench-synthetic",
                    f"rollout.prompts_per_step={self.prompts}", f"rollout.samples_per_prompt={self.samples}",
                    f"rollout.max_new_tokens={response_len}", "rollout.temperature=1.0",
                    f"rollout.micro_batch={self.prompts * self.samples}", f"optim.micro_batch={self.micro_batch}",
                    f"optim.lr={self.lr}", f"rollout.backend={self.backend}", "teacher.kind=ema", "teacher.update_rate=0.05", "log.rollouts_every=0",
                    "log.tensorboard=false", "log.progress=false", *([f"device={self.device}"] if self.device else []),
                    *([f"threads={self.threads}"] if self.threads is not None else []), *self.overrides]
            return {m.label: load_config(None, [*base, *m.overrides]) for m in self.methods}

        # the configs are validated before any model is built: a wrong override fails in a second
        self.model_dir = self.model
        configs(self.response_len)
        self.model_dir = prepare_model(self.model, self.dtype, self._tmp.name, self.device)
        self.configs = configs(self.response_len)
        self.warmup_configs = configs(self.warmup_len or self.response_len)
        # the device the Trainer's accelerator will pick, without building one
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device_type = torch.device(device).type
        self.device_name = (torch.cuda.get_device_name() if self.device_type == "cuda"
                            else f"CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores)")
        self.peak: dict | None = None  # probe_peak's, measured once after the first step

    def step(self, method: Method, warmup: bool = False) -> dict:
        """One full training step of ``method`` on the fixed batch -> seconds per phase, tokens, memory.
        The Trainer is freed before this returns, also when the step raises."""
        from credit.train import Trainer

        free_memory()
        t0 = time.perf_counter()
        trainer = Trainer((self.warmup_configs if warmup else self.configs)[method.label], task=self.task)
        setup_s = time.perf_counter() - t0
        batches, collect = [], trainer.collect

        def keep_batch(step: int):  # the step's StepBatch: what each phase scored, for its FLOPs and bytes
            got = collect(step)
            batches.append(got[0])
            return got

        trainer.collect = keep_batch
        try:
            with forced_length(), PeakMemory(trainer.acc.device) as mem:
                metrics, _ = trainer.run_step(0)  # step 0 every time: the same prompts, the same seeds
            cfg = trainer.cfg
            work = step_work(model_cost(trainer.unwrapped, cfg.model.dtype), batches[0], method.k,
                             cfg.optim.micro_batch, cfg.rollout.micro_batch)
        finally:
            del trainer, collect  # the bound ``collect`` holds the Trainer too
            batches.clear()
            free_memory()
        if self.peak is None:  # after a step: the threads and the kernels are the steps'
            self.peak = probe_peak(str(torch.device(self.device or self.device_type)), self.dtype)
        out = phases(metrics)
        out["work"] = work
        out["tokens"] = round(metrics["perf/tokens_per_s"] * metrics["perf/step_s"])
        out["peak_mem_bytes"] = mem.peak
        out["setup_s"] = setup_s
        return out

    def run(self, repeats: int = 3, warmup: int = 1, log=functools.partial(print, flush=True),
            record: Callable[[dict], None] | None = None, keep_going: bool = False) -> dict:
        """Interleaved rounds (``warmup`` untimed, then ``repeats`` timed) -> ``summarize``'s result.
        ``record`` gets each step and each paired CREDIT/SDPO ratio as a dict the moment it exists.
        ``keep_going``: a step that raises (out of memory, …) is recorded and its method dropped."""
        runs: dict[str, list[dict]] = {m.label: [] for m in self.methods}
        failed: dict[str, str] = {}  # label -> the error of its failed step
        by_label = {m.label: m for m in self.methods}
        emit = record or (lambda _: None)
        emit({"kind": "setup", **self.describe(), "methods": [m.label for m in self.methods],
              "repeats": repeats, "warmup": warmup})
        for r in range(warmup + repeats):
            timed = r >= warmup
            name = f"repeat {r - warmup + 1}" if timed else "warmup"
            for m in self.methods:  # interleaved: A B C … A B C …
                if m.label in failed:
                    continue
                base = {"kind": "step", "method": m.label, "family": m.family, "k": m.k,
                        "repeat": r - warmup + 1 if timed else None, "warmup": not timed}
                try:
                    res = self.step(m, warmup=not timed)
                except Exception as e:
                    if not keep_going:
                        raise
                    failed[m.label], res = error_line(e), None
                if res is None:  # freed here, past the except block: its traceback held the step's Trainer
                    free_memory()
                    emit({**base, "error": failed[m.label]})
                    log(f"  {name} {m.label}: failed: {failed[m.label]}")
                    continue
                emit({**base, **step_record(res, m)})
                log(f"  {name} {m.label}: {res['step']:.2f} s")
                if not timed:
                    continue
                runs[m.label].append(res)
                # a CREDIT/SDPO pair of this round is complete when its second member lands
                pairs = [(m.label, SDPO_OF.get(m.family))] if m.k else [(c.label, m.label) for c in self.methods
                                                                       if c.k and SDPO_OF.get(c.family) == m.label]
                for a, b in pairs:
                    if b in runs and len(runs[a]) == len(runs[b]) == r - warmup + 1:
                        emit({"kind": "ratio", "ratio": f"{a}/{b}", "repeat": r - warmup + 1,
                              **pair_ratio(runs[a][-1], runs[b][-1], by_label[a].k)})
        runs = {label: rs for label, rs in runs.items() if rs}
        if self.peak is not None:  # probed again at the end: a busy moment lowers one probe, rarely both
            self.peak = best_peak(self.peak, probe_peak(str(torch.device(self.device or self.device_type)), self.dtype))
        result = summarize(self, runs, repeats)
        if failed:
            result["failed"] = failed
        return result

    def describe(self) -> dict:
        return {"device": self.device_name, "model": self.model, "dtype": self.dtype, "torch": torch.__version__,
                "backend": self.backend,
                "batch": {"prompts": self.prompts, "samples": self.samples, "prompt_words": self.prompt_len,
                          "response_len": self.response_len, "micro_batch": self.micro_batch, "top_k": self.top_k},
                "overrides": list(self.overrides)}

    def close(self):
        self._tmp.cleanup()


PHASES = ("rollout", "task", "context", "teacher", "negatives", "update", "teacher_update", "learner", "step")
#: the SDPO a CREDIT variant is compared to, by family
SDPO_OF = {"token": "sdpo-token", "logit": "sdpo-logit"}


def tokens_per_s(seconds: dict[str, float], tokens: int, k: int) -> dict[str, float]:
    """Tokens per second of each phase: N·L response tokens, K·N·L for the negatives."""
    scored = {"rollout": tokens, "teacher": tokens, "negatives": k * tokens, "update": tokens, "step": tokens}
    return {p: n / seconds[p] for p, n in scored.items() if n and seconds[p] > 0}


def pair_ratio(credit: dict, sdpo: dict, k: int) -> dict[str, float]:
    """CREDIT/SDPO of one round's two steps, and the floor: exact CREDIT pays K more teacher passes,
    so it cannot take less than 1 + K·t_teacher/t_step(SDPO) of SDPO's step."""
    return {"step": credit["step"] / sdpo["step"], "learner": credit["learner"] / sdpo["learner"],
            "floor": 1 + k * sdpo["teacher"] / sdpo["step"]}


def step_record(res: dict, m: Method) -> dict:
    """One step as a JSON line: seconds per phase, tokens/s, peak memory, and the Trainer's build time."""
    return {"seconds": {p: res[p] for p in PHASES}, "tokens": res["tokens"], "work": res["work"],
            "tokens_per_s": tokens_per_s(res, res["tokens"], m.k), "peak_mem_gib": res["peak_mem_bytes"] / 2**30,
            "setup_s": res["setup_s"]}


def error_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (an OOM's is long)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:500]}" if text else type(e).__name__


def summarize(bench: Bench, runs: dict[str, list[dict]], repeats: int) -> dict:
    by_label = {m.label: m for m in bench.methods}
    methods = {}
    for label, rs in runs.items():
        m = by_label[label]
        med = {p: statistics.median(r[p] for r in rs) for p in PHASES}
        methods[label] = {
            "family": m.family, "k": m.k, "seconds": med, "seconds_all": {p: [r[p] for r in rs] for p in PHASES},
            "tokens_per_s": tokens_per_s(med, rs[0]["tokens"], m.k),
            "peak_mem_gib": max(r["peak_mem_bytes"] for r in rs) / 2**30,
        }
    ratios = {}
    for label, rs in runs.items():
        m = by_label[label]
        base = SDPO_OF.get(m.family)
        if not m.k or base not in runs:
            continue
        pairs = [pair_ratio(a, b, m.k) for a, b in zip(rs, runs[base])]
        ratios[f"{label}/{base}"] = {key: statistics.median(p[key] for p in pairs)
                                     for key in ("step", "learner", "floor")}
    roof = {label: roofline(methods[label]["seconds"], rs[0]["work"], bench.peak) for label, rs in runs.items()}
    return {
        **bench.describe(), "repeats": repeats, "methods": methods, "ratios": ratios,
        "roofline": {"peak": bench.peak, "methods": roof},
        "notes": "median over interleaved repeats; ratios are medians of per-repeat (paired) ratios; "
                 "learner = teacher + negatives + update + teacher_update; roofline: FLOPs and bytes of each "
                 "phase (credit.analysis.bench.step_work) over its median seconds, against the peak of probe_peak",
    }


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    b = result["batch"]
    console = Console(width=None if Console().is_terminal else 170)
    t = Table(title=f"{result['model']} ({result['dtype']}) on {result['device']}: B={b['prompts']} × G={b['samples']}, "
                    f"{b['response_len']} response tokens, median of {result['repeats']} (seconds per step)")
    t.add_column("method")
    for p in PHASES:
        t.add_column(p, justify="right")
    t.add_column("peak GiB", justify="right")
    for label, m in result["methods"].items():
        t.add_row(label, *(f"{m['seconds'][p]:.3f}" for p in PHASES), f"{m['peak_mem_gib']:.2f}")
    console.print(t)
    t = Table(title="tokens/s per phase (negatives: K·N·L tokens)")
    t.add_column("method")
    for p in ("rollout", "teacher", "negatives", "update", "step"):
        t.add_column(p, justify="right")
    for label, m in result["methods"].items():
        t.add_row(label, *(f"{m['tokens_per_s'][p]:.0f}" if p in m["tokens_per_s"] else "-"
                           for p in ("rollout", "teacher", "negatives", "update", "step")))
    console.print(t)
    roof = result.get("roofline")
    if roof and roof.get("peak"):
        pk = roof["peak"]
        t = Table(title=f"roofline: peak {pk['flop_s'] / 1e9:,.0f} GFLOP/s and {pk['byte_s'] / 1e9:,.1f} GB/s "
                        f"({pk['source']}, {pk['dtype']}" + (f", {pk['threads']} threads" if pk.get("threads") else "")
                        + f"); balance {pk['flop_s'] / pk['byte_s']:.1f} FLOP/byte")
        for c in ("method", "phase", "s", "GFLOP", "GFLOP/s", "% peak FLOP/s", "GB/s", "% peak GB/s", "FLOP/byte"):
            t.add_column(c, justify="left" if c in ("method", "phase") else "right")
        for label, rows in roof["methods"].items():
            for phase, r in rows.items():
                t.add_row(label, phase, f"{r['seconds']:.2f}", f"{r['flops'] / 1e9:,.0f}", f"{r['flop_s'] / 1e9:,.1f}",
                          f"{100 * r['frac_flops']:.1f}", f"{r['byte_s'] / 1e9:,.2f}", f"{100 * r['frac_bytes']:.1f}",
                          f"{r['intensity']:,.0f}")
        console.print(t)
    t = Table(title="CREDIT / SDPO (paired medians); floor = 1 + K·t_teacher / t_step(SDPO)")
    for c in ("ratio", "whole step", "floor", "step − floor", "learner (scoring + update)"):
        t.add_column(c, justify="right" if c != "ratio" else "left")
    for name, r in result["ratios"].items():
        t.add_row(name, f"{r['step']:.3f}", f"{r['floor']:.3f}", f"{r['step'] - r['floor']:+.3f}", f"{r['learner']:.3f}")
    console.print(t)


# ----------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    from credit.rollout import ENGINES

    p = sub.add_parser("bench", help="Time every phase of a step: GRPO, SDPO, CREDIT (K negatives), side by side",
                       description="Time one training step phase by phase on a fixed synthetic batch, for GRPO, "
                                   "SDPO (token, logit) and CREDIT (token, logit, K negatives); methods are "
                                   "interleaved across repeats; prints medians and CREDIT/SDPO ratios.")
    p.add_argument("--model", default="tiny",
                   help="tiny | smollm2-135m-instruct | an architecture with random weights (qwen3-0.6b, "
                        "qwen3-1.7b, qwen3-4b, qwen3-8b, smollm2-135m) | a Hugging Face id or path (default tiny)")
    p.add_argument("--prompts", "-B", type=int, default=5, help="B prompt groups (K <= B-1; default 5)")
    p.add_argument("--samples", "-G", type=int, default=4, help="G rollouts per prompt (>= 3 keeps every rollout's demo; default 4)")
    p.add_argument("--prompt-len", type=int, default=32, help="words per synthetic prompt (~1 token each; default 32)")
    p.add_argument("--response-len", type=int, default=32, help="response tokens, forced (default 32)")
    p.add_argument("--ks", default="1,2,4", help="CREDIT negatives K to time, comma-separated (default 1,2,4)")
    p.add_argument("--top-k", type=int, default=100, help="logit-mode support: student top-K plus a tail (default 100)")
    p.add_argument("--methods", help="only these labels, comma-separated, run in this order "
                                      "(e.g. sdpo-token,credit-token-k1)")
    p.add_argument("--micro-batch", type=int, help="sequences per forward/backward (default B·G)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per method (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (default 1)")
    p.add_argument("--warmup-len", type=int, help="response tokens of a warm-up step (default --response-len; "
                   "fewer warm the kernels for less time)")
    p.add_argument("--device", help="cpu, cuda (default: what accelerate picks)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="(default float32)")
    p.add_argument("--backend", default="generate", choices=list(ENGINES),
                   help="the rollout engine (credit.rollout.ENGINES; default generate)")
    p.add_argument("--threads", type=_threads, help="torch CPU threads, or auto (credit.threads; default: auto, as credit train)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.add_argument("--json", dest="json_out", help="write the result here")
    p.add_argument("--jsonl", help="append each step and each paired CREDIT/SDPO ratio here as one JSON line the "
                   "moment it is measured (a run cut short keeps them)")
    p.add_argument("--keep-going", action="store_true", help="a step that fails (out of memory, …) is reported "
                   "and its method dropped; the others go on")
    p.set_defaults(func=run, command="bench")


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of threads >= 1, or auto")
    return value


def run(args) -> int:
    for flag, value, least in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--prompts", args.prompts, 2),
                               ("--samples", args.samples, 1), ("--response-len", args.response_len, 1),
                               ("--warmup-len", 1 if args.warmup_len is None else args.warmup_len, 1)):
        if value < least:
            raise ValueError(f"{flag}={value}: must be >= {least}")
    ks = tuple(int(k) for k in str(args.ks).split(",") if k.strip())
    methods = methods_for(ks, args.top_k, args.prompts)
    if args.methods:
        wanted = [s.strip() for s in args.methods.split(",")]
        unknown = set(wanted) - {m.label for m in methods}
        if unknown:
            raise ValueError(f"--methods: unknown {sorted(unknown)}; known: {[m.label for m in methods]}")
        by_label = {m.label: m for m in methods}
        methods = [by_label[label] for label in dict.fromkeys(wanted)]  # in the order given
    bench = Bench(model=args.model, prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
                  response_len=args.response_len, ks=ks, top_k=args.top_k, micro_batch=args.micro_batch,
                  device=args.device, dtype=args.dtype, seed=args.seed, threads=args.threads, methods=methods,
                  warmup_len=args.warmup_len, backend=args.backend)
    record = functools.partial(append_jsonl, args.jsonl) if args.jsonl else None
    try:
        result = bench.run(args.repeats, args.warmup, record=record, keep_going=args.keep_going)
    finally:
        bench.close()
    if args.json_out:  # before the tables: the result is kept even where rich is missing
        from credit.analysis.viz import write_json

        write_json(args.json_out, result)
    print_tables(result)
    return 1 if result.get("failed") else 0
