"""Math tasks: the quickstart addition task, reasoning-gym generators scored by their own scorers,
and GSM-style question/answer files (docs/method.md §2, "math" row).

Answer format. Every scorer here reads ONE answer, the response's final one, so a list of candidates
is worth exactly what its last member is worth. Addition asks for "just the number" and reads the
number the response ends with (``scorer: strict``, the default); the TRL peer's rule, any number equal
to ``a + b`` anywhere, stays as ``scorer: lenient`` for comparisons with the peer. The other two ask,
in a system prompt, for the final answer inside ``<answer>…</answer>`` and read the LAST such tag:
reasoning-gym's questions do not ask for a format themselves, and its own ``extract_answer`` and
default system prompt use the same tag. GSM responses may instead end with the dataset's own ``#### N``
marker; whichever of the two comes last is the answer.

``info["extracted"]`` is the answer that was read (None when there is none): what ``credit eval``
votes on. Feedback is format errors only unless ``answer_feedback=True`` (which reveals the answer);
a reward of 1 never comes with feedback.
"""

from __future__ import annotations

import operator
import random
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from credit.tasks import _io
from credit.tasks.base import BaseTask, DataError, Example, Outcome

ANSWER_SYSTEM_PROMPT = (
    "Solve the problem step by step. Then give only the final answer inside <answer></answer> tags, "
    "for example <answer>42</answer>. Do not explain inside the tags."
)

_NUMBER = re.compile(r"-?\d+")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_max_chars(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_response_chars must be a positive int, got {value!r}")


# --------------------------------------------------------------------------------------------
# Addition (the quickstart)
# --------------------------------------------------------------------------------------------


class AdditionTask(BaseTask):
    """"What is a + b? Answer with just the number." for a, b in ``low..high``; the pairs are shuffled
    with ``random.Random(seed)``, the first ``n_test`` are held out and the rest are training prompts
    (the defaults, 400 pairs, seed 1234, 60 test and 340 train, are the peer baseline's split).
    ``op="*"`` (or ``"-"``) asks for a × b (a − b) instead, on the same pairs and split.

    ``scorer`` picks the reward rule:

    - ``"strict"`` (default): reward 1.0 iff the number the response ends with equals ``a + b``
      (see ``final_number``): "20", "7 + 5 = 12", "The answer is 12." Anything after the number but
      whitespace and closing punctuation makes it not an answer, so "12 is wrong, it is 13" answers 13
      and "12 apples" answers nothing (a format error, with feedback).
    - ``"lenient"``: the TRL peer's reward (``shared/peer``): 1.0 iff ``str(a + b)`` is one of
      ``re.findall(r"-?\\d+", response)``. It pays for listing numbers ("1 2 3 … 40" always scores 1;
      eight fixed numbers score about a third of the pairs), so use it only to compare with the peer.
    """

    name = "addition"
    SCORERS = ("strict", "lenient")
    OPS = {"+": ("+", operator.add), "-": ("-", operator.sub), "*": ("×", operator.mul)}  # op -> shown, value
    scorer_name = "strict"  # the ``scorer`` option, set per instance

    def __init__(self, *, low: int = 1, high: int = 20, seed: int = 1234, n_test: int = 60,
                 n_train: int | None = None, scorer: str = "strict", answer_feedback: bool = False,
                 max_response_chars: int = _io.MAX_RESPONSE_CHARS, op: str = "+"):
        for k, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{k} must be an int, got {v!r}")
        if high < low:
            raise ValueError(f"high ({high}) must be >= low ({low})")
        _io.check_seed(seed)
        n_pairs = (high - low + 1) ** 2
        if isinstance(n_test, bool) or not isinstance(n_test, int) or not 0 <= n_test <= n_pairs:
            raise ValueError(f"n_test must be an int in [0, {n_pairs}] (the number of pairs), got {n_test!r}")
        if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int)
                                    or not 0 <= n_train <= n_pairs - n_test):
            raise ValueError(f"n_train must be None or an int in [0, {n_pairs - n_test}], got {n_train!r}")
        if scorer not in self.SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(self.SCORERS)}, got {scorer!r}")
        if op not in self.OPS:
            raise ValueError(f"op must be one of {', '.join(map(repr, self.OPS))}, got {op!r}")
        _check_bool("answer_feedback", answer_feedback)
        _check_max_chars(max_response_chars)
        self.low, self.high, self.seed, self.n_test, self.n_train, self.op = low, high, seed, n_test, n_train, op
        self.scorer_name, self.answer_feedback, self.max_response_chars = scorer, answer_feedback, max_response_chars

        pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
        random.Random(seed).shuffle(pairs)
        test, train = pairs[:n_test], pairs[n_test:]
        if n_train is not None:
            train = train[:n_train]
        self._splits = {"train": [self._example(a, b) for a, b in train],
                        "test": [self._example(a, b) for a, b in test]}

    def _example(self, a: int, b: int) -> Example:
        shown, value = self.OPS[self.op]
        return Example(id=f"addition-{a}{self.op}{b}",
                       messages=[{"role": "user", "content": f"What is {a} {shown} {b}? Answer with just the number."}],
                       meta={"a": a, "b": b, "answer": value(a, b)})

    def score(self, example: Example, response: str) -> Outcome:
        text = _io.guard_response(response, self.max_response_chars)
        if isinstance(text, Outcome):
            return text
        answer = int(example.meta["answer"])
        if self.scorer_name == "lenient":
            numbers = _NUMBER.findall(text)
            if not numbers:
                return Outcome(0.0, "Format error: the response contains no number. Answer with just the number.",
                               {"format_error": "no_number", "extracted": None, "gold": answer})
            correct = str(answer) in numbers
            # The lenient rule has no single answer; the vote key is the number it paid for, else the
            # last one, so that within an item the same key always means the same reward.
            extracted = str(answer) if correct else numbers[-1]
        else:
            value = final_number(text)
            if value is None:
                return Outcome(0.0, "Format error: the response does not end with a number. Answer with just "
                               "the number.", {"format_error": "no_final_number", "extracted": None, "gold": answer})
            correct = value == answer
            extracted = _format_number(value)
        feedback = f"The correct answer is {answer}." if self.answer_feedback and not correct else ""
        return Outcome(float(correct), feedback, {"extracted": extracted, "gold": answer})


# The strict addition answer: the number a response ends with. ASCII digits only (int() would read
# fullwidth or Arabic-Indic digits, but the prompt is English and a lookalike is not "the number");
# thousands separators only in groups of three, so "1,000" is one number and "1,2,40" is none.
_NUMBER_TOKEN = re.compile(r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
# What may follow the number: the end of a sentence, a closing bracket, quote or markdown emphasis.
_CLOSING = " \t\r\n.!?;:,)]}*_`'\"$"


def final_number(text: str) -> Decimal | None:
    """The number ``text`` ends with, as an exact Decimal, or None when it does not end with one.

    "12", "= 12.", "**12**", "$1,000", "12.0" (= 12), "-3" and "x = −3" are numbers at the end;
    "12 apples", "v1.12", "a12", "1,2,40" and "١٢" are not. A minus sign counts as the number's sign
    only when it does not follow a letter or digit ("12-3" ends with 3, the subtrahend)."""
    body = text.rstrip(_CLOSING)
    # Walk back over the trailing run of digits, commas and points (no regex search from the left:
    # on a 64k-digit response that would be quadratic), then ask whether that run is one number.
    start = len(body)
    while start and body[start - 1] in "0123456789,.":
        start -= 1
    token, before = body[start:], body[:start]
    if _NUMBER_TOKEN.fullmatch(token) is None:
        return None
    if before[-1:].isalnum() or before[-1:] == "_":  # glued to a word: "a12", "x_12", "١2"
        return None
    value = Decimal(token.replace(",", ""))
    if before[-1:] in ("-", "\u2212") and not before[-2:-1].isalnum():
        value = value.copy_negate()  # not -value: Decimal arithmetic rounds to 28 digits
    return value


# --------------------------------------------------------------------------------------------
# Numbers in GSM-style answers
# --------------------------------------------------------------------------------------------

# ASCII digits only, and commas only as thousands separators ("5,6" is two numbers, not 56).
_NUM_IN_TEXT = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|-?\.[0-9]+")


def parse_number(text: str) -> Decimal | None:
    """The last number in ``text`` ("1,234", "$5.50", "-3", "7.") as an exact Decimal, or None."""
    found = _NUM_IN_TEXT.findall(text.replace("\u2212", "-"))
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        return Decimal(raw)
    except InvalidOperation:
        return None


def _format_number(d: Decimal) -> str:
    """Canonical exact text of a number: no exponent, no trailing fractional zeros, no "-0" (not
    ``normalize()``, which rounds to the context's 28 digits and could merge different answers)."""
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


# --------------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------------


class ReasoningGymTask(BaseTask):
    """Prompts from a reasoning-gym generator, scored by that generator's own ``score_answer``.
    The generator is the ``dataset`` option (``name`` is taken by ``build_task``), e.g.
    ``build_task("reasoning_gym", dataset="gsm_symbolic", size=500)``.

    ``size`` items are generated with ``seed``; distinct questions are split into ``n_test``
    held-out and the rest training (see ``_io.split_items``). Extra keyword options (``**config``,
    e.g. ``min_terms=2``) go to ``reasoning_gym.create_dataset`` as the generator's configuration.
    Reward is 1.0 iff the scorer's value is >= ``threshold`` (docs/method.md §2: "≥ 1"); the raw score is in
    ``info["score"]``. The answer is the last ``<answer>`` tag; with ``require_tags=False`` a
    response without tags is scored whole (stripped).
    """

    name = "reasoning_gym"
    scorer_name = "score_answer"  # the generator's own scorer; named per instance

    def __init__(self, dataset: str = "basic_arithmetic", *, size: int = 1000, seed: int = 0,
                 n_test: int | float = 100, threshold: float = 1.0, answer_feedback: bool = False,
                 require_tags: bool = True, system_prompt: str | None = ANSWER_SYSTEM_PROMPT,
                 max_response_chars: int = _io.MAX_RESPONSE_CHARS, **config: Any):
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a reasoning-gym dataset name, got {dataset!r}")
        name = dataset
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        _io.check_seed(seed)
        _io.check_n_test(n_test)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
        _check_bool("answer_feedback", answer_feedback)
        _check_bool("require_tags", require_tags)
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError("system_prompt must be a string or None")
        _check_max_chars(max_response_chars)
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        if name not in DATASETS:
            import difflib

            close = difflib.get_close_matches(name, list(DATASETS), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(DATASETS)} are registered"
            raise ValueError(f"unknown reasoning-gym dataset {name!r}{hint}")
        try:
            self._dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
        except (TypeError, ValueError, AssertionError) as e:
            raise ValueError(f"reasoning-gym rejected the configuration of {name!r} {config}: {e}") from None
        self.dataset_name, self.size, self.seed, self.n_test = name, size, seed, n_test
        self.threshold, self.answer_feedback, self.require_tags = float(threshold), answer_feedback, require_tags
        self.scorer_name = f"{name}.score_answer>={self.threshold:g}" + ("" if require_tags else ",untagged")
        self.system_prompt, self.max_response_chars, self.config = system_prompt, max_response_chars, dict(config)
        self._entries: list[dict[str, Any]] | None = None
        self._splits: dict[str, list[Example]] | None = None
        if isinstance(n_test, int) and n_test > size:
            raise ValueError(f"n_test={n_test} is larger than size={size}")

    def _build(self) -> dict[str, list[Example]]:
        # Generation is lazy: some generators take seconds for a thousand items.
        if self._splits is None:
            self._entries = [self._dataset[i] for i in range(self.size)]
            exs = [self._example(i, e) for i, e in enumerate(self._entries)]
            train, test = _io.split_items(exs, self.n_test, self.seed, key=lambda e: e.prompt,
                                          source=f"reasoning-gym {self.dataset_name!r} (size={self.size})")
            self._splits = {"train": train, "test": test}
        return self._splits

    def _example(self, i: int, entry: dict[str, Any]) -> Example:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": str(entry["question"])})
        return Example(id=f"{self.dataset_name}-{self.seed}-{i}", messages=msgs,
                       meta={"index": i, "dataset": self.dataset_name, "answer": entry.get("answer")})

    def examples(self, split: str) -> list[Example]:
        _io.check_split(split)
        return list(self._build()[split])

    def score(self, example: Example, response: str) -> Outcome:
        text = _io.guard_response(response, self.max_response_chars)
        if isinstance(text, Outcome):
            return text
        self._build()
        i = example.meta.get("index")
        if not isinstance(i, int) or not 0 <= i < len(self._entries) or example.meta.get("dataset") != self.dataset_name:
            raise ValueError(f"example {example.id!r} does not belong to this reasoning-gym task")
        entry = self._entries[i]
        answer = _io.last_answer_tag(text)
        if answer is None:
            if self.require_tags:
                return Outcome(0.0, "Format error: no <answer>…</answer> tag found. Put only the final "
                               "answer inside <answer></answer> at the end.",
                               {"format_error": "no_answer_tag", "score": 0.0, "extracted": None})
            answer = text.strip()
        if not answer:
            return Outcome(0.0, "Format error: the <answer> tag is empty.",
                           {"format_error": "empty_answer", "score": 0.0, "extracted": None})
        info: dict[str, Any] = {"extracted": answer}  # whole, not a prefix: answers sharing one must not share a vote
        try:
            raw = float(self._dataset.score_answer(answer, entry))
        except Exception as e:  # a third-party scorer must not crash training: its failure is a wrong answer
            raw, info["scorer_error"] = 0.0, f"{type(e).__name__}: {e}"[:300]
        correct = raw >= self.threshold
        feedback = ""
        if self.answer_feedback and not correct:
            feedback = f"The correct answer is {entry.get('answer')}."
        return Outcome(float(correct), feedback, {"score": raw, **info})


# --------------------------------------------------------------------------------------------
# GSM-style files
# --------------------------------------------------------------------------------------------


class GSMTask(BaseTask):
    """GSM8K-style JSON lines, one ``{"question": str, "answer": str}`` per line, where the answer
    is a worked solution ending in ``#### N`` (the published GSM8K format). Reward 1.0 iff the
    response's final number equals N exactly (commas, ``$`` and trailing zeros ignored). The final
    number is the last number of the last ``<answer>`` tag or of the line after the last ``#### N``
    marker, whichever comes later in the response.
    """

    name = "gsm"
    scorer_name = "final_number"

    def __init__(self, path: str | Path | None = None, *, seed: int = 0, n_test: int | float = 0.1,
                 answer_feedback: bool = False, system_prompt: str | None = ANSWER_SYSTEM_PROMPT,
                 max_response_chars: int = _io.MAX_RESPONSE_CHARS):
        if path is None:
            raise ValueError("GSMTask needs path= to a GSM8K-style .jsonl file (rows with 'question' and an "
                             "'answer' ending in '#### N'); GSM8K is not shipped offline, use "
                             "build_task('reasoning_gym', dataset='gsm_symbolic') for a shipped source")
        _io.check_seed(seed)
        _io.check_n_test(n_test)
        _check_bool("answer_feedback", answer_feedback)
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError("system_prompt must be a string or None")
        _check_max_chars(max_response_chars)
        self.path, self.seed, self.n_test = str(path), seed, n_test
        self.answer_feedback, self.system_prompt, self.max_response_chars = answer_feedback, system_prompt, max_response_chars
        exs = [self._example(line, row) for line, row in _io.read_jsonl(path)]
        if not exs:
            raise DataError(self.path, None, None, "no rows")
        train, test = _io.split_items(exs, n_test, seed, key=lambda e: e.prompt, source=self.path)
        self._splits = {"train": train, "test": test}

    def _example(self, line: int, row: dict[str, Any]) -> Example:
        question = _io.field(row, "question", str, self.path, line)
        solution = _io.field(row, "answer", str, self.path, line)
        if "####" not in solution:
            raise DataError(self.path, line, "answer", "has no final '#### N' marker")
        final = solution.rsplit("####", 1)[1].strip()
        value = parse_number(final)
        if value is None or _NUM_IN_TEXT.fullmatch(final.replace("$", "").strip().rstrip(".")) is None:
            raise DataError(self.path, line, "answer", f"the text after '####' is not a number: {_io.quote(final)}")
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": question})
        return Example(id=f"gsm-{line}", messages=msgs, meta={"line": line, "answer": _format_number(value)})

    def score(self, example: Example, response: str) -> Outcome:
        text = _io.guard_response(response, self.max_response_chars)
        if isinstance(text, Outcome):
            return text
        answer = Decimal(example.meta["answer"])
        extracted = _final_answer(text)
        if extracted is None:
            return Outcome(0.0, "Format error: no final answer found. Put only the final number inside "
                           "<answer></answer> at the end.", {"format_error": "no_answer_tag", "extracted": None})
        value = parse_number(extracted)
        if value is None:
            return Outcome(0.0, f"Format error: the final answer {_io.quote(extracted)} is not a number.",
                           {"format_error": "not_a_number", "extracted": None})
        correct = value == answer
        feedback = f"The correct answer is {example.meta['answer']}." if self.answer_feedback and not correct else ""
        return Outcome(float(correct), feedback, {"extracted": _format_number(value)})


def _final_answer(text: str) -> str | None:
    """The text of a GSM response's final answer: the last ``<answer>`` tag or the line after the last
    ``#### `` marker, whichever comes later ("<answer>5</answer> … #### 7" answers 7), or None."""
    tags = list(_io.ANSWER_TAG.finditer(text))
    marker = text.rfind("####")
    if tags and tags[-1].start() > marker:
        return tags[-1].group(1).strip()
    if marker >= 0:
        return text[marker + 4:].strip().split("\n", 1)[0]
    return None
