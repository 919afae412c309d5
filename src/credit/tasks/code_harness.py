"""The test harness that runs *inside* the sandbox, as ``main.py`` beside the model's ``solution.py``.

Threat model: the model's code runs in this same interpreter, so it can read, patch or replace
anything this file keeps (the nonce, the encoder, ``builtins``, ``print``, the checker). Nothing
here is therefore trusted to *judge*. The harness only

1. reads its job (a JSON object) from stdin before the model's code runs, so the code reads an
   empty stdin and cannot learn the job by reading it;
2. runs the model's code, calls the function under test, and encodes each returned value as plain
   data: exact built-in types, recursively (``type(x) is int``, never ``isinstance``), with the
   references it needs captured when this file is imported, before the model's code runs;
3. writes one result line, ``_MARK + nonce + " " + JSON``, to a copy of stdout taken at start-up,
   only after the last call, then ends the process with ``os._exit(0)`` (no atexit hook, no thread
   of the model's runs after it).

The parent (``credit.tasks.code``) decides: a case passes only when exactly one result line carries
the run's nonce, the process ended normally, and the decoded plain values are correct. Values are
compared in the parent (LiveCodeBench functional) or by *replaying* HumanEval's ``check`` in a second
sandboxed process that holds no model code (``mode == "replay"``): ``check(candidate)`` runs with a
``candidate`` that returns the recorded values, so the test's own assertions judge them, and a
program that patched ``AssertionError`` or exited early in its own process gains nothing.
A forged result line is thus harmless: what it can carry is plain data, which the replay or the
parent compares like any other answer.

Modes (``job["mode"]``):

- ``functional``: LiveCodeBench; call ``Solution().<func_name>`` (or a plain function) on ``args``.
- ``calls``: HumanEval with a plan; call the entry point on each planned argument list (the plan
  comes from a run of the canonical solution, so the expected values never enter this process).
- ``check``: HumanEval without a plan (no canonical solution), and the planning run itself: run the
  test's ``check`` with a recording wrapper around the entry point.
- ``replay``: HumanEval's ``check`` against recorded values (no model code in the process).

Only the standard library is used: the sandbox runs the base interpreter with no site-packages.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import random
import sys
import traceback

MARK = "\x1e__credit_result__ "
MAX_DEPTH = 100  # deeper values (or cycles) are not plain data

# Captured at import, before the model's code can patch builtins or the json module: everything
# the harness does after the model's code ran goes through these (or fails, which is a fail).
_type, _len, _sorted, _repr_int, _repr_float = type, len, sorted, int.__repr__, float.__repr__
_dict_items, _hex, _join, _getattr = dict.items, bytes.hex, str.join, getattr
_esc = json.encoder.encode_basestring_ascii
_write, _exit = os.write, os._exit
# dict subclasses of the standard library whose values are dicts: correct solutions return them
# (``Counter`` for a histogram); they are encoded as the plain dict they hold
_DICT_LIKE = (collections.OrderedDict, collections.defaultdict, collections.Counter)
_SEQUENCES = {list: "l", tuple: "t"}
_SETS = {set: "s", frozenset: "f"}
_FLOAT_WORDS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class NotPlain(Exception):
    """A value that is not plain data; ``args[0]`` describes it (e.g. "a AlwaysEqual")."""


def _describe(t) -> str:
    module = _getattr(t, "__module__", "")
    name = _getattr(t, "__qualname__", "?")
    return f"{module}.{name}" if module not in ("builtins", "__main__", "solution", "") else name


def encode_plain(value) -> str:
    """``value`` as tagged JSON text: scalars as JSON, containers as ``{"l": [...]}`` (list),
    ``t`` tuple, ``s`` set, ``f`` frozenset, ``d`` dict (``[[k, v], ...]``), ``b`` bytes (hex),
    ``c`` complex. Set elements are sorted by their encoding, so equal values encode equally.
    Raises ``NotPlain`` for any other type, including subclasses of the built-in types."""

    def enc(x, depth):
        if depth > MAX_DEPTH:
            raise NotPlain(f"a value nested deeper than {MAX_DEPTH} levels")
        t = _type(x)
        if x is None:
            return "null"
        if t is bool:
            return "true" if x else "false"
        if t is int:
            return _repr_int(x)
        if t is float:
            text = _repr_float(x)
            return _FLOAT_WORDS.get(text, text)
        if t is str:
            return _esc(x)
        if t in _SEQUENCES:
            return '{"' + _SEQUENCES[t] + '":[' + _join(",", [enc(y, depth + 1) for y in x]) + "]}"
        if t in _SETS:
            return '{"' + _SETS[t] + '":[' + _join(",", _sorted([enc(y, depth + 1) for y in x])) + "]}"
        if t is dict or t in _DICT_LIKE:
            pairs = ["[" + enc(k, depth + 1) + "," + enc(v, depth + 1) + "]" for k, v in _dict_items(x)]
            return '{"d":[' + _join(",", pairs) + "]}"
        if t is bytes:
            return '{"b":' + _esc(_hex(x)) + "}"
        if t is complex:
            return '{"c":[' + enc(x.real, depth + 1) + "," + enc(x.imag, depth + 1) + "]}"
        raise NotPlain(f"an object of type {_describe(t)}")

    return enc(value, 0)


def decode_plain(obj):
    """The value ``encode_plain`` encoded, from its ``json.loads`` form; ``ValueError`` when ``obj``
    is not such a form (a forged or garbled line)."""
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    if t is not dict or len(obj) != 1:
        raise ValueError(f"not an encoded value: {str(obj)[:80]}")
    ((tag, body),) = obj.items()
    try:
        if tag in ("l", "t", "s", "f") and type(body) is list:
            items = [decode_plain(y) for y in body]
            return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
        if tag == "d" and type(body) is list:
            return {decode_plain(k): decode_plain(v) for k, v in body}
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            return complex(decode_plain(body[0]), decode_plain(body[1]))
    except (TypeError, ValueError) as e:  # unhashable set elements or keys, bad hex, pairs of 3
        raise ValueError(f"not an encoded value: {e}") from None
    raise ValueError(f"not an encoded value: tag {tag!r}")


def read_result(stdout: str, nonce: str) -> tuple[dict | None, str]:
    """(the result object, "") from a run's stdout, or (None, why): "missing" when no line carries
    the mark, "forged" when a marked line has another nonce, two carry the nonce, or it is not JSON."""
    lines = [chunk.partition("\n")[0] for chunk in stdout.split(MARK)[1:]]
    if not lines:
        return None, "missing"
    ours = [rest for line in lines for n, _, rest in [line.partition(" ")] if n == nonce]
    if len(ours) != 1 or len(lines) != 1:
        return None, "forged"
    try:
        result = json.loads(ours[0])
    except ValueError:
        return None, "forged"
    return (result, "") if type(result) is dict else (None, "forged")


# -- inside the sandbox -------------------------------------------------------------------------


def _user_trace(exc: BaseException) -> str:
    """The traceback of ``exc`` without this file's frames (the model sees only its own code)."""
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.basename(f.filename) != "main.py"]
        text = "".join(traceback.format_list(frames)) if frames else ""
        head = "Traceback (most recent call last):\n" if frames else ""
        return head + text + "".join(traceback.format_exception_only(_type(exc), exc))
    except Exception:  # the traceback module runs on builtins the model's code may have patched
        return _describe(_type(exc)) + " (its traceback could not be formatted)\n"


class _Run:
    """One sandboxed run: the job, the output copies, and the one result line."""

    def __init__(self):
        self.job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        self.nonce = self.job["nonce"]
        self.out, self.err = os.dup(1), os.dup(2)  # the model may close or redirect fd 1 and 2
        # the arguments are decoded now, while json and builtins are still the real ones
        if self.job["mode"] == "functional":
            self.planned = [([json.loads(a) for a in self.job["args"]], {})]
        elif self.job["mode"] == "calls":
            self.planned = [(decode_plain(a), decode_plain(k)) for a, k in self.job["calls"]]
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the model's code reads an empty stdin

    def finish(self, result_json: str, code: int = 0):
        """Write the result line and end the process now: nothing of the model's runs after it."""
        data = ("\n" + MARK + self.nonce + " " + result_json + "\n").encode("utf-8", "surrogatepass")
        while data:
            data = data[_write(self.out, data):]
        _exit(code)

    def fail(self, exc: BaseException, call: int | None = None):
        """Report an exception raised by the model's code (or, in a replay, by the test, after
        ``call`` calls of the function)."""
        _write(self.err, _user_trace(exc).encode("utf-8", "replace"))
        at = "" if call is None else ',"call":' + _repr_int(call)
        self.finish('{"raised":' + _esc(_describe(_type(exc))) + at + "}", 1)

    def load(self, filename: str, namespace: dict):
        with open(filename, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the sandbox contains it


def _namespace() -> dict:
    # the module name of neither harness (LiveCodeBench imports the code as a module, HumanEval
    # execs it): a ``if __name__ == "__main__":`` block of the model's does not run
    return {"__name__": "solution", "__builtins__": builtins}


class _Values:
    """The values returned by the function under test, encoded the moment they are returned (a
    function that returns its own cached list and changes it later is judged on what it returned)."""

    def __init__(self):
        self.parts: list[str] = []
        self.not_plain: str | None = None  # the first value that was not plain data

    def add(self, value, prefix: str = ""):
        try:
            self.parts.append(prefix + encode_plain(value) + ("]" if prefix else ""))
        except NotPlain as e:
            self.not_plain = self.not_plain or e.args[0]
        return value


def _functional(run: _Run, g: dict, values: _Values):
    name = run.job["func_name"]
    target = g.get("Solution")
    fn = getattr(target(), name) if target is not None else g[name]
    values.add(fn(*run.planned[0][0]))


def _calls(run: _Run, g: dict, values: _Values):
    fn = g[run.job["entry"]]
    for args, kwargs in run.planned:
        values.add(fn(*args, **kwargs))
        if values.not_plain:
            return


def _check(run: _Run, g: dict, values: _Values):
    """Run the test's ``check`` with a wrapper that records every call: ``[args, kwargs, value]``."""
    fn = g[run.job["entry"]]

    def candidate(*args, **kwargs):
        called_with = "[" + encode_plain(args) + "," + encode_plain(kwargs) + ","  # before fn may change them
        return values.add(fn(*args, **kwargs), called_with)

    _run_test(run, dict(g), candidate)


def _run_test(run: _Run, namespace: dict, candidate):
    """``check(candidate)`` with the test's own namespace, where the entry point's name is also
    ``candidate``: a test may call the function by name (HumanEval/33 compares it with itself), and
    the model's code, in its own namespace, still calls itself unrecorded."""
    random.seed(0)  # the child and the replay seed alike: a test that draws inputs draws the same ones
    run.load("tests.py", namespace)
    namespace[run.job["entry"]] = candidate
    namespace["check"](candidate)


def _child(run: _Run):
    g = _namespace()
    values = _Values()
    try:
        run.load("solution.py", g)
        {"functional": _functional, "calls": _calls, "check": _check}[run.job["mode"]](run, g, values)
    except SystemExit:
        raise  # an exit is the parent's "exited early": no result line
    except BaseException as e:
        run.fail(e)
    if values.not_plain:
        run.finish('{"non_plain":' + _esc(values.not_plain) + "}")
    run.finish('{"values":[' + _join(",", values.parts) + "]}")


class ReplayMismatch(Exception):
    """The test called the function with other arguments than the recorded run, or more often."""


def _replay(run: _Run):
    """``check(candidate)`` where ``candidate`` returns the recorded values in order."""
    job = run.job
    # canonical encodings of the recorded arguments, to compare with the test's own
    calls = [(encode_plain(decode_plain(a)), encode_plain(decode_plain(k)), v) for a, k, v in job["calls"]]
    used = []

    def candidate(*args, **kwargs):
        i = len(used)
        if i >= len(calls):
            raise ReplayMismatch(f"the test called {job['entry']} {i + 1} times; the program was run on {len(calls)}")
        want_args, want_kwargs, value = calls[i]
        if encode_plain(args) != want_args or encode_plain(kwargs) != want_kwargs:
            raise ReplayMismatch(f"call {i + 1} of {job['entry']} had other arguments than the program was run on")
        used.append(i)
        return decode_plain(value)  # a fresh object per call: the test may change what it gets

    g = _namespace()
    try:
        run.load("prompt.py", g)
        _run_test(run, g, candidate)
    except BaseException as e:
        last = used[-1] if used else None
        run.fail(e, call=last)
    run.finish('{"checked":' + _repr_int(len(used)) + "}")


def main():
    run = _Run()
    if run.job["mode"] == "replay":
        _replay(run)
    else:
        _child(run)


if __name__ == "__main__":
    main()
