"""Shared helpers for the task loaders and scorers: line-numbered JSON reading, field checks,
seeded disjoint splits and the guard every scorer runs on a response first.

Every reading error becomes a ``DataError(path, line, field, problem)`` (docs/method.md §2): a bad row is
never skipped silently and never surfaces as a stack trace.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from credit.tasks.base import DataError, Outcome

T = TypeVar("T")

# A response longer than this is refused rather than parsed: the scorers use regular expressions
# and JSON parsing whose cost grows with the text, and no task here needs a longer answer.
MAX_RESPONSE_CHARS = 65_536


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def decode_text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not valid UTF-8 (byte {e.start})") from None


def read_text(path: str | Path) -> str:
    """The whole file as text; a missing file or bad UTF-8 becomes a ``DataError``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(str(path), None, None, f"cannot read file ({e.strerror or e})") from None
    return decode_text(data, str(path))


def iter_jsonl_text(text: str, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` for every non-blank line; each row must be a JSON object."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, n, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(path, n, None, f"expected a JSON object, got {type(row).__name__}")
        yield n, row


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` pairs of a JSON-lines file (blank lines are not rows)."""
    return list(iter_jsonl_text(read_text(path), str(path)))


def read_json_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a file holding either a JSON array of objects or JSON lines, with the line on
    which each object starts (so errors point into a pretty-printed array too)."""
    text = read_text(path)
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("["):
        return list(iter_jsonl_text(text, str(path)))
    dec = json.JSONDecoder()
    rows: list[tuple[int, dict[str, Any]]] = []
    i, line, counted = start + 1, 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    ws = re.compile(r"[\s,]*")
    while True:
        i = ws.match(text, i).end()
        if i >= len(text):
            raise DataError(str(path), line_at(len(text)), None, "unterminated JSON array")
        if text[i] == "]":
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(str(path), e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
        n = line_at(i)
        if not isinstance(obj, dict):
            raise DataError(str(path), n, None, f"expected a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
        i = end
    return rows


def read_zip_member(zip_path: str | Path, member: str) -> str:
    """One text file inside a zip (a wheel), without extracting or importing anything."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            data = z.read(member)
    except KeyError:
        raise DataError(str(zip_path), None, None, f"archive has no member '{member}'") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(str(zip_path), None, None, f"cannot read archive ({e})") from None
    return decode_text(data, f"{zip_path}!{member}")


def package_dir(name: str) -> Path | None:
    """Where a data-only package (installed ``--no-deps``, never imported) lives, or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------------


def field(row: dict, name: str, kind: type | tuple[type, ...], path: str, line: int, *, nonempty: bool = True) -> Any:
    """``row[name]`` checked to be of ``kind`` (and non-empty for strings/lists/dicts)."""
    if name not in row:
        raise DataError(path, line, name, "missing")
    value = row[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a JSON true is never a valid number here.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(_json_type(k) for k in kinds)
        raise DataError(path, line, name, f"expected {want}, got {_json_type(type(value))}")
    if nonempty and isinstance(value, (str, list, dict)) and not (value.strip() if isinstance(value, str) else value):
        raise DataError(path, line, name, "is empty")
    return value


def _json_type(k: type) -> str:
    return {str: "a string", list: "a list", dict: "an object", int: "an integer", float: "a number",
            bool: "a boolean", type(None): "null"}.get(k, k.__name__)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def check_n_test(n_test: int | float, name: str = "n_test") -> None:
    if isinstance(n_test, bool) or not isinstance(n_test, (int, float)):
        raise ValueError(f"{name} must be a count (int >= 0) or a fraction in (0, 1), got {n_test!r}")
    if isinstance(n_test, float) and not 0.0 < n_test < 1.0:
        raise ValueError(f"{name} as a fraction must lie in (0, 1), got {n_test}")
    if isinstance(n_test, int) and n_test < 0:
        raise ValueError(f"{name} must be >= 0, got {n_test}")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def split_items(items: Sequence[T], n_test: int | float, seed: int, key: Callable[[T], str],
                source: str = "data") -> tuple[list[T], list[T]]:
    """Seeded disjoint (train, test). Items sharing ``key`` (the prompt text) land in the same split,
    so a duplicated question can never be held out and trained on at once."""
    groups: dict[str, list[T]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    k = round(n_test * len(keys)) if isinstance(n_test, float) else n_test
    if k > len(keys):
        raise ValueError(f"n_test={n_test} asks for more held-out items than {source} has distinct ({len(keys)})")
    test = [it for g in keys[:k] for it in groups[g]]
    train = [it for g in keys[k:] for it in groups[g]]
    return train, test


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def guard_response(response: Any, max_chars: int = MAX_RESPONSE_CHARS) -> str | Outcome:
    """The response as a clean ``str``, or a zero-reward ``Outcome`` saying why it cannot be scored
    (not text, invalid UTF-8 or lone surrogates, empty, too long; ``info["extracted"]`` is None: no
    answer was read). Scorers never raise on input."""
    if isinstance(response, (bytes, bytearray)):
        try:
            response = bytes(response).decode("utf-8")
        except UnicodeDecodeError:
            return Outcome(0.0, "Format error: the response is not valid UTF-8.",
                           {"format_error": "encoding", "extracted": None})
    if not isinstance(response, str):
        return Outcome(0.0, "Format error: the response is not text.", {"format_error": "type", "extracted": None})
    if len(response) > max_chars:
        return Outcome(0.0, f"Format error: the response is too long ({len(response)} characters; "
                       f"the limit is {max_chars}).", {"format_error": "too_long", "extracted": None})
    try:
        response.encode("utf-8")
    except UnicodeEncodeError:
        return Outcome(0.0, "Format error: the response contains invalid characters (lone surrogates, "
                       "not valid UTF-8).", {"format_error": "encoding", "extracted": None})
    if "\x00" in response:
        response = response.replace("\x00", "")
    if not response.strip():
        return Outcome(0.0, "Format error: the response is empty.", {"format_error": "empty", "extracted": None})
    return response


ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def last_answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>…</answer>``, stripped; None when there is none."""
    found = ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def quote(s: str, limit: int = 80) -> str:
    """A short repr for feedback messages."""
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return repr(s)
