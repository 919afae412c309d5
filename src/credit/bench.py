"""``credit bench``: where one training step's time goes, and what CREDIT costs over SDPO (SPEC.md §5).

One process, one model, one ``Trainer``; a fixed synthetic batch (B prompts × G rollouts, prompts of
about ``prompt_len`` tokens, responses forced to exactly ``response_len`` tokens by suppressing eos),
and the real step: ``Trainer.run_step`` (rollout → outcomes → teacher contexts and negatives →
``score_teacher`` → ``update`` → ``teacher.update``). Methods are interleaved across repeats
(A B C … A B C …) so machine noise hits all of them alike; medians are reported, and CREDIT/SDPO
ratios are taken per repeat (paired) before the median.

Phases (seconds, per step):
  rollout         ``sample`` (generation)                 tokens/s over the N·L response tokens
  task, context   outcomes; teacher contexts, negatives, packing
  teacher         ℓT forward passes under c               N·L tokens scored
  negatives       forward passes under the K contexts c^(k)  K·N·L tokens scored
  update          student forward/backward + AdamW (minus the teacher forwards logit mode runs inside it)
  teacher_update  the EMA θ_T ← (1−r)θ_T + rθ

How the teacher/negative split is measured without touching the loop: ``Teacher.response_logits``
and ``Teacher.update`` of this trainer are wrapped with timers. Token mode scores teacher and
negatives in ONE batched pass (rows ``[c | c^(1) | … | c^(K)]``, chunked by micro-batch); each
chunk's time is attributed by its rows, and the pass's remaining time (log-softmax, gathers) is
shared in the same proportion. Logit mode calls the teacher once under c, then once per negative,
per micro-batch, inside the update: calls are attributed in that order.

Synthetic pieces: the task ``bench-synthetic`` (registered here) gives B fixed prompts and rewards
1, 0, 1, 0… within each group, no feedback, so every rollout has a demo (G ≥ 3) and a teacher signal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from credit.tasks import TASKS, BaseTask, Example, Outcome

SYNTHETIC_TASK = "bench-synthetic"
TASKS.setdefault(SYNTHETIC_TASK, "credit.bench:SyntheticTask")

_WORDS = ("apple river stone light paper number garden window silver morning bridge engine quiet "
          "yellow market travel winter doctor forest planet answer circle summer button animal ocean "
          "signal copper letter mountain pencil orange season thunder village wonder basket candle "
          "dragon feather harbor island jacket kettle ladder meadow needle pillow rocket saddle "
          "tunnel velvet wagon").split()


class SyntheticTask(BaseTask):
    """B fixed prompts of ~``prompt_words`` words; rewards alternate 1, 0, 1, 0 within each batch."""

    name = SYNTHETIC_TASK

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


def prepare_model(spec: str, dtype: str, folder: str) -> str:
    """A name ``Trainer`` can load: ``tiny`` and architecture names are built with random weights
    (on the SmolLM2 tokenizer) and saved into ``folder``; anything else is returned as is."""
    from credit.models import ARCHITECTURES, load_tokenizer, model_from_config, tiny_model

    if spec != "tiny" and spec not in ARCHITECTURES:
        return spec
    try:
        tok = load_tokenizer()
    except ImportError:  # no SmolLM2 package (e.g. a bare GPU machine): a word-level stand-in
        tok = word_tokenizer(32_000)
    model = tiny_model(tok, dtype=dtype) if spec == "tiny" else model_from_config(spec, dtype=dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    return folder


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
    """Responses of exactly ``max_new_tokens``: eos is suppressed until then (``min_new_tokens``).
    A patch of ``credit.rollout._generate_kwargs`` until SamplingConfig has such a field."""
    import credit.rollout as ro

    original = ro._generate_kwargs

    def kwargs(cfg, eos_ids, pad_id):
        kw = original(cfg, eos_ids, pad_id)
        kw.pop("min_length", None)  # min_new_tokens wins anyway; this only silences transformers' warning
        return {**kw, "min_new_tokens": cfg.max_new_tokens}

    ro._generate_kwargs = kwargs
    try:
        yield
    finally:
        ro._generate_kwargs = original


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


class PhaseClock:
    """Wraps one trainer's teacher and update to split the step into phases (see module docstring)."""

    def __init__(self, trainer):
        self.trainer, self.cuda = trainer, trainer.acc.device.type == "cuda"
        self.t: dict[str, float] = defaultdict(float)
        self._mode: tuple = ("calls", 1)
        self._pos = 0
        teacher = trainer.teacher
        logits, update = teacher.response_logits, teacher.update
        train_update = trainer.update

        def timed_logits(student, packed):
            shares = self._shares(packed.input_ids.shape[0])
            dt, z = self._time(logits, student, packed)
            for label, frac in shares:
                self.t[label + "_fwd"] += frac * dt
            return z

        def timed_update(student):
            dt, _ = self._time(update, student)
            self.t["teacher_update"] += dt

        def timed_train_update(batch, lam, step):
            k = len(batch.negatives) if lam > 0 else 0
            self._mode, self._pos = ("calls", 1 + k), 0
            return train_update(batch, lam, step)

        teacher.response_logits, teacher.update, trainer.update = timed_logits, timed_update, timed_train_update

    def _time(self, fn, *args):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    def _shares(self, rows: int) -> list[tuple[str, float]]:
        kind, n = self._mode
        if kind == "calls":  # logit mode: teacher, then each negative, per micro-batch
            label = "teacher" if self._pos % n == 0 else "negatives"
            self._pos += 1
            return [(label, 1.0)]
        lo, hi = self._pos, self._pos + rows  # token mode: rows [0, n) are the teacher's, then negatives
        self._pos = hi
        teacher_rows = max(0, min(hi, n) - lo)
        return [("teacher", teacher_rows / rows), ("negatives", 1 - teacher_rows / rows)]

    @contextlib.contextmanager
    def scoring_pass(self):
        """Install the wrapper of ``credit.train.score_teacher`` (the batched token-mode pass)."""
        import credit.train as tr

        original = tr.score_teacher

        def timed(teacher, model, batch, k, *args):
            self._mode, self._pos = ("rows", int(batch.has_signal.sum().item())), 0
            dt, out = self._time(original, teacher, model, batch, k, *args)
            self.t["score_pass"] += dt
            return out

        tr.score_teacher = timed
        try:
            yield
        finally:
            tr.score_teacher = original

    def phases(self, metrics: dict, k: int) -> dict[str, float]:
        """Seconds per phase of the last step, from the loop's perf/* metrics and the wrappers."""
        t, fwd = self.t, self.t["teacher_fwd"] + self.t["negatives_fwd"]
        if t["score_pass"] > 0:  # token mode: the batched pass, shared by forward time
            share = t["teacher_fwd"] / fwd if fwd > 0 else 1.0
            teacher, negatives, inside_update = t["score_pass"] * share, t["score_pass"] * (1 - share), 0.0
        else:  # logit mode: teacher forwards run inside the update
            teacher, negatives, inside_update = t["teacher_fwd"], t["negatives_fwd"], fwd
        out = {
            "rollout": metrics["perf/rollout_s"], "task": metrics["perf/score_s"], "context": metrics["perf/context_s"],
            "teacher": teacher, "negatives": negatives,
            "update": metrics["perf/update_s"] - inside_update - t["teacher_update"],
            "teacher_update": t["teacher_update"], "step": metrics["perf/step_s"],
        }
        out["learner"] = out["teacher"] + out["negatives"] + out["update"] + out["teacher_update"]
        self.t.clear()
        return out


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    """One Trainer shared by every method (only ``trainer.cfg`` is swapped between steps)."""

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
    methods: list[Method] = field(default_factory=list)

    def __post_init__(self):
        from credit.config import load_config
        from credit.train import Trainer

        self._tmp = tempfile.TemporaryDirectory(prefix="credit-bench-")
        name = prepare_model(self.model, self.dtype, self._tmp.name)
        self.micro_batch = self.micro_batch or self.prompts * self.samples
        base = [f"model.name={name}", f"model.dtype={self.dtype}", f"seed={self.seed}",
                f"out_dir={self._tmp.name}/run", f"task.name={SYNTHETIC_TASK}",
                f"task.options={{prompts: {self.prompts}, prompt_words: {self.prompt_len}, seed: {self.seed}}}",
                f"rollout.prompts_per_step={self.prompts}", f"rollout.samples_per_prompt={self.samples}",
                f"rollout.max_new_tokens={self.response_len}", "rollout.temperature=1.0",
                f"rollout.micro_batch={self.prompts * self.samples}", f"optim.micro_batch={self.micro_batch}",
                f"optim.lr={self.lr}", "teacher.kind=ema", "teacher.update_rate=0.05", "log.rollouts_every=0",
                "log.tensorboard=false", "log.progress=false"]
        if self.device:
            base.append(f"device={self.device}")
        self.methods = self.methods or methods_for(self.ks, self.top_k, self.prompts)
        self.configs = {m.label: load_config(None, [*base, *m.overrides]) for m in self.methods}
        self.trainer = Trainer(self.configs[self.methods[0].label])
        self.clock = PhaseClock(self.trainer)
        self.device_name = (torch.cuda.get_device_name() if self.trainer.acc.device.type == "cuda"
                            else f"CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores)")

    def step(self, method: Method) -> dict:
        """One full training step of ``method`` on the fixed batch -> seconds per phase, tokens, memory."""
        self.trainer.cfg = self.configs[method.label]
        with forced_length(), self.clock.scoring_pass(), PeakMemory(self.trainer.acc.device) as mem:
            metrics, _ = self.trainer.run_step(0)  # step 0 every time: the same prompts, the same seeds
        out = self.clock.phases(metrics, method.k)
        out["tokens"] = round(metrics["perf/tokens_per_s"] * metrics["perf/step_s"])
        out["peak_mem_bytes"] = mem.peak
        return out

    def run(self, repeats: int = 3, warmup: int = 1, log=functools.partial(print, flush=True)) -> dict:
        runs: dict[str, list[dict]] = {m.label: [] for m in self.methods}
        for r in range(warmup + repeats):
            for m in self.methods:  # interleaved: A B C … A B C …
                res = self.step(m)
                if r >= warmup:
                    runs[m.label].append(res)
                log(f"  {'warmup' if r < warmup else f'repeat {r - warmup + 1}'} {m.label}: {res['step']:.2f} s")
        return summarize(self, runs, repeats)

    def close(self):
        self._tmp.cleanup()


PHASES = ("rollout", "task", "context", "teacher", "negatives", "update", "teacher_update", "learner", "step")


def summarize(bench: Bench, runs: dict[str, list[dict]], repeats: int) -> dict:
    by_label = {m.label: m for m in bench.methods}
    methods = {}
    for label, rs in runs.items():
        m, tokens = by_label[label], rs[0]["tokens"]
        med = {p: statistics.median(r[p] for r in rs) for p in PHASES}
        scored = {"rollout": tokens, "teacher": tokens, "negatives": m.k * tokens, "update": tokens, "step": tokens}
        methods[label] = {
            "family": m.family, "k": m.k, "seconds": med, "seconds_all": {p: [r[p] for r in rs] for p in PHASES},
            "tokens_per_s": {p: n / med[p] for p, n in scored.items() if n and med[p] > 0},
            "peak_mem_gib": max(r["peak_mem_bytes"] for r in rs) / 2**30,
        }
    ratios = {}
    for label, rs in runs.items():
        m = by_label[label]
        base = {"token": "sdpo-token", "logit": "sdpo-logit"}.get(m.family)
        if not m.k or base not in runs:
            continue
        pairs = list(zip(rs, runs[base]))
        ratios[f"{label}/{base}"] = {
            "step": statistics.median(a["step"] / b["step"] for a, b in pairs),
            "learner": statistics.median(a["learner"] / b["learner"] for a, b in pairs),
        }
    return {
        "device": bench.device_name, "model": bench.model, "dtype": bench.dtype, "torch": torch.__version__,
        "batch": {"prompts": bench.prompts, "samples": bench.samples, "prompt_words": bench.prompt_len,
                  "response_len": bench.response_len, "micro_batch": bench.micro_batch, "top_k": bench.top_k},
        "repeats": repeats, "methods": methods, "ratios": ratios,
        "notes": "median over interleaved repeats; ratios are medians of per-repeat (paired) ratios; "
                 "learner = teacher + negatives + update + teacher_update",
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
    t = Table(title="CREDIT / SDPO (paired medians)")
    for c in ("ratio", "whole step", "learner (scoring + update)"):
        t.add_column(c, justify="right" if c != "ratio" else "left")
    for name, r in result["ratios"].items():
        t.add_row(name, f"{r['step']:.3f}", f"{r['learner']:.3f}")
    console.print(t)


# ----------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="Time every phase of a step: GRPO, SDPO, CREDIT (K negatives), side by side",
                       description="Time one training step phase by phase on a fixed synthetic batch, for GRPO, "
                                   "SDPO (token, logit) and CREDIT (token, logit, K negatives); methods are "
                                   "interleaved across repeats; prints medians and CREDIT/SDPO ratios.")
    p.add_argument("--model", default="tiny",
                   help="tiny | smollm2-135m-instruct | an architecture with random weights (qwen3-0.6b, "
                        "qwen3-1.7b, smollm2-135m) | a Hugging Face id or path (default tiny)")
    p.add_argument("--prompts", "-B", type=int, default=5, help="B prompt groups (K <= B-1; default 5)")
    p.add_argument("--samples", "-G", type=int, default=4, help="G rollouts per prompt (>= 3 keeps every rollout's demo; default 4)")
    p.add_argument("--prompt-len", type=int, default=32, help="words per synthetic prompt (~1 token each; default 32)")
    p.add_argument("--response-len", type=int, default=32, help="response tokens, forced (default 32)")
    p.add_argument("--ks", default="1,2,4", help="CREDIT negatives K to time, comma-separated (default 1,2,4)")
    p.add_argument("--top-k", type=int, default=100, help="logit-mode support: student top-K plus a tail (default 100)")
    p.add_argument("--methods", help="only these labels, comma-separated (e.g. sdpo-token,credit-token-k1)")
    p.add_argument("--micro-batch", type=int, help="sequences per forward/backward (default B·G)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per method (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (default 1)")
    p.add_argument("--device", help="cpu, cuda (default: what accelerate picks)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="(default float32)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.add_argument("--json", dest="json_out", help="write the result here")
    p.set_defaults(func=run, command="bench")


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = tuple(int(k) for k in str(args.ks).split(",") if k.strip())
    methods = methods_for(ks, args.top_k, args.prompts)
    if args.methods:
        wanted = [s.strip() for s in args.methods.split(",")]
        unknown = set(wanted) - {m.label for m in methods}
        if unknown:
            raise ValueError(f"--methods: unknown {sorted(unknown)}; known: {[m.label for m in methods]}")
        methods = [m for m in methods if m.label in wanted]
    bench = Bench(model=args.model, prompts=args.prompts, samples=args.samples, prompt_len=args.prompt_len,
                  response_len=args.response_len, ks=ks, top_k=args.top_k, micro_batch=args.micro_batch,
                  device=args.device, dtype=args.dtype, seed=args.seed, methods=methods)
    try:
        result = bench.run(args.repeats, args.warmup)
    finally:
        bench.close()
    print_tables(result)
    if args.json_out:
        from credit.viz import write_json

        write_json(args.json_out, result)
    return 0
