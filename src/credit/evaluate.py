"""Held-out evaluation: ``n`` samples per item of a task split; mean@n, pass@k, maj@n.

- ``mean@n``: the mean reward over all items and samples.
- ``pass@k``: the unbiased estimator of Chen et al. 2021 (Codex), per item
  ``1 − C(n−c, k) / C(n, k)`` with ``c`` the samples whose reward reaches ``success_threshold``,
  averaged over items; computed as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)`` (no huge binomials).
- ``maj@n``: majority vote over the samples' answers; the item scores the reward of the winning
  answer (the mean over the samples that gave it, which is their common reward when the scorer is
  deterministic; ties: the answer seen first). A sample's answer is ``Outcome.info["extracted"]``, the
  answer the task's scorer read, compared exactly (each task writes it in a canonical form). A sample
  from which nothing was extracted (``None``: no tag, no final number, unparseable calls) casts no
  vote: unanswered samples never form a bloc that outvotes an answer, and an item where no sample
  answered scores 0. The gold answer is never a vote. Only a task whose outcomes carry no
  ``"extracted"`` key at all is voted on by the whitespace-normalized response text.

Generation is batched: every prompt × ``n`` goes through ``credit.rollout.sample`` in micro-batches of
``batch_size`` sequences, one seed per micro-batch drawn from ``seed``; scoring uses the task's
``score_batch``. Its command line, ``credit eval`` (``credit.analysis.eval_cli``), takes a run's task,
sampling settings and chat template variables from its ``config.yaml``, so it reproduces the run's own
held-out figures (``summary.json``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from credit.errors import UserError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one item with ``c`` correct of ``n`` samples: ``1 − C(n−c,k)/C(n,k)``."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _normalize(text: str) -> str:
    return " ".join(str(text).split())


def answer_keys(infos: Sequence[dict[str, Any]], responses: Sequence[str]) -> list[str | None]:
    """One item's vote keys: ``info["extracted"]`` as text, None where nothing was extracted (no vote);
    the normalized response text only when no outcome of the item carries the key."""
    if any("extracted" in info for info in infos):
        return [None if info.get("extracted") is None else str(info["extracted"]) for info in infos]
    return [_normalize(r) for r in responses]


def majority_vote(keys: Sequence[str | None], rewards: Sequence[float]) -> tuple[str | None, int, float]:
    """``(answer, votes, reward)`` of the most frequent key, its reward the mean over its voters; ties
    go to the key seen first; None keys abstain, and with no votes at all the result is (None, 0, 0.0)."""
    voters: dict[str, list[float]] = {}  # insertion order = first seen
    for k, r in zip(keys, rewards, strict=True):
        if k is not None:
            voters.setdefault(k, []).append(r)
    if not voters:
        return None, 0, 0.0
    best = max(voters, key=lambda k: len(voters[k]))  # max keeps the first of equal counts
    return best, len(voters[best]), sum(voters[best]) / len(voters[best])


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def evaluate(
    model,
    tokenizer,
    task,
    *,
    split: str = "test",
    n: int = 4,
    temperature: float = 0.7,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    ks: Sequence[int] | None = None,
    limit: int | None = None,
    success_threshold: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    chat_template_kwargs: dict | None = None,
    backend: str = "generate",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``task``'s ``split`` with ``n`` samples per item.

    Returns a dict with ``mean@n``, ``pass@k`` for each ``k`` in ``ks`` (default 1, 2, 4, …, n),
    ``maj@n`` (floats in [0, 1]), ``num_items``, timing, the settings, ``scorer`` (the task's
    ``scorer_name``: which rule produced the rewards), and ``items`` (per item: id, rewards, correct
    count, the majority answer, None when no sample answered, and its votes). The model's train/eval mode is
    restored; the global RNG is untouched (sampling is seeded by ``seed``). ``progress``: a bar over
    the items on a terminal.
    """
    from credit.rollout import SamplingConfig, encode_prompts, sample

    ks = sorted(set(ks)) if ks else default_ks(n)
    if n < 1 or any(not 1 <= k <= n for k in ks):
        raise ValueError(f"need n >= 1 and every k in [1, n]; got n={n}, ks={list(ks)}")
    examples = task.examples(split)[:limit]
    if not examples:
        raise UserError(f"task {getattr(task, 'name', task)!r} has no examples in split {split!r}")
    cfg = SamplingConfig(num_samples=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         stop=tuple(stop), micro_batch_size=batch_size, backend=backend)
    t0 = time.perf_counter()
    prompts = encode_prompts(tokenizer, [e.messages for e in examples], chat_template_kwargs=chat_template_kwargs)
    rollouts = _sample_in_pieces(model, tokenizer, prompts, cfg, seed, progress)
    outcomes = task.score_batch([examples[g] for g in rollouts.group], rollouts.texts)
    seconds = time.perf_counter() - t0

    items, means, majs = [], [], []
    passes = {k: [] for k in ks}
    for i, ex in enumerate(examples):
        sl = slice(i * n, (i + 1) * n)  # the n samples of item i (contiguous)
        rewards = [o.reward for o in outcomes[sl]]
        c = sum(r >= success_threshold for r in rewards)
        keys = answer_keys([o.info for o in outcomes[sl]], rollouts.texts[sl])
        answer, votes, maj_reward = majority_vote(keys, rewards)
        means.append(sum(rewards) / n)
        majs.append(maj_reward)
        for k in ks:
            passes[k].append(pass_at_k(n, c, k))
        items.append({"id": ex.id, "rewards": rewards, "correct": c, "majority_answer": answer,
                      "majority_votes": votes, "majority_reward": maj_reward})

    m = len(examples)
    lengths = [len(y) for y in rollouts.response_ids]
    result: dict[str, Any] = {
        "task": getattr(task, "name", type(task).__name__), "scorer": getattr(task, "scorer_name", None),
        "split": split, "n": n, "ks": list(ks),
        "num_items": m, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
        "success_threshold": success_threshold,
        f"mean@{n}": sum(means) / m,
        **{f"pass@{k}": sum(passes[k]) / m for k in ks},
        f"maj@{n}": sum(majs) / m,
        "response_len_mean": sum(lengths) / max(len(lengths), 1),
        "truncated_frac": sum(rollouts.truncated) / max(len(lengths), 1),
        "seconds": seconds,
        "tokens_per_s": rollouts.tokens / rollouts.seconds if rollouts.seconds > 0 else 0.0,
        "items": items,
    }
    return result


def merge_shares(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One evaluation from the shares of ``world`` processes: process r scored items r, r + world, …
    (None: it had none). Items go back to their order; every figure is recomputed over all of them."""
    world, done = len(parts), [p for p in parts if p is not None]
    total = sum(p["num_items"] for p in done)
    items = [parts[i % world]["items"][i // world] for i in range(total)]
    first = done[0]
    n, ks = first["n"], first["ks"]
    weight = lambda key: sum(p[key] * p["num_items"] for p in done) / total  # noqa: E731 - per-sample means
    return {
        **first,
        "num_items": total,
        f"mean@{n}": sum(sum(it["rewards"]) / n for it in items) / total,
        **{f"pass@{k}": sum(pass_at_k(n, it["correct"], k) for it in items) / total for k in ks},
        f"maj@{n}": sum(it["majority_reward"] for it in items) / total,
        "response_len_mean": weight("response_len_mean"),
        "truncated_frac": weight("truncated_frac"),
        "seconds": max(p["seconds"] for p in done),
        "tokens_per_s": sum(p["tokens_per_s"] for p in done),
        "processes": world,
        "items": items,
    }


def _sample_in_pieces(model, tokenizer, prompts, cfg, seed: int, progress: bool):
    """``sample(..., seed=seed)`` with a progress bar. An engine that refills its batch from the whole
    queue (``continuous``) samples in one call and reports each finished sample; the others sample in
    pieces of whole micro-batches holding whole items, whose per-micro-batch seeds come from one
    generator in the same order, so the samples are those of a single call."""
    import math

    import torch
    from tqdm.auto import tqdm

    from credit.rollout import ENGINES, Rollouts, sample

    generator = torch.Generator().manual_seed(seed)  # what sample() makes of cfg.seed=seed
    n, mb = cfg.num_samples, cfg.micro_batch_size or len(prompts) * cfg.num_samples
    if ENGINES[cfg.backend].refills:
        with tqdm(total=len(prompts) * n, unit="sample", desc="eval", leave=False,
                  disable=None if progress else True) as bar:
            return sample(model, tokenizer, prompts, cfg, generator=generator, progress=bar.update)
    per_piece = math.lcm(mb, n) // n  # items
    out = Rollouts([], [], [], [], [], num_samples=n)
    with tqdm(total=len(prompts), unit="item", desc="eval", leave=False, disable=None if progress else True) as bar:
        for start in range(0, len(prompts), per_piece):
            part = sample(model, tokenizer, prompts[start:start + per_piece], cfg, generator=generator)
            out.prompt_ids += part.prompt_ids
            out.response_ids += part.response_ids
            out.truncated += part.truncated
            out.texts += part.texts
            out.group += [start + g for g in part.group]
            out.seconds += part.seconds
            out.tokens += part.tokens
            bar.update(len(prompts[start:start + per_piece]))
    return out


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The metric entries only (``mean@n``, ``pass@k``..., ``maj@n``): for logging as ``eval/*``."""
    n = result["n"]
    keys = [f"mean@{n}", *(f"pass@{k}" for k in result["ks"]), f"maj@{n}"]
    return {k: result[k] for k in keys}
