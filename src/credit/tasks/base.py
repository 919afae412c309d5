"""The task interface: examples in, a response becomes an ``Outcome(reward, feedback, info)``.

Every loader reads a benchmark's published format and rejects a bad row with a ``DataError`` that
names the file, the line and the field (docs/method.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class DataError(ValueError):
    """A malformed input row: the message names the file, the line (1-based) and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {problem}")
        self.path, self.line, self.field, self.problem = path, line, field, problem


@dataclass(frozen=True)
class Example:
    """One prompt. ``messages`` is a chat (the last message is the user's question)."""

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message: the ``{prompt}`` slot of the teacher template."""
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class Outcome:
    """How a response scored. ``reward`` in [0, 1]; ``feedback`` is privileged text for the teacher
    ("" when there is none); ``info`` holds task details (fraction of tests passed, parse status...)."""

    reward: float
    feedback: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A task family instance. ``split`` is "train" or "test"; splits are deterministic by seed and
    disjoint."""

    name: str

    def examples(self, split: str) -> list[Example]: ...

    def score(self, example: Example, response: str) -> Outcome: ...

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Outcome]: ...


class BaseTask:
    """Shared behaviour: ``examples`` reads the splits a loader built into ``self._splits``, and
    ``score_batch`` maps ``score`` (tasks that run code override it with a pool)."""

    name = "base"
    _splits: dict[str, list[Example]]

    @property
    def scorer_name(self) -> str:
        """The rule that turns a response into a reward, stored with every evaluation (``credit eval``,
        ``summary.json``) so that an accuracy says how it was scored. A family with one rule is named
        after itself; a family whose options pick the rule overrides this (a class attribute, or
        ``self.scorer_name = ...`` where an option decides)."""
        return self.__dict__.get("_scorer_name", self.name)

    @scorer_name.setter
    def scorer_name(self, value: str) -> None:
        self.__dict__["_scorer_name"] = value

    def examples(self, split: str) -> list[Example]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return list(self._splits[split])

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Outcome]:
        return [self.score(e, r) for e, r in zip(examples, responses, strict=True)]
