"""Negative contexts ``c^(k)``: the same response and privileged ``z``, another prompt's input ``x_j``.

docs/method.md §1: ``G_t = mean_k log π_T(y_t | c^(k), y_<t)`` is the input-generic part of the teacher
log-prob. A negative's prompt ``j`` always comes from ANOTHER prompt group of the batch and another *problem*
(``problem_keys``: a different id and a different prompt); a sample that cannot get K such negatives
has no contrast (``[]``), never a contrast with its own problem.

Choices (not fixed by the paper):

- ``random``: each sample draws its own K distinct other prompts (uniform, without replacement).
- ``roll``: one draw per call of K distinct shifts ``s_1..s_K`` from ``{1..B-1}``; prompt group at
  position ``b`` (of the sorted distinct prompt indices) gets negatives at positions ``(b + s_k) mod B``.
  Every shift is a derangement, so each prompt is a negative exactly K times per call (counted over
  groups), and all samples of a group share the same negatives.
- ``all``: every other prompt (K = B-1); ``k`` is ignored.
- ``swap="input"`` renders ``render_context(x_j messages, z_n)`` with the sample's own ``z`` exactly
  as used in its teacher context; ``z`` is never re-truncated (the contrast must differ only in x), so
  a negative may exceed ``max_context_tokens`` when ``x_j`` is longer than ``x``: counted in
  ``credit/negative_over_max_fraction``, not cut.
- ``swap="context"`` (ablation) takes ``x_j``'s own teacher context: that of the first sample of group
  ``j`` with a teacher signal, else ``j``'s plain prompt.
- Samples without a teacher signal get no negatives (``[]``); they carry no distillation loss.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from credit.tasks.base import Example
from credit.teacher.contexts import Privileged, TeacherContexts, Templates, render_context

STRATEGIES = ("random", "roll", "all")
SWAPS = ("input", "context")


def can_contrast(groups: Sequence[int]) -> bool:
    """Whether CREDIT can draw negatives: at least two distinct prompt groups in the batch."""
    return len(set(groups)) >= 2


def _permutation(n: int, generator: torch.Generator | random.Random) -> list[int]:
    if isinstance(generator, torch.Generator):
        return torch.randperm(n, generator=generator).tolist()
    if isinstance(generator, random.Random):
        return generator.sample(range(n), n)
    raise TypeError(f"generator must be a torch.Generator or a random.Random, got {type(generator).__name__}")


def problem_keys(examples: Sequence[Example]) -> list[int]:
    """One integer per example: equal for examples that are the same problem (same id or same prompt).

    Negatives are other *problems*, not other positions of the batch: the same problem twice in a
    batch (an id repeated, or one prompt under two ids) must never be contrasted with itself.
    """
    rep: list[int] = []
    by_id: dict[str, int] = {}
    by_prompt: dict[str, int] = {}
    for i, ex in enumerate(examples):
        prompt = repr(ex.messages)
        r = by_id.get(ex.id, by_prompt.get(prompt, i))
        by_id.setdefault(ex.id, r)
        by_prompt.setdefault(prompt, r)
        rep.append(r)
    return rep


def sample_negative_groups(
    groups: Sequence[int],
    k: int,
    strategy: Literal["random", "roll", "all"],
    generator: torch.Generator | random.Random,
    problems: Sequence[int] | None = None,
) -> list[list[int]]:
    """For each sample, the prompt indices ``j`` of its K negatives: other problems of the batch.

    ``groups[n]`` is the prompt index of sample ``n``; ``problems[j]`` (default: ``j`` itself) the
    problem behind prompt index ``j`` (``problem_keys``). B is the number of distinct prompt indices.
    A sample that cannot get K negatives of problems other than its own gets ``[]``: no contrast,
    never a self-contrast (the caller counts it). Deterministic given the generator's state. Raises
    ``ValueError`` when B < 2 (check ``can_contrast`` first and fall back to SDPO), when ``k < 1`` or
    ``k > B-1`` (``random``/``roll``), or for an unknown ``strategy``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    prompts = sorted(set(groups))
    n_prompts = len(prompts)
    if n_prompts < 2:
        raise ValueError(
            f"groups holds {n_prompts} distinct prompt group(s); negatives need at least 2 "
            "(use can_contrast(groups) and fall back to SDPO)"
        )
    problem = (lambda j: j) if problems is None else problems.__getitem__

    def distinct(g: int, js: list[int], want: int) -> list[int]:
        return js if len(js) == want and all(problem(j) != problem(g) for j in js) else []

    if strategy == "all":
        return [distinct(g, [j for j in prompts if j != g], n_prompts - 1) for g in groups]
    if not 1 <= k <= n_prompts - 1:
        raise ValueError(f"k must be in [1, B-1] = [1, {n_prompts - 1}] for strategy {strategy!r}, got k={k}")

    if strategy == "roll":
        shifts = [s + 1 for s in _permutation(n_prompts - 1, generator)[:k]]  # distinct, in 1..B-1
        pos = {p: i for i, p in enumerate(prompts)}
        return [distinct(g, [prompts[(pos[g] + s) % n_prompts] for s in shifts], k) for g in groups]

    out = []
    for g in groups:
        others = [j for j in prompts if problem(j) != problem(g)]
        out.append(distinct(g, [others[i] for i in _permutation(len(others), generator)[:k]], k))
    return out


@dataclass
class NegativeContexts:
    """Per sample ``n``: K negative context ids (``[]`` when the sample has no teacher signal)."""

    context_ids: list[list[list[int]]]
    """``context_ids[n][k]``: ids of ``c^(k)`` for sample n, without the response."""
    negative_groups: list[list[int]]
    """``negative_groups[n][k]``: the prompt index ``j`` behind ``context_ids[n][k]``."""
    source_samples: list[list[int | None]]
    """``swap="context"``: the sample index of group j whose teacher context was used (None: plain
    prompt); ``swap="input"``: all None."""
    over_max: int = 0
    """How many negative contexts are longer than ``max_context_tokens`` (``swap="input"`` only)."""

    @property
    def contrast_possible(self) -> bool:
        """False when no sample got a negative (fewer than two groups, or no teacher signal at all)."""
        return any(self.context_ids)

    def metrics(self) -> dict[str, float]:
        with_neg = [len(c) for c in self.context_ids if c]
        total = sum(with_neg)
        return {
            "credit/negatives_per_sample": sum(with_neg) / max(len(with_neg), 1),
            "credit/contrast_possible": float(self.contrast_possible),
            "credit/negative_over_max_fraction": self.over_max / max(total, 1),
        }


def build_negative_contexts(
    tokenizer: Any,
    examples: Sequence[Example],
    groups: Sequence[int],
    teacher_contexts: TeacherContexts,
    negative_groups: Sequence[Sequence[int]],
    *,
    swap: Literal["input", "context"] = "input",
    templates: Templates = Templates(),
    max_context_tokens: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> NegativeContexts:
    """Negative context ids for every sample with a teacher signal (see the module docstring).

    ``negative_groups`` comes from ``sample_negative_groups`` (or ``[[]] * N`` when contrast is not
    possible: the result then says so in ``contrast_possible``). Use the same ``templates`` and
    ``chat_template_kwargs`` as for the teacher contexts.
    """
    if swap not in SWAPS:
        raise ValueError(f"swap must be one of {SWAPS}, got {swap!r}")
    n_samples = len(groups)
    if len(negative_groups) != n_samples or len(teacher_contexts.context_ids) != n_samples:
        raise ValueError(
            f"groups, negative_groups and teacher_contexts must have one entry per sample; got {n_samples}, "
            f"{len(negative_groups)}, {len(teacher_contexts.context_ids)}"
        )

    # swap="context": group j's representative = first sample of j with a signal, else j's plain prompt.
    representative: dict[int, int | None] = {}
    for n, g in enumerate(groups):
        if teacher_contexts.has_signal[n] and representative.get(g) is None:
            representative[g] = n
    plain_cache: dict[int, list[int]] = {}
    input_cache: dict[tuple[int, Privileged], list[int]] = {}

    out = NegativeContexts([], [], [])
    for n, g in enumerate(groups):
        js = list(negative_groups[n])
        if g in js:
            raise ValueError(f"negative_groups[{n}] contains the sample's own prompt group {g}")
        if not teacher_contexts.has_signal[n]:
            out.context_ids.append([])
            out.negative_groups.append([])
            out.source_samples.append([])
            continue
        ctxs, srcs = [], []
        for j in js:
            if swap == "input":
                z = teacher_contexts.privileged[n]
                if (j, z) not in input_cache:
                    input_cache[(j, z)] = render_context(
                        tokenizer, examples[j].messages, z, templates, chat_template_kwargs=chat_template_kwargs
                    )
                ids, src = input_cache[(j, z)], None
                if max_context_tokens is not None and len(ids) > max_context_tokens:
                    out.over_max += 1
            else:
                src = representative.get(j)
                if src is not None:
                    ids = teacher_contexts.context_ids[src]
                else:
                    if j not in plain_cache:
                        plain_cache[j] = render_context(
                            tokenizer, examples[j].messages, None, templates, chat_template_kwargs=chat_template_kwargs
                        )
                    ids = plain_cache[j]
            ctxs.append(list(ids))
            srcs.append(src)
        out.context_ids.append(ctxs)
        out.negative_groups.append(js)
        out.source_samples.append(srcs)
    return out
