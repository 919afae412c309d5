"""Math tasks: the quickstart addition task, reasoning-gym generators scored by their own scorers,
and GSM-style question/answer files (SPEC.md §2, "math" row).

Answer format. The addition task keeps the peer baseline exactly (any number in the response that
equals ``a + b`` counts). The other two ask, in a system prompt, for the final answer inside
``<answer>…</answer>`` and read the LAST such tag: reasoning-gym's questions do not ask for a format
themselves, and its own ``extract_answer`` and default system prompt use the same tag. GSM responses
may instead end with the dataset's own ``#### N`` marker.

Feedback is format errors only unless ``answer_feedback=True`` (which reveals the answer).
"""

from __future__ import annotations

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
    """"What is a + b?" for a, b in ``low..high``; the pairs are shuffled with
    ``random.Random(seed)``, the first ``n_test`` are held out and the rest are training prompts.

    Defaults reproduce the peer baseline: 400 pairs, seed 1234, 60 test, 340 train. Reward 1.0 iff
    ``str(a + b)`` is one of ``re.findall(r"-?\\d+", response)``.
    """

    name = "addition"

    def __init__(self, *, low: int = 1, high: int = 20, seed: int = 1234, n_test: int = 60,
                 n_train: int | None = None, answer_feedback: bool = False,
                 max_response_chars: int = _io.MAX_RESPONSE_CHARS):
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
        _check_bool("answer_feedback", answer_feedback)
        _check_max_chars(max_response_chars)
        self.low, self.high, self.seed, self.n_test, self.n_train = low, high, seed, n_test, n_train
        self.answer_feedback, self.max_response_chars = answer_feedback, max_response_chars

        pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
        random.Random(seed).shuffle(pairs)
        test, train = pairs[:n_test], pairs[n_test:]
        if n_train is not None:
            train = train[:n_train]
        self._splits = {"train": [self._example(a, b) for a, b in train],
                        "test": [self._example(a, b) for a, b in test]}

    @staticmethod
    def _example(a: int, b: int) -> Example:
        return Example(id=f"addition-{a}+{b}",
                       messages=[{"role": "user", "content": f"What is {a} + {b}? Answer with just the number."}],
                       meta={"a": a, "b": b, "answer": a + b})

    def score(self, example: Example, response: str) -> Outcome:
        text = _io.guard_response(response, self.max_response_chars)
        if isinstance(text, Outcome):
            return text
        answer = int(example.meta["answer"])
        numbers = _NUMBER.findall(text)
        if not numbers:
            return Outcome(0.0, "Format error: the response contains no number. Answer with just the number.",
                           {"format_error": "no_number", "answer": answer})
        correct = str(answer) in numbers
        feedback = f"The correct answer is {answer}." if self.answer_feedback and not correct else ""
        return Outcome(float(correct), feedback, {"answer": answer, "numbers": numbers[-5:]})


# --------------------------------------------------------------------------------------------
# Numbers in GSM-style answers
# --------------------------------------------------------------------------------------------

_NUM_IN_TEXT = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


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
    return format(d.normalize(), "f")


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
    Reward is 1.0 iff the scorer's value is >= ``threshold`` (SPEC: "scorer >= 1"); the raw score is in
    ``info["score"]``. The answer is the last ``<answer>`` tag; with ``require_tags=False`` a
    response without tags is scored whole (stripped).
    """

    name = "reasoning_gym"

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
                               "answer inside <answer></answer> at the end.", {"format_error": "no_answer_tag", "score": 0.0})
            answer = text.strip()
        if not answer:
            return Outcome(0.0, "Format error: the <answer> tag is empty.", {"format_error": "empty_answer", "score": 0.0})
        try:
            raw = float(self._dataset.score_answer(answer, entry))
        except Exception as e:  # a third-party scorer must not crash training
            return Outcome(0.0, "", {"score": 0.0, "scorer_error": f"{type(e).__name__}: {e}"[:300]})
        correct = raw >= self.threshold
        feedback = ""
        if self.answer_feedback and not correct:
            feedback = f"The correct answer is {entry.get('answer')}."
        return Outcome(float(correct), feedback, {"score": raw, "extracted": answer[:200]})


# --------------------------------------------------------------------------------------------
# GSM-style files
# --------------------------------------------------------------------------------------------


class GSMTask(BaseTask):
    """GSM8K-style JSON lines, one ``{"question": str, "answer": str}`` per line, where the answer
    is a worked solution ending in ``#### N`` (the published GSM8K format). Reward 1.0 iff the
    response's final number equals N exactly (commas, ``$`` and trailing zeros ignored). The final
    number is read from the last ``<answer>`` tag, else from the last ``#### N`` marker.
    """

    name = "gsm"

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
        extracted = _io.last_answer_tag(text)
        if extracted is None and "####" in text:
            extracted = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        if extracted is None:
            return Outcome(0.0, "Format error: no final answer found. Put only the final number inside "
                           "<answer></answer> at the end.", {"format_error": "no_answer_tag"})
        value = parse_number(extracted)
        if value is None:
            return Outcome(0.0, f"Format error: the final answer {_io.quote(extracted)} is not a number.",
                           {"format_error": "not_a_number"})
        correct = value == answer
        feedback = f"The correct answer is {example.meta['answer']}." if self.answer_feedback and not correct else ""
        return Outcome(float(correct), feedback, {"extracted": _format_number(value)})
