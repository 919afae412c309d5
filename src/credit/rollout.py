"""Rollout sampling: ``G`` responses per prompt from the student, through a rollout engine.

An engine is a small object: ``sample(prompts, sampling) -> Rollouts`` and ``load_weights(model)``,
which the loop calls with the training module before each rollout (so after every optimizer step
and after a resume). ``ENGINES`` maps each ``rollout.backend`` name to its class: the config, the
CLIs' ``--backend`` choices and ``SamplingConfig`` read it, so an engine registered here (an
inference server, vLLM) is a choice everywhere without touching the loop. The engines below decode
with the module they were built on, so their ``load_weights`` does nothing.

``sample(model, tokenizer, prompts, SamplingConfig(...))`` builds the engine ``config.backend`` names
around ``model`` and samples (``model`` may also be an engine, which then samples itself). Prompts are
token-id lists (the chat template already applied; ``encode_prompts`` does that); ``Rollouts`` holds
per sample its prompt ids, its response ids (no padding; the eos token included when it was
generated), whether it was truncated, its text and its prompt index. Samples of one prompt are
contiguous: ``i*G .. i*G+G-1`` belong to prompt ``i``. ``Rollouts.pack`` lays them out as tensors for
scoring (``credit.scoring.pack``).

How this departs from a plain ``model.generate``:
- the sampling distribution is exactly ``softmax(logits / T)`` restricted by ``top_p`` / ``top_k``
  when asked: transformers' default ``top_k=50`` and any repetition penalty or min-p in the model's
  ``generation_config`` are switched off, because the learner rescores the tokens at temperature T
  and the two must agree (on-policy);
- stop strings end a response at the token that completes them (that token is kept, nothing after
  it; its text may run a few characters past the stop string); checked while generating, then the
  result is cut token-accurately;
- randomness comes from ``seed``/``generator``, one derived seed per micro-batch, under
  ``torch.random.fork_rng``: the global RNG is untouched and the same seed (with the same
  micro-batch size) gives the same samples. Temperature 0 is greedy decoding;
- the prompt forward (prefill) runs once per distinct prompt of a micro-batch and its KV cache is
  copied to the G samples (``share_prefill``): identical tokens, ~G x less prefill compute.

Four engines (``SamplingConfig.backend``), all with the same distribution, stop rules and truncation
flags:
- ``generate``: transformers ``generate`` with a dynamic cache, micro-batch by micro-batch;
- ``loop``: the same sampling steps in a plain decode loop over the model's forward that drops a row
  (and its KV cache) as soon as it ends. ``generate`` keeps decoding a finished row until the whole
  batch is done; when decoding is compute-bound (CPU) and responses end early, that is most of the
  work. While no row has ended it draws the very tokens ``generate`` draws from the same seed; once
  the batch shrinks the draws are different draws from the same distribution;
- ``static``: ``generate`` with transformers' static KV cache, which transformers compiles on CUDA;
  the prompt is prefilled per sample (a static cache cannot take the shared prefill);
- ``continuous``: continuous batching over a slot KV cache (``ContinuousEngine``): ``micro_batch_size``
  slots, each holding one sequence in preallocated key/value rows; a response that ends hands its
  slot to the next queued sample at once (its prompt's prefill copied in), so no row decodes past
  its end and no micro-batch waits for its longest response; when the queue is empty, ended rows
  leave the batch. Per step one forward of one token per live slot, with a 4-D mask of each slot's
  length (no padding, no cache concatenation). The tokens' log-probs at T come back with them
  (``Rollouts.logprobs``). Randomness: one seed per wave (a batch filled from empty), the draws in
  slot order, so while no row ends early it draws exactly ``generate``'s tokens, micro-batch by
  micro-batch; once rows end it draws from the same distribution.

Why ``continuous`` is ours and not transformers' continuous batching (``generate_batch``,
``ContinuousBatchingManager``, transformers 5.25): it samples in a background thread from one global
seed, in the scheduler's order of a packed ragged batch, so it can neither draw ``generate``'s tokens
from a seed nor honour a per-call generator; it has no stop strings and no ``min_new_tokens``; and on
this CPU it decoded the quickstart's rollout (SmolLM2-135M, 64 x <= 24 tokens, one thread) at 30
tokens/s against ``generate``'s 87. Ours keeps whole-sequence slots, not pages: memory is
``slots x (longest prompt + max_new_tokens)`` positions, like a static cache; it runs the model's
own attention layers (sdpa or eager) with full attention (no sliding-window layers).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

# torch and transformers are imported where they are used: the config and the CLIs read ``ENGINES``
# (their choices of ``rollout.backend``) without loading them.


@dataclass(frozen=True)
class SamplingConfig:
    """How rollouts are sampled. Validated on creation; never mutated."""

    num_samples: int = 1
    """G: rollouts per prompt (grouped contiguously)."""
    max_new_tokens: int = 256
    """Response budget; a response that reaches it without eos or a stop string is ``truncated``."""
    min_new_tokens: int = 0
    """Suppress eos until this many tokens (benchmarks use ``= max_new_tokens`` for fixed lengths)."""
    temperature: float = 1.0
    """Sampling temperature T; 0 means greedy (deterministic). Log-probs are rescored at this T."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it (transformers' default 50 is not used)."""
    stop: tuple[str, ...] = ()
    """Stop strings: a response ends with the token that completes the first one it contains."""
    micro_batch_size: int | None = None
    """Sequences decoded at once (memory bound): per ``generate`` call, or the slots of ``continuous``;
    None: all at once."""
    seed: int | None = None
    """Seed for the sampling RNG; None: draw from ``generator`` or the global RNG."""
    share_prefill: bool = True
    """Run the prompt forward once per prompt (not once per sample) and copy its KV cache to the
    G samples. Same tokens, less compute (~40% of CPU sampling time at G=8 on SmolLM2); turn it
    off for models whose cache is not a transformers ``DynamicCache``."""
    backend: str = "generate"
    """The engine that decodes: a name of ``ENGINES`` (see the module docstring)."""

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {self.micro_batch_size}")
        if isinstance(self.stop, str):  # a lone string would be split into characters
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        check_backend(self.backend)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Rollouts:
    """Sampled responses; sample ``k`` belongs to prompt ``group[k]`` (contiguous groups of G)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    truncated: list[bool]
    texts: list[str]
    group: list[int]
    num_samples: int = 1
    """G, the group size."""
    seconds: float = 0.0
    """Wall time of sampling."""
    tokens: int = 0
    """Response tokens produced (after cutting at stop strings)."""
    logprobs: list[list[float]] | None = None
    """Per response token, ``log softmax(logits / T)`` of it as the engine computed it while decoding
    (T = 1 when greedy; the full vocabulary, as the learner scores it, whatever top-p/top-k cut);
    None from engines that do not return them."""

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def num_prompts(self) -> int:
        return len(self) // self.num_samples if self.num_samples else 0

    def pack(self, pad_token_id: int, *, response_len: int | None = None, device=None):
        """Tensors for scoring, via ``credit.scoring.pack`` (the one packer of the library): prompts
        left-padded to a common width ``P``, responses right-padded to ``R``, so every response
        starts at column ``P`` and ``logits[:, P-1 : P+R-1]`` predict the response tokens.

        Returns ``credit.scoring.Packed``: input_ids, attention_mask, position_ids ``(N, P+R)``;
        response_ids, response_mask ``(N, R)``; position ids restart at 0 on each row's first real
        token, as in ``generate``."""
        from credit.scoring import pack

        packed = pack(self.prompt_ids, self.response_ids, pad_token_id, response_len)
        return packed.to(device) if device is not None else packed

    def metrics(self) -> dict[str, float]:
        """``rollout/*`` and ``perf/*`` metrics (docs/method.md §1.5)."""
        lengths = [len(y) for y in self.response_ids]
        n = max(len(lengths), 1)
        return {
            "rollout/response_len_mean": sum(lengths) / n,
            "rollout/response_len_max": float(max(lengths, default=0)),
            "rollout/truncated_frac": sum(self.truncated) / n,
            "rollout/samples": float(len(lengths)),
            "perf/rollout_seconds": self.seconds,
            "perf/rollout_tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0,
        }


def encode_prompts(tokenizer, conversations: Sequence[Sequence[dict[str, str]]], *,
                   chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """Chat template with ``add_generation_prompt=True`` for each conversation -> token-id lists.

    ``chat_template_kwargs`` are extra variables of the template (Qwen3: ``{"enable_thinking": False}``);
    the teacher contexts get the same ones, so student and teacher see one prompt format.
    The template is rendered to text and tokenized without adding special tokens, because the
    template already contains them (a second bos would shift every prompt)."""
    out = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False,
                                             **dict(chat_template_kwargs or {}))
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def position_limit(model) -> int | None:
    """The longest sequence ``model`` has positions for (``max_position_embeddings``, GPT-2's
    ``n_positions``), or None when its config names no limit."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        limit = getattr(config, name, None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def check_prompt_lengths(tokenizer, model, task, max_new_tokens: int,
                         chat_template_kwargs: dict | None = None) -> None:
    """Every train and test prompt of ``task``, encoded as the loop encodes it (``encode_prompts``
    with ``chat_template_kwargs``), plus ``max_new_tokens`` must fit the model's positions: else a
    ``ValueError`` naming the first example that does not, its length and the limit. Checked once,
    before any step, because a prompt past the limit fails deep inside a forward pass (an index error
    of the position embedding) or is silently scored at positions the model never learned."""
    limit = position_limit(model)
    if limit is None:
        return
    for split in ("train", "test"):
        examples = task.examples(split)
        for ex, ids in zip(examples, encode_prompts(tokenizer, [e.messages for e in examples],
                                                    chat_template_kwargs=chat_template_kwargs)):
            if len(ids) + max_new_tokens > limit:
                raise ValueError(
                    f"{split} example {ex.id!r}: its prompt is {len(ids)} tokens, and with rollout.max_new_tokens="
                    f"{max_new_tokens} a rollout needs {len(ids) + max_new_tokens} positions; the model has "
                    f"{limit} (max_position_embeddings). Drop or shorten that prompt, or lower rollout.max_new_tokens")


# ----------------------------------------------------------------------------- engines


class Engine:
    """A rollout engine: ``sample(prompts, sampling) -> Rollouts``, ``load_weights(model)``.

    Built once from the training module and its tokenizer (``build_engine``). This base class does
    what every engine shares — the config, the G copies of each prompt, eval mode, timing, cutting at
    eos and stop strings, the texts — and asks ``_decode`` for each sequence's raw new tokens."""

    name: ClassVar[str]
    refills: ClassVar[bool] = False
    """Whether sequences of a later micro-batch take the place of ended ones (then one call over the
    whole queue is not the same as calls over its pieces)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def load_weights(self, model) -> None:
        """Take the weights of ``model`` (the training module, whole: the loop calls this inside
        ``parallel.gathered``) before the next rollout. Engines that decode with the module itself,
        as all of these do, have nothing to copy."""

    def sample(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig | None = None, *,
               generator=None, progress: Callable[[int], None] | None = None, **overrides) -> Rollouts:
        """``sampling.num_samples`` responses per prompt (see ``credit.rollout.sample``); ``progress``
        is called with the number of sequences finished, as they finish."""
        import torch

        cfg = dataclasses.replace(sampling or SamplingConfig(), **overrides)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("sample() needs at least one prompt, and every prompt needs >= 1 token")
        model, tokenizer = self.model, self.tokenizer
        eos_ids = _eos_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
        device = next(model.parameters()).device
        g = cfg.num_samples
        expanded = [list(p) for p in prompts for _ in range(g)]  # sample i*G+j <- prompt i
        if cfg.seed is not None:
            generator = torch.Generator().manual_seed(cfg.seed)

        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                raw, logprobs = self._decode(expanded, cfg, generator, eos_ids, pad_id, device, progress or _ignore)
        finally:
            model.train(was_training)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0

        eos = set(eos_ids)
        cut = [_cut(tokenizer, row, cfg, eos) for row in raw]
        responses = [ids for ids, _ in cut]
        return Rollouts(
            prompt_ids=expanded,
            response_ids=responses,
            truncated=[t for _, t in cut],
            texts=tokenizer.batch_decode(responses, skip_special_tokens=True),
            group=[k // g for k in range(len(expanded))],
            num_samples=g,
            seconds=seconds,
            tokens=sum(len(y) for y in responses),
            logprobs=None if logprobs is None else [lp[:len(y)] for lp, y in zip(logprobs, responses)],
        )

    def _decode(self, sequences: list[list[int]], cfg: SamplingConfig, generator, eos_ids: list[int],
                pad_id: int, device, progress: Callable[[int], None]) -> tuple[list[list[int]], list[list[float]] | None]:
        """Each sequence's new tokens as decoded (before the cut), and their log-probs or None."""
        raise NotImplementedError


class _MicroBatched(Engine):
    """Sequences in micro-batches of ``micro_batch_size``, one derived seed each (``_chunk`` decodes one)."""

    def _decode(self, sequences, cfg, generator, eos_ids, pad_id, device, progress):
        import torch

        mb = cfg.micro_batch_size or len(sequences)
        rng_devices = [device] if device.type == "cuda" else []
        raw: list[list[int]] = []
        for start in range(0, len(sequences), mb):
            chunk = sequences[start:start + mb]
            if generator is None:
                raw += self._chunk(chunk, cfg, eos_ids, pad_id, device)
            else:
                seed = int(torch.randint(0, 2**62, (), generator=generator))
                with torch.random.fork_rng(devices=rng_devices):
                    torch.manual_seed(seed)
                    raw += self._chunk(chunk, cfg, eos_ids, pad_id, device)
            progress(len(chunk))
        return raw, None

    def _chunk(self, prompts, cfg, eos_ids, pad_id, device) -> list[list[int]]:
        raise NotImplementedError


class GenerateEngine(_MicroBatched):
    """transformers ``generate`` with a dynamic cache (and the shared prefill)."""

    name = "generate"
    cache_implementation: ClassVar[str | None] = None

    def _chunk(self, prompts, cfg, eos_ids, pad_id, device):
        from transformers import StoppingCriteriaList

        ids, mask = _left_pad(prompts, pad_id, device)  # (b, P), (b, P)
        kw = _generate_kwargs(cfg, eos_ids, pad_id)
        if self.cache_implementation is not None:
            kw["cache_implementation"] = self.cache_implementation
        elif cfg.share_prefill and cfg.num_samples > 1:
            cache = _shared_prefill(self.model, ids, mask)
            if cache is not None:
                kw[_cache_kwarg()] = cache
        if cfg.stop:
            kw["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tokenizer, cfg.stop, ids.shape[1])])
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)  # (b, P+T)
        return out[:, ids.shape[1]:].tolist()  # (b, T), T <= max_new_tokens


class StaticEngine(GenerateEngine):
    """``generate`` with transformers' static KV cache (compiled on CUDA); no shared prefill."""

    name = "static"
    cache_implementation = "static"


class LoopEngine(_MicroBatched):
    """A plain decode loop over the model's forward that drops each row (and its cache) as it ends."""

    name = "loop"

    def _chunk(self, prompts, cfg, eos_ids, pad_id, device):
        ids, mask = _left_pad(prompts, pad_id, device)  # (b, P), (b, P)
        cache = _shared_prefill(self.model, ids, mask) if cfg.share_prefill and cfg.num_samples > 1 else None
        return _decode_loop(self.model, self.tokenizer, ids, mask, cache, cfg, eos_ids)


class ContinuousEngine(Engine):
    """Continuous batching over a slot KV cache (the module docstring says what and why)."""

    name = "continuous"
    refills = True

    def _decode(self, sequences, cfg, generator, eos_ids, pad_id, device, progress):
        import contextlib
        import itertools

        import torch

        model, n = self.model, len(sequences)
        slots = min(cfg.micro_batch_size or n, n)
        mask_kind = _mask_kind(model)
        kv = _SlotCache(slots, max(len(p) for p in sequences) + cfg.max_new_tokens, device)
        out: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        queue = deque(range(n))
        # the prefill of a prompt, kept until its last sample has a slot: key -> (length, per-layer k, v)
        key = (lambda r: tuple(sequences[r])) if cfg.share_prefill else (lambda r: r)
        waiting: dict = {}  # key -> samples still queued
        for r in range(n):
            waiting[key(r)] = waiting.get(key(r), 0) + 1
        prefixes: dict = {}
        rows: list[int] = []  # rows[s]: the sequence in slot s (the live slots are 0 .. len(rows)-1)
        feed: list[int] = []  # feed[s]: the token slot s runs next
        eos, stop = set(eos_ids), (_StopStrings(self.tokenizer, cfg.stop, 0) if cfg.stop else None)
        rng_devices = [device] if device.type == "cuda" else []

        def admit(s: int, r: int) -> None:
            """Sequence r takes slot s: its prompt's prefill copied in, its last prompt token fed next."""
            k = key(r)
            if k not in prefixes:  # prefill the distinct prompts of r and the next queued sequences at once
                todo: dict = {}
                for q in [r, *itertools.islice(queue, slots)]:
                    if key(q) not in prefixes:
                        todo.setdefault(key(q), sequences[q][:-1])
                prefixes.update(kv.prefill(model, todo, mask_kind))
            kv.place(s, prefixes[k])
            waiting[k] -= 1
            if not waiting[k]:
                del prefixes[k]
            if s == len(rows):  # a new slot at the end of the batch
                rows.append(r)
                feed.append(sequences[r][-1])
            else:
                rows[s], feed[s] = r, sequences[r][-1]

        forked = torch.random.fork_rng(devices=rng_devices) if generator is not None else contextlib.nullcontext()
        with forked:
            while queue:
                # a wave: an empty batch filled from the queue, with its own seed (generate's micro-batch)
                if generator is not None:
                    torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
                for s in range(min(slots, len(queue))):
                    admit(s, queue.popleft())
                while rows:
                    a = len(rows)
                    counts = torch.tensor([len(out[r]) for r in rows], device=device)  # (a,) tokens so far
                    logits = kv.step(model, torch.tensor(feed, device=device), mask_kind)  # (a, V)
                    lp = _token_logprob(logits, cfg)  # as the learner scores them (fp64 from a fp64 model)
                    tokens = _next_tokens(logits.float(), cfg, counts, eos_ids)  # (a,) drawn as generate draws
                    picked = lp.gather(1, tokens[:, None]).squeeze(1).tolist()  # log-probs of the draws
                    ended = []
                    for s, (token, logp) in enumerate(zip(tokens.tolist(), picked)):
                        r = rows[s]
                        out[r].append(token)
                        logps[r].append(logp)
                        feed[s] = token
                        if token in eos or len(out[r]) >= cfg.max_new_tokens:
                            ended.append(s)
                    if stop is not None:
                        hit = stop.hits([out[r] for r in rows])
                        ended = sorted(set(ended) | {s for s in range(a) if hit[s]})
                    if ended:
                        progress(len(ended))
                    if len(ended) == a:  # the whole batch ended at once: the next wave starts from empty
                        rows.clear()
                        feed.clear()
                        continue
                    holes = []
                    for s in ended:  # an ended row's slot goes to the next queued sequence
                        if queue:
                            admit(s, queue.popleft())
                        else:
                            holes.append(s)
                    if holes:  # the queue is empty: the last live slots move into the holes
                        keep = a - len(holes)
                        movers = [s for s in range(keep, a) if s not in holes]
                        targets = [s for s in holes if s < keep]
                        kv.move(movers, targets)
                        for s, t in zip(movers, targets):
                            rows[t], feed[t] = rows[s], feed[s]
                        del rows[keep:], feed[keep:]
        return out, logps


#: ``rollout.backend`` name -> engine class: the one list of choices (config, CLIs, ``SamplingConfig``).
ENGINES: dict[str, type[Engine]] = {e.name: e for e in (GenerateEngine, LoopEngine, StaticEngine, ContinuousEngine)}


def check_backend(name: str) -> str:
    """``name`` if it names an engine of ``ENGINES``, else a one-line ``ValueError`` listing them."""
    if name not in ENGINES:
        raise ValueError(f"backend must be one of {', '.join(ENGINES)}, got {name!r}")
    return name


def build_engine(backend: str, model, tokenizer) -> Engine:
    """The engine ``backend`` names, decoding with ``model`` (the training module) and ``tokenizer``."""
    return ENGINES[check_backend(backend)](model, tokenizer)


def sample(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig | None = None,
    *,
    generator=None,
    progress: Callable[[int], None] | None = None,
    **overrides,
) -> Rollouts:
    """Sample ``config.num_samples`` responses per prompt.

    Args:
        model: a causal LM (transformers or peft), decoded by the engine ``config.backend`` names;
            switched to eval for sampling, mode restored. Or an ``Engine``, which then samples.
        tokenizer: decodes responses and stop strings; its pad id (else eos) pads prompts.
        prompts: token-id lists, chat template applied (see ``encode_prompts``).
        config: ``SamplingConfig``; ``overrides`` replace its fields (``sample(..., temperature=0)``).
        generator: a CPU ``torch.Generator`` to draw the per-micro-batch seeds from, when
            ``config.seed`` is None. With neither, the global RNG is used (and advanced).
        progress: called with the number of sequences finished, as they finish (progress bars).
    """
    cfg = dataclasses.replace(config or SamplingConfig(), **overrides)
    engine = model if isinstance(model, Engine) else build_engine(cfg.backend, model, tokenizer)
    return engine.sample(prompts, cfg, generator=generator, progress=progress)


# ----------------------------------------------------------------------------- shared pieces


def _ignore(_: int) -> None:
    pass


def _cache_kwarg() -> str:
    from credit.scoring import cache_kwarg

    return cache_kwarg()


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def _find_stop(tokenizer, ids: list[int], stop: tuple[str, ...]) -> int | None:
    """Number of tokens up to and including the one that completes the first stop string, or None.

    Binary search over prefixes: "the decoded prefix contains a stop string" is monotone in the
    prefix length, so O(log n) decodes find the first completing token."""
    if not stop or not ids:
        return None

    def hit(k: int) -> bool:
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        return any(s in text for s in stop)

    if not hit(len(ids)):
        return None
    lo, hi = 1, len(ids)  # hit(hi) is True
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class _StopStrings:
    """A ``generate`` stopping criterion: a row is done once the tail of its response contains a
    stop string (decoding a short tail each step; the exact cut is made afterwards)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width
        # a token decodes to at least one character, except specials/partial bytes: pad the window
        self.window = max(len(s) for s in stop) + 8

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = self.hits(input_ids[:, self.prompt_width:][:, -self.window:].tolist())  # the tail only
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def hits(self, responses: list[list[int]]) -> list[bool]:
        """Whether each response's tail contains a stop string."""
        texts = self.tokenizer.batch_decode([r[-self.window:] for r in responses], skip_special_tokens=True)
        return [any(s in t for s in self.stop) for t in texts]


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device):
    import torch

    width = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (b, P)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (b, P)
    for k, x in enumerate(prompts):
        ids[k, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
        mask[k, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def _generate_kwargs(cfg: SamplingConfig, eos_ids: list[int], pad_id: int) -> dict:
    # Explicit neutral values: generate fills anything left None from model.generation_config and
    # then from global defaults (top_k=50), which would change the distribution being sampled.
    kw = dict(
        max_new_tokens=cfg.max_new_tokens, use_cache=True, num_beams=1, num_return_sequences=1,
        eos_token_id=eos_ids or None, pad_token_id=pad_id,
        repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, min_new_tokens=cfg.min_new_tokens,
        epsilon_cutoff=0.0, eta_cutoff=0.0,
    )
    if cfg.greedy:  # no warpers run without sampling: nothing else to neutralize
        kw.update(do_sample=False)
    else:
        kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                  min_p=0.0)
    return kw


def _shared_prefill(model, ids, mask):
    """KV cache of ``ids[:, :-1]`` computed once per distinct row, then copied to every row.

    ``generate`` then only runs the last prompt token: with a cache of length P-1 it feeds
    ``ids[:, P-1:]``. Rows of one prompt are identical (same left padding), hence one forward each."""
    import torch
    from transformers import DynamicCache

    distinct: dict[tuple[int, ...], int] = {}  # prompt -> its first row
    for k, row in enumerate(ids.tolist()):
        distinct.setdefault(tuple(row), k)
    if len(distinct) == ids.shape[0] or ids.shape[1] < 2:
        return None  # nothing shared: let generate prefill
    order = {row: j for j, row in enumerate(distinct)}
    index = [order[tuple(row)] for row in ids.tolist()]  # row -> its distinct prompt
    pick = torch.tensor(list(distinct.values()), device=ids.device)  # (u,) a row per distinct prompt
    u_ids, u_mask = ids[pick, :-1], mask[pick, :-1]  # (u, P-1)
    cache = DynamicCache(config=model.config)
    # logits_to_keep=1: the prefill's logits are never read (a (u, P-1, V) head product saved)
    model(input_ids=u_ids, attention_mask=u_mask, position_ids=(u_mask.cumsum(-1) - 1).clamp(min=0),
          use_cache=True, logits_to_keep=1, **{_cache_kwarg(): cache})
    cache.batch_select_indices(torch.tensor(index, device=ids.device))
    return cache


def _next_tokens(logits, cfg: SamplingConfig, step, eos_ids: list[int]):
    """One sampling step on fp32 logits (b, V) -> tokens (b,): the processors ``generate`` runs with
    ``_generate_kwargs``, in its order (min new tokens, temperature, top-k, top-p), then argmax or one
    ``torch.multinomial`` draw over the whole batch (the same draws as ``generate``). ``step``: the
    tokens each row has so far, one int for all rows or a (b,) tensor."""
    import torch

    if eos_ids and cfg.min_new_tokens:
        early = step < cfg.min_new_tokens  # eos is suppressed in these rows
        if isinstance(early, bool):
            if early:
                logits[:, eos_ids] = float("-inf")
        elif early.any():
            rows = early.nonzero()  # (e, 1)
            logits[rows, torch.tensor(eos_ids, device=logits.device)] = float("-inf")
    if cfg.greedy:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:
        ascending, order = torch.sort(logits, descending=False)  # (b, V)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - cfg.top_p  # the low tail holding <= 1 - p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), num_samples=1).squeeze(1)


def _token_logprob(logits, cfg: SamplingConfig):
    """``log softmax(logits / T)`` (b, V) over the whole vocabulary, as the learner scores a token
    (T = 1 when greedy): no eos suppression, no top-p/top-k cut."""
    return (logits if cfg.greedy or cfg.temperature == 1 else logits / cfg.temperature).log_softmax(-1)


def _decode_loop(model, tokenizer, ids, mask, cache, cfg: SamplingConfig, eos_ids: list[int]) -> list[list[int]]:
    """Decode rows of ``ids`` (b, P) until each ends (eos, stop string or ``max_new_tokens``), dropping
    an ended row from the batch and its KV cache. ``cache``: the shared prefill of ``ids[:, :-1]``, or
    None to prefill here. Returns each row's new tokens, as ``generate`` would before padding."""
    import torch
    from transformers import DynamicCache

    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    rows = torch.arange(ids.shape[0], device=ids.device)  # (a,) the live rows' indices in ``out``
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, P)
    if cache is None:
        cache = DynamicCache(config=model.config)
        feed, feed_pos = ids, positions
    else:
        feed, feed_pos = ids[:, -1:], positions[:, -1:]
    eos = set(eos_ids)
    stop = _StopStrings(tokenizer, cfg.stop, 0) if cfg.stop else None
    for step in range(cfg.max_new_tokens):
        logits = model(input_ids=feed, attention_mask=mask, position_ids=feed_pos, use_cache=True,
                       logits_to_keep=1, **{_cache_kwarg(): cache}).logits[:, -1, :].float()  # (a, V)
        tokens = _next_tokens(logits, cfg, step, eos_ids)  # (a,)
        ended = []
        for row, token in zip(rows.tolist(), tokens.tolist()):
            out[row].append(token)
            ended.append(token in eos or len(out[row]) >= cfg.max_new_tokens)
        if stop is not None:
            hit = stop.hits([out[r] for r in rows.tolist()])
            ended = [e or h for e, h in zip(ended, hit)]
        live = torch.tensor([not e for e in ended], device=ids.device)  # (a,)
        if not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens, mask, feed_pos = rows[keep], tokens[keep], mask[keep], feed_pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # (a, P + step + 1)
        feed, feed_pos = tokens[:, None], feed_pos[:, -1:] + 1
    return out


def _mask_kind(model) -> str:
    """How ``ContinuousEngine`` hands the attention layers its 4-D mask: boolean for sdpa, additive
    for eager; other attention implementations and sliding-window layers are refused."""
    config = model.config
    kind = getattr(config, "_attn_implementation", None) or "eager"
    if kind not in ("sdpa", "eager"):
        raise ValueError(f"rollout.backend=continuous runs sdpa or eager attention; this model uses {kind!r}: "
                         "load it with attn_implementation='sdpa', or use rollout.backend=loop")
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        raise ValueError("rollout.backend=continuous masks full attention only and this model has "
                         "sliding-window layers; use rollout.backend=loop")
    return kind


class _SlotCache:
    """Key/value rows for ``slots`` sequences of up to ``length`` positions: per layer two
    (slots, H_kv, length, D) tensors, made at the first write in the dtype the layer writes; ``pos[s]``:
    the positions slot s holds. The attention layers call ``update`` (transformers' cache protocol):
    a decode step writes one position per live slot at ``pos``; a prefill writes a block from 0."""

    def __init__(self, slots: int, length: int, device):
        import torch

        self.slots, self.length, self.device = slots, length, device
        self.keys: dict[int, object] = {}
        self.values: dict[int, object] = {}
        self.pos = torch.zeros(slots, dtype=torch.long, device=device)  # (slots,)
        self._live, self._width, self._at = 0, 0, None

    # the protocol the model's layers call
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        import torch

        if layer_idx not in self.keys:
            shape = (self.slots, key_states.shape[1], self.length, key_states.shape[3])
            self.keys[layer_idx] = torch.zeros(shape, dtype=key_states.dtype, device=self.device)
            self.values[layer_idx] = torch.zeros(shape[:3] + (value_states.shape[3],), dtype=value_states.dtype,
                                                 device=self.device)
        k, v, a = self.keys[layer_idx], self.values[layer_idx], self._live
        if self._at is None:  # a block from position 0
            t = key_states.shape[2]
            k[:a, :, :t], v[:a, :, :t] = key_states, value_states
        else:  # one position per live slot, at its own length
            k[self._at] = key_states[:, :, 0]  # (a, H, D)
            v[self._at] = value_states[:, :, 0]
        return k[:a, :, :self._width], v[:a, :, :self._width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._width

    def _forward(self, model, ids, positions, mask, kind):
        import torch

        if kind == "eager":  # additive: 0 where attended, the dtype's lowest elsewhere
            dtype = torch.get_autocast_dtype(self.device.type) if torch.is_autocast_enabled(self.device.type) \
                else next(model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        return model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1,
                     **{_cache_kwarg(): self}).logits[:, -1, :]

    def step(self, model, tokens, kind: str):
        """One decode step: ``tokens`` (a,) fed to the first a slots at their positions -> logits (a, V), fp32
        (fp64 from a fp64 model)."""
        import torch

        a = tokens.shape[0]
        pos = self.pos[:a]  # (a,)
        self._live, self._width = a, int(pos.max()) + 1
        self._at = (torch.arange(a, device=self.device), slice(None), pos)
        mask = torch.arange(self._width, device=self.device)[None, :] <= pos[:, None]  # (a, W) its own past
        logits = self._forward(model, tokens[:, None], pos[:, None], mask[:, None, None, :], kind)
        self.pos[:a] += 1
        return logits if logits.dtype == torch.float64 else logits.float()

    def prefill(self, model, prompts: dict, kind: str) -> dict:
        """The KV of each prompt (key -> ids, right-padded into one batch): key -> (length, [(k, v) per layer]),
        k and v (H, length, D). An empty prompt has nothing to run: (0, None)."""
        import torch

        out = {key: (0, None) for key, ids in prompts.items() if not ids}
        todo = {key: ids for key, ids in prompts.items() if ids}
        if not todo:
            return out
        lengths = torch.tensor([len(ids) for ids in todo.values()], device=self.device)  # (u,)
        t = int(lengths.max())
        ids = torch.zeros((len(todo), t), dtype=torch.long, device=self.device)  # (u, T) right-padded
        for r, x in enumerate(todo.values()):
            ids[r, :len(x)] = torch.tensor(x, device=self.device)
        block = _SlotCache(len(todo), t, self.device)
        block._live, block._width = len(todo), t
        j = torch.arange(t, device=self.device)
        mask = (j[None, :] <= j[:, None])[None] & (j[None, None, :] < lengths[:, None, None])  # (u, T, T)
        block._forward(model, ids, j[None, :].expand(len(todo), t), mask[:, None], kind)
        for r, (key, x) in enumerate(todo.items()):
            out[key] = (len(x), [(block.keys[i][r, :, :len(x)], block.values[i][r, :, :len(x)])
                                 for i in sorted(block.keys)])
        return out

    def place(self, s: int, prefix) -> None:
        """Slot s starts over from a prompt's prefill (``prefill``'s value)."""
        import torch

        length, layers = prefix
        for i, (k, v) in enumerate(layers or []):
            if i not in self.keys:
                self.keys[i] = torch.zeros((self.slots, k.shape[0], self.length, k.shape[2]), dtype=k.dtype,
                                           device=self.device)
                self.values[i] = torch.zeros((self.slots, v.shape[0], self.length, v.shape[2]), dtype=v.dtype,
                                             device=self.device)
            self.keys[i][s, :, :length] = k
            self.values[i][s, :, :length] = v
        self.pos[s] = length

    def move(self, sources: list[int], targets: list[int]) -> None:
        """Slots ``sources`` move to ``targets`` (their keys, values and positions)."""
        if not sources:
            return
        import torch

        src, dst = (torch.tensor(x, device=self.device) for x in (sources, targets))
        for i in self.keys:
            self.keys[i][dst] = self.keys[i][src]
            self.values[i][dst] = self.values[i][src]
        self.pos[dst] = self.pos[src]


def _cut(tokenizer, ids: list[int], cfg: SamplingConfig, eos: set[int]) -> tuple[list[int], bool]:
    """Cut one raw generated row at eos (kept) or at a stop string (completing token kept)."""
    end = next((k + 1 for k, t in enumerate(ids) if t in eos), None)
    stop_end = _find_stop(tokenizer, ids[:end] if end is not None else ids, cfg.stop)
    if stop_end is not None:
        return ids[:stop_end], False
    if end is not None:
        return ids[:end], False
    return ids, len(ids) >= cfg.max_new_tokens
