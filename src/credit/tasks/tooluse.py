"""Tool-use tasks: ToolAlpaca instances and BFCL rows (docs/method.md §2, "tool use" row).

A response is parsed into a list of calls ``(name, arguments)`` from any of these forms:
- ReAct blocks: ``Action: name`` then ``Action Input: {json object}`` (ToolAlpaca's format);
- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks;
- JSON: a list (or one) of ``{"name": ..., "arguments"|"parameters": {...}}`` or ``{name: {...}}``;
- Python call syntax, BFCL's own: ``[f(a=1), g(b="x")]`` (keyword arguments, literal values only).
Code fences around JSON or Python are ignored. Every call the response writes counts: all ReAct
blocks, all ``<tool_call>`` blocks, every JSON value in every fence ("[call] no, wait: [other call]"
is two calls), and an argument object holding a second JSON value is a format error; so a response
cannot hedge with an early right answer followed by another, nor flood with calls (the count differs).

Reward is 1.0 iff the multiset of calls matches the reference (order ignored, docs/method.md §2 "the multiset of
calls and their JSON arguments"). Feedback names format errors always; which call or argument
differs only with ``call_feedback=True`` (off by default: it leaks the answer).

ToolAlpaca (tangqiaoyu/ToolAlpaca, ``data/eval_simulated.json`` / ``eval_real.json``): a JSON array of
APIs with ``Name``, ``Description``, ``NLDocumentation`` (or ``Function_Description`` / ``Functions``),
``Instructions`` (list of str) and ``Golden_Answers`` (per instruction, a list of ``{"Action": name,
"Action_Input": JSON-string}``). Training-style rows with ``Instances`` (``{"input": str,
"intermediate_steps": [[[action, action_input, log], observation], ...]}``) are read too. Argument
matching: keys whose value is ``""`` or null mean "not given" and are dropped on both sides; strings
compare trimmed and case-folded; numbers compare by value, numeric strings included.

BFCL (bfcl-eval package, ``bfcl_eval/data/BFCL_v4_<category>.json`` + ``possible_answer/``): every
reference call must be matched by exactly one predicted call and vice versa; an argument matches if
it equals one of its allowed values (strings standardized as in BFCL's AST checker: spaces and
``,./-_*^`` removed, lower case; ints accepted for floats), an argument may be omitted iff ``""`` is
allowed, required arguments must be present and unknown ones are rejected.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credit.tasks import _io
from credit.tasks.base import BaseTask, DataError, Example, Outcome


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any]


class ParseError(ValueError):
    """A response whose calls cannot be read; the message is the format feedback."""


# --------------------------------------------------------------------------------------------
# Parsing responses
# --------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\s*\n?(.*?)```", re.DOTALL)
_ACTION = re.compile(r"^[ \t]*Action[ \t]*:", re.MULTILINE)
_REACT = re.compile(
    r"^[ \t]*Action[ \t]*:[ \t]*(?P<name>[^\n]*?)[ \t]*\n\s*Action[ \t]*Input[ \t]*:[ \t]*(?P<input>.*?)"
    r"(?=^[ \t]*(?:Observation|Thought|Action|Final[ \t]*Answer)[ \t]*:|\Z)",
    re.DOTALL | re.MULTILINE,
)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _unfence(text: str) -> str:
    """The contents of every code fence, joined (all of them: a second fence is a second answer, not
    noise), or the whole text when it has none."""
    found = _FENCE.findall(text)
    return "\n".join(f.strip() for f in found) if found else text.strip()


_OPEN = re.compile(r"[\[{]")
MAX_JSON_ATTEMPTS = 64  # decode attempts per text: each is linear in the text, so this bounds the work


def _json_values(text: str, start: int = 0) -> tuple[list[tuple[int, Any]], bool]:
    """``([(offset, value), ...], gave_up)``: every JSON array or object in ``text`` from ``start``,
    left to right, none inside another; a "[" or "{" that does not start valid JSON is skipped.
    ``gave_up`` says the scan stopped after ``MAX_JSON_ATTEMPTS`` tries, with text left unread."""
    dec, values, pos = json.JSONDecoder(), [], start
    for _ in range(MAX_JSON_ATTEMPTS):
        m = _OPEN.search(text, pos)
        if m is None:
            return values, False
        try:
            obj, end = dec.raw_decode(text, m.start())
        except (ValueError, RecursionError):  # not JSON, a 4300-digit integer, or nested too deep
            pos = m.start() + 1
            continue
        values.append((m.start(), obj))
        pos = end
    return values, _OPEN.search(text, pos) is not None


def _json_object(raw: str, what: str) -> dict[str, Any]:
    raw = _unfence(raw)
    if not raw:
        return {}
    try:
        obj, end = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as e:
        raise ParseError(f"{what} is not valid JSON ({e.msg} at column {e.colno}).") from None
    except ValueError as e:  # e.g. an integer longer than Python's 4300-digit limit
        raise ParseError(f"{what} is not valid JSON ({str(e)[:80]}).") from None
    if not isinstance(obj, dict):
        raise ParseError(f"{what} must be a JSON object, got {type(obj).__name__}.")
    more, gave_up = _json_values(raw, end)
    if more or gave_up:  # '{"city": "Paris"} or {"city": "Rome"}' names two answers, not one
        raise ParseError(f"{what} holds more than one JSON value; give exactly one object.")
    return obj


def _react_calls(text: str) -> list[Call]:
    blocks = list(_REACT.finditer(text))
    n_actions = len(_ACTION.findall(text))
    if len(blocks) < n_actions:
        raise ParseError("Format error: every 'Action:' line must be followed by an 'Action Input:' line "
                         "holding a JSON object.")
    calls = []
    for i, m in enumerate(blocks, start=1):
        name = m.group("name").strip().strip("`\"'")
        if not name:
            raise ParseError(f"Format error: call {i} has an empty 'Action:' name.")
        calls.append(Call(name, _json_object(m.group("input"), f"Format error: the Action Input of call {i} ({name})")))
    return calls


def _call_from_json(obj: Any, i: int) -> Call:
    if not isinstance(obj, dict):
        raise ParseError(f"Format error: call {i} must be a JSON object, got {type(obj).__name__}.")
    if "name" in obj:
        name = obj["name"]
        args = obj.get("arguments", obj.get("parameters", obj.get("args", {})))
        if isinstance(args, str):  # OpenAI-style arguments serialized as a JSON string
            args = _json_object(args, f"Format error: the arguments of call {i}")
    elif len(obj) == 1:
        name, args = next(iter(obj.items()))
    else:
        raise ParseError(f"Format error: call {i} needs a \"name\" and \"arguments\".")
    if not isinstance(name, str) or not name.strip():
        raise ParseError(f"Format error: call {i} has no function name.")
    if not isinstance(args, dict):
        raise ParseError(f"Format error: the arguments of call {i} ({name}) must be a JSON object.")
    return Call(name.strip(), args)


def _python_calls(src: str) -> list[Call]:
    tree = ast.parse(src, mode="eval")  # SyntaxError handled by the caller
    nodes = tree.body.elts if isinstance(tree.body, (ast.List, ast.Tuple)) else [tree.body]
    calls = []
    for i, node in enumerate(nodes, start=1):
        if not isinstance(node, ast.Call):
            raise ParseError(f"Format error: item {i} is not a function call.")
        name = _dotted(node.func)
        if name is None:
            raise ParseError(f"Format error: call {i} does not name a function.")
        if node.args:
            raise ParseError(f"Format error: call {i} ({name}) uses positional arguments; use name=value.")
        args = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ParseError(f"Format error: call {i} ({name}) uses **kwargs; use name=value.")
            try:
                args[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise ParseError(f"Format error: argument '{kw.arg}' of call {i} ({name}) is not a literal value.") from None
        calls.append(Call(name, args))
    return calls


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


MAX_ARG_DEPTH = 32  # deeper argument values are refused: comparing them would recurse without bound


def _too_deep(value: Any) -> bool:
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > MAX_ARG_DEPTH:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v)
    return False


def parse_calls(text: str) -> list[Call]:
    """The calls in a response (see the module docstring), or ``ParseError`` with the feedback."""
    calls = _parse_calls(text)
    for i, c in enumerate(calls, start=1):
        if _too_deep(c.args):
            raise ParseError(f"Format error: the arguments of call {i} ({c.name}) are nested more than "
                             f"{MAX_ARG_DEPTH} levels deep.")
    return calls


def _parse_calls(text: str) -> list[Call]:
    if _ACTION.search(text):
        return _react_calls(text)
    blocks = _TOOL_CALL.findall(text)
    if blocks:
        return [_call_from_json(_json_object(b, f"Format error: <tool_call> {i}"), i) for i, b in enumerate(blocks, 1)]
    body = _unfence(text)
    first = _OPEN.search(body)
    values, gave_up = _json_values(body)
    if first is not None and values and values[0][0] == first.start():
        # JSON it is (the first bracket opens valid JSON; else it may be Python call syntax). Every
        # JSON value in the response is read, so "[right call] no, wait: [other call]" is two calls.
        if gave_up:
            raise ParseError(f"Format error: more than {MAX_JSON_ATTEMPTS} JSON fragments; write the calls as "
                             "one JSON list.")
        items = [o for _, v in values for o in (v if isinstance(v, list) else [v])]
        return [_call_from_json(o, i) for i, o in enumerate(items, start=1)]
    try:
        return _python_calls(body)
    except ParseError:
        raise
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        pass
    raise ParseError("Format error: no function call found. Write each call as 'Action: <name>' followed by "
                     "'Action Input: <JSON object>', or as a JSON list of {\"name\": ..., \"arguments\": {...}}.")


def _parse_response(response: Any, max_chars: int) -> list[Call] | Outcome:
    text = _io.guard_response(response, max_chars)
    if isinstance(text, Outcome):
        return text
    try:
        calls = parse_calls(text)
    except ParseError as e:
        return Outcome(0.0, str(e), {"format_error": "parse", "extracted": None})
    except RecursionError:
        return Outcome(0.0, "Format error: the calls are nested too deeply to read.",
                       {"format_error": "parse", "extracted": None})
    if not calls:
        return Outcome(0.0, "Format error: no function call found.", {"format_error": "no_call", "extracted": None})
    return calls


def _show(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= 80 else s[:79] + "…"


# --------------------------------------------------------------------------------------------
# ToolAlpaca
# --------------------------------------------------------------------------------------------

_NUMERIC = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?$")


def _norm(v: Any) -> Any:
    """A hashable, comparison-ready form of a JSON value (see the module docstring)."""
    # Constants as text: ("const", None) and ("const", True) could not be sorted against each other.
    if isinstance(v, bool) or v is None:
        return ("const", repr(v))
    if isinstance(v, (int, float)):
        return ("num", float(v)) if math.isfinite(v) else ("const", str(v))
    if isinstance(v, str):
        s = v.strip()
        if _NUMERIC.match(s):
            return ("num", float(s))
        return ("str", s.casefold())
    if isinstance(v, (list, tuple)):
        return ("list", tuple(_norm(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((str(k), _norm(x)) for k, x in v.items() if x not in ("", None))))
    return ("other", repr(v))


def _norm_args(args: dict[str, Any]) -> tuple:
    return tuple(sorted((k, _norm(v)) for k, v in args.items() if not (v == "" or v is None)))


def _diff_feedback(pred: list[Call], gold: list[Call]) -> str:
    """Which call or argument differs (only shown with call_feedback=True)."""
    pred_left = list(pred)
    gold_left = []
    for g in gold:
        key = (g.name, _norm_args(g.args))
        hit = next((p for p in pred_left if (p.name, _norm_args(p.args)) == key), None)
        if hit is None:
            gold_left.append(g)
        else:
            pred_left.remove(hit)
    notes = []
    for g in gold_left:
        same = next((p for p in pred_left if p.name == g.name), None)
        if same is None:
            notes.append(f"missing a call to {g.name} with arguments {_show(g.args)}")
            continue
        pred_left.remove(same)
        ga = {k: v for k, v in g.args.items() if v not in ("", None)}
        pa = {k: v for k, v in same.args.items() if v not in ("", None)}
        for k in sorted(set(ga) | set(pa)):
            if k not in pa:
                notes.append(f"{g.name}: argument '{k}' is missing (expected {_show(ga[k])})")
            elif k not in ga:
                notes.append(f"{g.name}: argument '{k}' should not be given")
            elif _norm(pa[k]) != _norm(ga[k]):
                notes.append(f"{g.name}: argument '{k}' is {_show(pa[k])}, expected {_show(ga[k])}")
    for p in pred_left:
        notes.append(f"unexpected call to {p.name}")
    return "; ".join(notes)[:2000]


TOOLALPACA_SYSTEM = (
    "You can use the API \"{name}\": {description}\n\nFunctions:\n{docs}\n\n"
    "Answer the user's request by calling the functions it needs, one block per call, in this format:\n"
    "Thought: what to do next\nAction: the function name\nAction Input: the arguments as a JSON object\n\n"
    "You will not see the results, so write every call the request needs, then finish with "
    "'Final Answer:' and a short summary."
)


def _docs(row: dict[str, Any], path: str, line: int) -> str:
    for key in ("NLDocumentation", "Function_Description", "Functions"):
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
        if isinstance(v, dict) and v:
            return "\n".join(f"{k}: {d}" for k, d in v.items() if k != "components" and isinstance(d, str) and d)
    raise DataError(path, line, "NLDocumentation", "missing: need NLDocumentation, Function_Description or Functions")


def _golden_call(step: Any, path: str, line: int, where: str) -> Call:
    if not isinstance(step, dict):
        raise DataError(path, line, where, "expected an object with 'Action' and 'Action_Input'")
    name = step.get("Action")
    if not isinstance(name, str) or not name.strip():
        raise DataError(path, line, f"{where}.Action", "missing or not a non-empty string")
    return Call(name.strip(), _golden_args(step.get("Action_Input"), path, line, f"{where}.Action_Input"))


def _golden_args(raw: Any, path: str, line: int, where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise DataError(path, line, where, "expected a JSON object or a string holding one")
    if not raw.strip():
        return {}
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(path, line, where, f"invalid JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise DataError(path, line, where, f"expected a JSON object, got {type(args).__name__}")
    return args


class ToolAlpacaTask(BaseTask):
    """ToolAlpaca instructions with golden call sequences, from a local JSON file.

    Splits hold out whole APIs (``split_by="api"``, the ToolAlpaca setting: test tools are unseen;
    ``n_test`` then counts APIs) or single instructions (``split_by="instruction"``).
    """

    name = "toolalpaca"
    scorer_name = "call_multiset"

    def __init__(self, path: str | Path | None = None, *, seed: int = 0, n_test: int | float = 0.2,
                 split_by: str = "api", call_feedback: bool = False,
                 max_response_chars: int = _io.MAX_RESPONSE_CHARS):
        if path is None:
            raise ValueError("ToolAlpacaTask needs path= to a ToolAlpaca JSON file (e.g. data/eval_simulated.json "
                             "from github.com/tangqiaoyu/ToolAlpaca; not shipped offline)")
        _io.check_seed(seed)
        _io.check_n_test(n_test)
        if split_by not in ("api", "instruction"):
            raise ValueError(f"split_by must be 'api' or 'instruction', got {split_by!r}")
        if not isinstance(call_feedback, bool):
            raise ValueError(f"call_feedback must be True or False, got {call_feedback!r}")
        if isinstance(max_response_chars, bool) or not isinstance(max_response_chars, int) or max_response_chars < 1:
            raise ValueError(f"max_response_chars must be a positive int, got {max_response_chars!r}")
        self.path, self.seed, self.n_test, self.split_by = str(path), seed, n_test, split_by
        self.call_feedback, self.max_response_chars = call_feedback, max_response_chars
        exs: list[Example] = []
        for line, row in _io.read_json_rows(path):
            exs.extend(self._examples(line, row))
        if not exs:
            raise DataError(self.path, None, None, "no instructions")
        key = (lambda e: e.meta["api"]) if split_by == "api" else (lambda e: e.prompt)
        train, test = _io.split_items(exs, n_test, seed, key=key, source=self.path)
        self._splits = {"train": train, "test": test}

    def _examples(self, line: int, row: dict[str, Any]) -> list[Example]:
        p = self.path
        api = _io.field(row, "Name", str, p, line).strip()
        description = _io.field(row, "Description", str, p, line, nonempty=False)
        system = TOOLALPACA_SYSTEM.format(name=api, description=description.strip(), docs=_docs(row, p, line))
        pairs: list[tuple[str, list[Call]]] = []
        if "Golden_Answers" in row:
            instructions = _io.field(row, "Instructions", list, p, line)
            golden = _io.field(row, "Golden_Answers", list, p, line)
            if len(golden) != len(instructions):
                raise DataError(p, line, "Golden_Answers", f"has {len(golden)} entries for {len(instructions)} Instructions")
            for i, (instr, calls) in enumerate(zip(instructions, golden)):
                if not isinstance(instr, str) or not instr.strip():
                    raise DataError(p, line, f"Instructions[{i}]", "must be a non-empty string")
                if not isinstance(calls, list) or not calls:
                    raise DataError(p, line, f"Golden_Answers[{i}]", "must be a non-empty list of calls")
                pairs.append((instr, [_golden_call(c, p, line, f"Golden_Answers[{i}][{j}]") for j, c in enumerate(calls)]))
        elif "Instances" in row:
            for i, inst in enumerate(_io.field(row, "Instances", list, p, line)):
                where = f"Instances[{i}]"
                if not isinstance(inst, dict):
                    raise DataError(p, line, where, "expected an object")
                instr = inst.get("input")
                if not isinstance(instr, str) or not instr.strip():
                    raise DataError(p, line, f"{where}.input", "missing or not a non-empty string")
                steps = inst.get("intermediate_steps")
                if not isinstance(steps, list) or not steps:
                    raise DataError(p, line, f"{where}.intermediate_steps", "must be a non-empty list")
                calls = []
                for j, step in enumerate(steps):
                    w = f"{where}.intermediate_steps[{j}]"
                    act = step[0] if isinstance(step, list) and step else None
                    if not isinstance(act, list) or len(act) < 2 or not isinstance(act[0], str) or not act[0].strip():
                        raise DataError(p, line, w, "expected [[action, action_input, log], observation]")
                    calls.append(Call(act[0].strip(), _golden_args(act[1], p, line, f"{w}[0][1]")))
                pairs.append((instr, calls))
        else:
            raise DataError(p, line, "Golden_Answers", "missing: a row needs Instructions + Golden_Answers, or Instances")
        return [Example(id=f"toolalpaca-{api}-{i}",
                        messages=[{"role": "system", "content": system}, {"role": "user", "content": instr.strip()}],
                        meta={"api": api, "line": line,
                              "calls": [{"name": c.name, "arguments": c.args} for c in calls]})
                for i, (instr, calls) in enumerate(pairs)]

    def score(self, example: Example, response: str) -> Outcome:
        pred = _parse_response(response, self.max_response_chars)
        if isinstance(pred, Outcome):
            return pred
        gold = [Call(c["name"], c["arguments"]) for c in example.meta["calls"]]
        got = sorted((c.name, _norm_args(c.args)) for c in pred)
        match = got == sorted((c.name, _norm_args(c.args)) for c in gold)
        feedback = "" if match or not self.call_feedback else _diff_feedback(pred, gold)
        # The vote key is the compared form itself, so equal keys always score alike.
        return Outcome(float(match), feedback, {"n_calls": len(pred), "n_expected": len(gold), "extracted": repr(got)})


# --------------------------------------------------------------------------------------------
# BFCL
# --------------------------------------------------------------------------------------------

BFCL_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple",
                   "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
_BFCL_FILE = {c: f"BFCL_v4_{'simple_python' if c == 'simple' else c}.json" for c in BFCL_CATEGORIES}

BFCL_SYSTEM = (
    "You can call the functions described by the JSON schemas below. Answer the user's request with the "
    "function call(s) it needs and nothing else, as a JSON list:\n"
    "[{{\"name\": \"function_name\", \"arguments\": {{\"arg\": value}}}}]\n\nFunctions:\n{functions}"
)


def _std(s: str) -> str:
    """BFCL's string standardization: drop spaces and ``,./-_*^``, lower case, ' -> "."""
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _bfcl_value_ok(value: Any, allowed: Any) -> bool:
    """Does a predicted value equal one reference value (BFCL's AST-checker rules, simplified)?"""
    if isinstance(allowed, bool) or isinstance(value, bool):
        return isinstance(allowed, bool) and isinstance(value, bool) and value == allowed
    if isinstance(allowed, (int, float)):
        return isinstance(value, (int, float)) and (float(value) == float(allowed))
    if isinstance(allowed, str):
        return isinstance(value, str) and _std(value) == _std(allowed)
    if isinstance(allowed, list):
        if isinstance(value, tuple):
            value = list(value)
        return isinstance(value, list) and len(value) == len(allowed) and all(
            _bfcl_value_ok(v, a) for v, a in zip(value, allowed))
    if isinstance(allowed, dict):
        if not isinstance(value, dict):
            return False
        # Nested dicts in possible answers map each key to its list of allowed values.
        if all(isinstance(a, list) for a in allowed.values()):
            if set(value) - set(allowed):
                return False
            return all((k in value and any(_bfcl_value_ok(value[k], a) for a in opts if a != ""))
                       or (k not in value and "" in opts) for k, opts in allowed.items())
        return set(value) == set(allowed) and all(_bfcl_value_ok(value[k], allowed[k]) for k in allowed)
    return value == allowed


def _bfcl_call_problem(call: Call, gt_name: str, gt_args: dict[str, list], spec: dict[str, Any] | None) -> str | None:
    """None when ``call`` satisfies one reference call, else what differs."""
    if call.name != gt_name and call.name != gt_name.replace(".", "_"):
        return f"expected a call to {gt_name}, got {call.name}"
    required = (spec or {}).get("parameters", {}).get("required", []) if spec else []
    for r in required:
        if r not in call.args:
            return f"{gt_name}: missing required argument '{r}'"
    for k, v in call.args.items():
        if k not in gt_args:
            return f"{gt_name}: unexpected argument '{k}'"
        if not any(_bfcl_value_ok(v, a) for a in gt_args[k] if not (a == "" and v != "")):
            return f"{gt_name}: argument '{k}' is {_show(v)}, expected one of {_show([a for a in gt_args[k] if a != ''])}"
    for k, opts in gt_args.items():
        if k not in call.args and "" not in opts:
            return f"{gt_name}: missing argument '{k}'"
    return None


def _bfcl_match(pred: list[Call], gt: list[tuple[str, dict]], specs: dict[str, dict]) -> tuple[bool, str]:
    """Order-free one-to-one matching of predicted to reference calls (augmenting paths)."""
    if len(pred) != len(gt):
        return False, f"expected {len(gt)} call(s), got {len(pred)}"
    ok = [[_bfcl_call_problem(p, n, a, specs.get(n)) is None for (n, a) in gt] for p in pred]
    owner: list[int | None] = [None] * len(gt)

    def assign(i: int, seen: set[int]) -> bool:
        for j in range(len(gt)):
            if ok[i][j] and j not in seen:
                seen.add(j)
                if owner[j] is None or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(pred)):
        if not assign(i, set()):
            # Explain against the first reference call left without a partner.
            j = next(j for j in range(len(gt)) if owner[j] is None)
            same = [p for p in pred if p.name in (gt[j][0], gt[j][0].replace(".", "_"))] or pred
            return False, _bfcl_call_problem(same[0], *gt[j], specs.get(gt[j][0])) or "calls do not match"
    return True, ""


def _exact(v: Any) -> str:
    """A canonical text of a parsed value that keeps every distinction BFCL's checker makes (types:
    1, 1.0, "1" and True differ; dict order and list-vs-tuple do not): the vote key of a call."""
    if isinstance(v, dict):
        return "{" + ", ".join(sorted(f"{_exact(k)}: {_exact(x)}" for k, x in v.items())) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_exact(x) for x in v) + "]"
    return repr(v)


def bfcl_data_dir() -> Path | None:
    root = _io.package_dir("bfcl_eval")
    return root / "data" if root and (root / "data").is_dir() else None


class BFCLTask(BaseTask):
    """BFCL single-turn rows with their possible answers.

    ``path=None`` reads ``categories`` (default simple, multiple, parallel) from the installed
    ``bfcl_eval`` package data; or give ``path`` (a BFCL question file) and ``answer_path`` (its
    possible-answer file; default ``possible_answer/<same name>`` beside it).
    """

    name = "bfcl"
    scorer_name = "bfcl_ast"

    def __init__(self, path: str | Path | None = None, *, answer_path: str | Path | None = None,
                 categories: Sequence[str] = ("simple", "multiple", "parallel"), seed: int = 0,
                 n_test: int | float = 0.2, call_feedback: bool = False,
                 max_response_chars: int = _io.MAX_RESPONSE_CHARS):
        _io.check_seed(seed)
        _io.check_n_test(n_test)
        if not isinstance(call_feedback, bool):
            raise ValueError(f"call_feedback must be True or False, got {call_feedback!r}")
        if isinstance(max_response_chars, bool) or not isinstance(max_response_chars, int) or max_response_chars < 1:
            raise ValueError(f"max_response_chars must be a positive int, got {max_response_chars!r}")
        self.seed, self.n_test, self.call_feedback, self.max_response_chars = seed, n_test, call_feedback, max_response_chars
        files: list[tuple[str, Path, Path]] = []
        if path is not None:
            q = Path(path)
            a = Path(answer_path) if answer_path is not None else q.parent / "possible_answer" / q.name
            files.append((q.stem.removeprefix("BFCL_v4_"), q, a))
        else:
            if answer_path is not None:
                raise ValueError("answer_path= needs path= as well")
            if isinstance(categories, str) or not categories:
                raise ValueError(f"categories must be a non-empty list, got {categories!r}")
            bad = [c for c in categories if c not in BFCL_CATEGORIES]
            if bad:
                raise ValueError(f"unknown BFCL categories {bad}; known: {', '.join(BFCL_CATEGORIES)}")
            root = bfcl_data_dir()
            if root is None:
                raise ValueError("BFCLTask: no path= given and bfcl-eval is not installed "
                                 "(pip install --no-deps bfcl-eval==2026.3.23)")
            files = [(c, root / _BFCL_FILE[c], root / "possible_answer" / _BFCL_FILE[c]) for c in categories]
        exs: list[Example] = []
        for category, q, a in files:
            exs.extend(self._load(category, q, a))
        train, test = _io.split_items(exs, n_test, seed, key=lambda e: e.prompt, source=", ".join(str(f[1]) for f in files))
        self._splits = {"train": train, "test": test}

    def _load(self, category: str, qpath: Path, apath: Path) -> list[Example]:
        qp, ap = str(qpath), str(apath)
        answers: dict[str, tuple[int, list]] = {}
        for line, row in _io.read_jsonl(apath):
            rid = _io.field(row, "id", str, ap, line)
            gt = _io.field(row, "ground_truth", list, ap, line)
            calls = []
            for j, c in enumerate(gt):
                if not isinstance(c, dict) or len(c) != 1:
                    raise DataError(ap, line, f"ground_truth[{j}]", "expected {function_name: {argument: [allowed values]}}")
                fname, args = next(iter(c.items()))
                if not isinstance(args, dict) or not all(isinstance(v, list) for v in args.values()):
                    raise DataError(ap, line, f"ground_truth[{j}].{fname}", "expected {argument: [allowed values]}")
                calls.append([fname, args])
            if rid in answers:
                raise DataError(ap, line, "id", f"duplicate id {rid!r}")
            answers[rid] = (line, calls)
        exs, seen = [], set()
        for line, row in _io.read_jsonl(qpath):
            rid = _io.field(row, "id", str, qp, line)
            turns = _io.field(row, "question", list, qp, line)
            first = turns[0]
            if not isinstance(first, list) or not first or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in first):
                raise DataError(qp, line, "question", "expected [[{role, content}, ...]] (one turn of messages)")
            if len(turns) != 1:
                raise DataError(qp, line, "question", f"has {len(turns)} turns; only single-turn categories are supported")
            functions = _io.field(row, "function", list, qp, line)
            specs = {}
            for j, f in enumerate(functions):
                if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("parameters"), dict):
                    raise DataError(qp, line, f"function[{j}]", "expected {name, description, parameters}")
                specs[f["name"]] = f
            if rid not in answers:
                raise DataError(qp, line, "id", f"{rid!r} has no possible answer in {ap}")
            seen.add(rid)
            system = BFCL_SYSTEM.format(functions=json.dumps(functions, ensure_ascii=False))
            exs.append(Example(id=f"bfcl-{rid}", messages=[{"role": "system", "content": system}, *first],
                               meta={"category": category, "line": line, "ground_truth": answers[rid][1],
                                     "required": {n: s.get("parameters", {}).get("required", []) for n, s in specs.items()}}))
        for rid, (line, _) in answers.items():
            if rid not in seen:
                raise DataError(ap, line, "id", f"{rid!r} has no question in {qp}")
        return exs

    def score(self, example: Example, response: str) -> Outcome:
        pred = _parse_response(response, self.max_response_chars)
        if isinstance(pred, Outcome):
            return pred
        gt = [(n, a) for n, a in example.meta["ground_truth"]]
        specs = {n: {"parameters": {"required": r}} for n, r in example.meta["required"].items()}
        ok, problem = _bfcl_match(pred, gt, specs)
        feedback = "" if ok or not self.call_feedback else problem
        extracted = "; ".join(sorted(f"{c.name}({_exact(c.args)})" for c in pred))
        return Outcome(float(ok), feedback, {"n_calls": len(pred), "n_expected": len(gt), "extracted": extracted})
