"""Teacher contexts: the token ids the teacher is scored on, ``c = template(x, demo, feedback)``.

docs/method.md §1.3, following the SDPO reference code (``ray_trainer.py`` reprompting) with these departures:

- **Truncation protects the question.** SDPO cuts the rendered context from the right (losing the
  closing instruction and the assistant header), TRL from the left (losing the system prompt and the
  problem). Here only the privileged text ``z`` (demo and feedback) is cut, from its end, token-accurately;
  if the context does not fit even with empty demo and feedback, ``ValueError``.
- **No format-string interpretation.** Templates are filled by splitting on the slot markers and
  concatenating, so ``{`` and ``}`` in prompts, demos or feedback survive verbatim.
- **Whitespace-only feedback counts as no feedback** (it would give the teacher nothing).

The caller appends the ORIGINAL response token ids to each context (never re-tokenized); this module
returns only the context ids. ``render_context`` is the one function that turns ``(messages, z)`` into
ids; the negative contexts (``negatives.py``) use it too, so a negative differs from the teacher
context only where it is meant to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from credit.tasks.base import Example, Outcome

_THINK = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


@dataclass(frozen=True)
class Templates:
    """The SDPO reprompt strings. Slots are literal markers, replaced without ``str.format``."""

    reprompt: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n"
    """The user turn the teacher sees; slots ``{prompt}`` (once), ``{solution}``, ``{feedback}``."""
    solution: str = "\nCorrect solution:\n\n{demo}\n\n"
    """The demo section (present only when a demo is used); slot ``{demo}``."""
    feedback: str = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}\n\n"
    """The feedback section (present only when feedback is used); slot ``{feedback}``."""

    def __post_init__(self) -> None:
        for name, text, slot, exactly_once in (
            ("reprompt", self.reprompt, "{prompt}", True),
            ("reprompt", self.reprompt, "{solution}", False),
            ("reprompt", self.reprompt, "{feedback}", False),
            ("solution", self.solution, "{demo}", True),
            ("feedback", self.feedback, "{feedback}", True),
        ):
            n = text.count(slot)
            if n > 1 or (exactly_once and n != 1):
                need = "exactly once" if exactly_once else "at most once"
                raise ValueError(f"Templates.{name} must contain {slot} {need}; it has it {n} times: {text!r}")


@dataclass(frozen=True)
class Privileged:
    """The privileged information ``z`` of one context, as actually used (after truncation).

    A field that is ``None`` leaves its section out; ``""`` keeps the section with empty text (a demo
    truncated to nothing). Both ``None`` means no teacher signal: the context is the plain prompt.
    """

    demo: str | None = None
    feedback: str | None = None

    @property
    def empty(self) -> bool:
        return self.demo is None and self.feedback is None


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` markers for the names in ``values``; inserted text is never re-scanned."""
    pattern = "|".join(re.escape("{" + k + "}") for k in values)
    parts = re.split(f"({pattern})", template)
    return "".join(values[p[1:-1]] if p.startswith("{") and p[1:-1] in values else p for p in parts)


def reprompt_text(prompt: str, privileged: Privileged, templates: Templates = Templates()) -> str:
    """The teacher's user turn: ``reprompt`` with the sections of ``z`` that are present."""
    solution = "" if privileged.demo is None else _fill(templates.solution, {"demo": privileged.demo})
    feedback = "" if privileged.feedback is None else _fill(templates.feedback, {"feedback": privileged.feedback})
    return _fill(templates.reprompt, {"prompt": prompt, "solution": solution, "feedback": feedback})


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if not messages or messages[-1].get("role") != "user":
        role = messages[-1].get("role") if messages else None
        raise ValueError(f"the last message must be the user's question (role 'user'); got role {role!r}")


def render_context(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    privileged: Privileged | None,
    templates: Templates = Templates(),
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """Token ids of the context ``(x, z)``: the chat template applied with a generation prompt.

    ``messages`` is the example's chat; its last (user) message is the ``{prompt}`` slot and earlier
    messages (system, few-shot turns) are kept as they are. ``privileged`` ``None`` or empty gives the
    plain student prompt. ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``) go to
    ``apply_chat_template``. Special tokens come from the template only (``add_special_tokens=False``).
    """
    _check_messages(messages)
    msgs = [dict(m) for m in messages]
    if privileged is not None and not privileged.empty:
        msgs[-1]["content"] = reprompt_text(msgs[-1]["content"], privileged, templates)
    text = tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, **dict(chat_template_kwargs or {})
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def remove_thinking(text: str) -> str:
    """Remove closed ``<think>…</think>`` blocks and the whitespace after them (SDPO's regex)."""
    return _THINK.sub("", text)


@dataclass
class TeacherContexts:
    """Per sample ``n`` (N = B·G): the teacher context ids and how they were made."""

    context_ids: list[list[int]]
    """Context token ids (without the response); the plain prompt where ``has_signal`` is False."""
    has_signal: list[bool]
    """Whether the sample has a demo or feedback (False ⇒ teacher mask 0)."""
    demo_source: list[int | None]
    """Sample index whose response is the demo, or None."""
    used_feedback: list[bool]
    """Whether this sample's own feedback is in its context."""
    truncated: list[bool]
    """Whether demo or feedback was cut to fit ``max_context_tokens``."""
    privileged: list[Privileged]
    """The ``z`` actually used (after truncation), so negatives reuse exactly the same text."""
    group_has_success: list[bool] = field(default_factory=list)
    """Per prompt these samples answer (B, or this process's share): whether any rollout reached the success threshold."""

    def metrics(self) -> dict[str, float]:
        n = max(len(self.context_ids), 1)
        b = max(len(self.group_has_success), 1)
        return {
            "teacher/demo_fraction": sum(d is not None for d in self.demo_source) / n,
            "teacher/feedback_fraction": sum(self.used_feedback) / n,
            "teacher/no_signal_fraction": sum(not s for s in self.has_signal) / n,
            "teacher/truncated_fraction": sum(self.truncated) / n,
            "teacher/success_group_fraction": sum(self.group_has_success) / b,
        }


def _prefix_cutter(tokenizer: Any, text: str):
    """``cut(k)`` = the shortest prefix of ``text`` covering its first ``k`` tokens; also the count."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [e for _, e in enc["offset_mapping"]]
        # Offsets are character positions; prefixes end on whole characters (never half a UTF-8 byte).
        return (lambda k: text[: ends[k - 1]] if k > 0 else ""), len(ends)
    except (NotImplementedError, TypeError, ValueError, KeyError):  # slow tokenizers: no offsets
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return (lambda k: tokenizer.decode(ids[:k]).rstrip("\ufffd")), len(ids)


def fit_context(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    privileged: Privileged,
    templates: Templates,
    max_context_tokens: int | None,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    where: str = "",
) -> tuple[list[int], Privileged, bool]:
    """Render ``(messages, z)`` within ``max_context_tokens``: returns ``(ids, z_used, truncated)``.

    Only demo and feedback are cut, each keeping a prefix of its tokens. A binary search finds the
    largest cap ``L`` such that keeping ``min(L, len)`` tokens of each fits, so the longer piece is cut
    first and both keep an equal share when both must go. Sections stay (possibly with empty text).
    Raises ``ValueError`` when even empty demo and feedback do not fit.
    """
    ids = render_context(tokenizer, messages, privileged, templates, chat_template_kwargs=chat_template_kwargs)
    if max_context_tokens is None or len(ids) <= max_context_tokens or privileged.empty:
        return ids, privileged, False

    demo = _prefix_cutter(tokenizer, privileged.demo) if privileged.demo is not None else None
    fb = _prefix_cutter(tokenizer, privileged.feedback) if privileged.feedback is not None else None

    def at(cap: int) -> tuple[list[int], Privileged]:
        z = Privileged(
            demo=None if demo is None else demo[0](min(cap, demo[1])),
            feedback=None if fb is None else fb[0](min(cap, fb[1])),
        )
        return render_context(tokenizer, messages, z, templates, chat_template_kwargs=chat_template_kwargs), z

    best_ids, best_z = at(0)
    if len(best_ids) > max_context_tokens:
        raise ValueError(
            f"teacher context{where} needs {len(best_ids)} tokens with the demo and feedback cut to nothing, "
            f"more than max_context_tokens={max_context_tokens}: the prompt, template and chat wrapper alone "
            f"do not fit. Raise max_context_tokens or filter out prompts this long."
        )
    lo, hi = 0, max(demo[1] if demo else 0, fb[1] if fb else 0)  # invariant: cap lo fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cand_ids, cand_z = at(mid)
        if len(cand_ids) <= max_context_tokens:
            lo, best_ids, best_z = mid, cand_ids, cand_z
        else:
            hi = mid - 1
    return best_ids, best_z, True


def build_teacher_contexts(
    tokenizer: Any,
    examples: Sequence[Example],
    groups: Sequence[int],
    responses: Sequence[str],
    outcomes: Sequence[Outcome],
    *,
    success_threshold: float = 1.0,
    dont_reprompt_on_self_success: bool = True,
    strip_thinking: bool = True,
    include_feedback: bool = True,
    feedback_only_without_demo: bool = False,
    max_context_tokens: int | None = None,
    templates: Templates = Templates(),
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> TeacherContexts:
    """Build the teacher context of every sample (docs/method.md §1.3).

    ``examples`` has one entry per prompt (B); ``groups[n]`` is the prompt index of sample ``n``;
    ``responses[n]`` is its decoded text (special tokens skipped) and ``outcomes[n]`` its score.

    - demo: the response of the first sample (in sample order) of the same prompt with
      ``reward >= success_threshold``, not the sample itself when ``dont_reprompt_on_self_success``
      (so a lone success gets no demo); ``<think>…</think>\\s*`` removed when ``strip_thinking``.
    - feedback: ``outcomes[n].feedback`` when ``include_feedback``, it is not blank, and (with
      ``feedback_only_without_demo``) there is no demo.
    - neither ⇒ ``has_signal`` False and the context is the plain student prompt (never truncated).
    - ``max_context_tokens``: see ``fit_context``.
    """
    n_samples = len(groups)
    if len(responses) != n_samples or len(outcomes) != n_samples:
        raise ValueError(
            f"groups, responses and outcomes must have one entry per sample; got {n_samples}, "
            f"{len(responses)}, {len(outcomes)}"
        )
    bad = [g for g in groups if not 0 <= g < len(examples)]
    if bad:
        raise ValueError(f"groups holds prompt indices outside range(len(examples)={len(examples)}): {bad[:5]}")

    successes: dict[int, list[int]] = {}
    for n, (g, o) in enumerate(zip(groups, outcomes)):
        if o.reward >= success_threshold:
            successes.setdefault(g, []).append(n)

    # the prompts these samples answer (with several processes, this process's share of ``examples``)
    out = TeacherContexts([], [], [], [], [], [], [g in successes for g in dict.fromkeys(groups)])
    cache: dict[tuple[int, Privileged], tuple[list[int], Privileged, bool]] = {}
    for n, g in enumerate(groups):
        peers = [m for m in successes.get(g, []) if not (dont_reprompt_on_self_success and m == n)]
        src = peers[0] if peers else None
        demo = None
        if src is not None:
            demo = remove_thinking(responses[src]) if strip_thinking else responses[src]
        fb_text = outcomes[n].feedback or ""
        use_fb = include_feedback and fb_text.strip() != "" and not (feedback_only_without_demo and src is not None)
        z = Privileged(demo=demo, feedback=fb_text if use_fb else None)

        key = (g, z)  # samples of a group often share z (same demo, no feedback): render once
        if key not in cache:
            where = f" of sample {n} (example {examples[g].id!r})"
            cache[key] = fit_context(
                tokenizer, examples[g].messages, z, templates, max_context_tokens,
                chat_template_kwargs=chat_template_kwargs, where=where,
            )
        ids, z_used, cut = cache[key]
        out.context_ids.append(list(ids))
        out.has_signal.append(not z.empty)
        out.demo_source.append(src)
        out.used_feedback.append(use_fb)
        out.truncated.append(cut)
        out.privileged.append(z_used)
    return out
