"""Rollout sampling: ``G`` responses per prompt from the student, with transformers ``generate``.

``sample(model, tokenizer, prompts, SamplingConfig(...))`` takes prompts as token-id lists (the chat
template already applied; ``encode_prompts`` does that) and returns ``Rollouts``: per sample, its
prompt ids, its response ids (no padding; the eos token included when it was generated), whether it
was truncated, its text and its prompt index. Samples of one prompt are contiguous:
``i*G .. i*G+G-1`` belong to prompt ``i``. ``Rollouts.pack`` lays them out as tensors for scoring
(``credit.scoring.pack``).

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

Three backends decode (``SamplingConfig.backend``), all with the same distribution, stop rules and
truncation flags:
- ``generate``: transformers ``generate`` with a dynamic cache;
- ``loop``: the same sampling steps in a plain decode loop over the model's forward that drops a row
  (and its KV cache) as soon as it ends. ``generate`` keeps decoding a finished row until the whole
  batch is done; when decoding is compute-bound (CPU) and responses end early, that is most of the
  work. While no row has ended it draws the very tokens ``generate`` draws from the same seed; once
  the batch shrinks the draws are different draws from the same distribution;
- ``static``: ``generate`` with transformers' static KV cache, which transformers compiles on CUDA;
  the prompt is prefilled per sample (a static cache cannot take the shared prefill).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from credit.scoring import cache_kwarg, pack

BACKENDS = ("generate", "loop", "static")


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
    """Sequences per ``generate`` call (memory bound); None: all at once."""
    seed: int | None = None
    """Seed for the sampling RNG; None: draw from ``generator`` or the global RNG."""
    share_prefill: bool = True
    """Run the prompt forward once per prompt (not once per sample) and copy its KV cache to the
    G samples. Same tokens, less compute (~40% of CPU sampling time at G=8 on SmolLM2); turn it
    off for models whose cache is not a transformers ``DynamicCache``."""
    backend: str = "generate"
    """How tokens are decoded: ``generate``, ``loop`` or ``static`` (see the module docstring)."""

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
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

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


class _StopStrings(StoppingCriteria):
    """A ``generate`` stopping criterion: a row is done once the tail of its response contains a
    stop string (decoding a short tail each step; the exact cut is made afterwards)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width
        # a token decodes to at least one character, except specials/partial bytes: pad the window
        self.window = max(len(s) for s in stop) + 8

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = self.hits(input_ids[:, self.prompt_width:][:, -self.window:].tolist())  # the tail only
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def hits(self, responses: list[list[int]]) -> list[bool]:
        """Whether each response's tail contains a stop string."""
        texts = self.tokenizer.batch_decode([r[-self.window:] for r in responses], skip_special_tokens=True)
        return [any(s in t for s in self.stop) for t in texts]


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
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


def _shared_prefill(model, ids: torch.Tensor, mask: torch.Tensor):
    """KV cache of ``ids[:, :-1]`` computed once per distinct row, then copied to every row.

    ``generate`` then only runs the last prompt token: with a cache of length P-1 it feeds
    ``ids[:, P-1:]``. Rows of one prompt are identical (same left padding), hence one forward each."""
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
    model(input_ids=u_ids, attention_mask=u_mask, position_ids=(u_mask.cumsum(-1) - 1).clamp(min=0),
          use_cache=True, **{cache_kwarg(): cache})
    cache.batch_select_indices(torch.tensor(index, device=ids.device))
    return cache


@torch.no_grad()
def _generate_chunk(model, tokenizer, prompts, cfg, eos_ids, pad_id, device):
    ids, mask = _left_pad(prompts, pad_id, device)  # (b, P), (b, P)
    cache = None
    if cfg.share_prefill and cfg.num_samples > 1 and cfg.backend != "static":
        cache = _shared_prefill(model, ids, mask)
    if cfg.backend == "loop":
        return _decode_loop(model, tokenizer, ids, mask, cache, cfg, eos_ids)
    kw = _generate_kwargs(cfg, eos_ids, pad_id)
    if cache is not None:
        kw[cache_kwarg()] = cache
    if cfg.backend == "static":
        kw["cache_implementation"] = "static"
    if cfg.stop:
        kw["stopping_criteria"] = StoppingCriteriaList([_StopStrings(tokenizer, cfg.stop, ids.shape[1])])
    out = model.generate(input_ids=ids, attention_mask=mask, **kw)  # (b, P+T)
    return out[:, ids.shape[1]:].tolist()  # (b, T), T <= max_new_tokens


def _next_tokens(logits: torch.Tensor, cfg: SamplingConfig, step: int, eos_ids: list[int]) -> torch.Tensor:
    """One sampling step on fp32 logits (b, V) -> tokens (b,): the processors ``generate`` runs with
    ``_generate_kwargs``, in its order (min new tokens, temperature, top-k, top-p), then argmax or one
    ``torch.multinomial`` draw over the whole batch (the same draws as ``generate``)."""
    if step < cfg.min_new_tokens and eos_ids:
        logits[:, eos_ids] = float("-inf")
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


def _decode_loop(model, tokenizer, ids, mask, cache, cfg: SamplingConfig, eos_ids: list[int]) -> list[list[int]]:
    """Decode rows of ``ids`` (b, P) until each ends (eos, stop string or ``max_new_tokens``), dropping
    an ended row from the batch and its KV cache. ``cache``: the shared prefill of ``ids[:, :-1]``, or
    None to prefill here. Returns each row's new tokens, as ``generate`` would before padding."""
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
                       logits_to_keep=1, **{cache_kwarg(): cache}).logits[:, -1, :].float()  # (a, V)
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


def _cut(tokenizer, ids: list[int], cfg: SamplingConfig, eos: set[int]) -> tuple[list[int], bool]:
    """Cut one raw generated row at eos (kept) or at a stop string (completing token kept)."""
    end = next((k + 1 for k, t in enumerate(ids) if t in eos), None)
    stop_end = _find_stop(tokenizer, ids[:end] if end is not None else ids, cfg.stop)
    if stop_end is not None:
        return ids[:stop_end], False
    if end is not None:
        return ids[:end], False
    return ids, len(ids) >= cfg.max_new_tokens


def sample(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    **overrides,
) -> Rollouts:
    """Sample ``config.num_samples`` responses per prompt.

    Args:
        model: a causal LM (transformers or peft); switched to eval for sampling, mode restored.
        tokenizer: decodes responses and stop strings; its pad id (else eos) pads prompts.
        prompts: token-id lists, chat template applied (see ``encode_prompts``).
        config: ``SamplingConfig``; ``overrides`` replace its fields (``sample(..., temperature=0)``).
        generator: a CPU ``torch.Generator`` to draw the per-micro-batch seeds from, when
            ``config.seed`` is None. With neither, the global RNG is used (and advanced).
    """
    cfg = dataclasses.replace(config or SamplingConfig(), **overrides)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("sample() needs at least one prompt, and every prompt needs >= 1 token")
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
    device = next(model.parameters()).device
    g = cfg.num_samples
    expanded = [list(p) for p in prompts for _ in range(g)]  # sample i*G+j <- prompt i
    mb = cfg.micro_batch_size or len(expanded)
    if cfg.seed is not None:
        generator = torch.Generator().manual_seed(cfg.seed)
    rng_devices = [device] if device.type == "cuda" else []

    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    raw: list[list[int]] = []
    try:
        for start in range(0, len(expanded), mb):
            chunk = expanded[start:start + mb]
            if generator is None:
                raw += _generate_chunk(model, tokenizer, chunk, cfg, eos_ids, pad_id, device)
                continue
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed)
                raw += _generate_chunk(model, tokenizer, chunk, cfg, eos_ids, pad_id, device)
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
    )
