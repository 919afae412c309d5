"""The one error type for bad input from the user (a path, a file's content, an option, a config).

The CLI reports it as ``credit <cmd>: error: <message>`` on one line, exit status 2, no traceback;
so the message itself must name what is wrong (file, line, field or option) and how to fix it.
It subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (a path, a file's content, an option): reported without a traceback."""


class SetupError(RuntimeError):
    """The machine lacks what a run needs (a download, a sandbox that can contain model code): reported
    as one line that says what to do, like a ``UserError``; other RuntimeErrors keep their traceback."""


def one_line(message: object) -> str:
    """A message as one line: the CLI prints one line per error, whatever an exception carried."""
    return " ".join(str(message).split())


def cli_entry(func: Callable[..., int]) -> Callable[..., int]:
    """Wrap a subcommand's ``run(args)``: a ``UserError`` (or a missing file, or a ``ValueError``
    from validation) prints ``credit <cmd>: error: ...`` on stderr and returns 2, no traceback."""

    @functools.wraps(func)
    def wrapper(args) -> int:
        try:
            return func(args)
        except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError,
                PermissionError, SetupError) as e:
            name = getattr(args, "command", None) or func.__module__.rsplit(".", 1)[-1]
            print(f"credit {name}: error: {one_line(e)}", file=sys.stderr)
            return 2

    return wrapper
