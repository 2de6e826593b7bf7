"""Output streams that survive a closed pipe, and errors told apart for the user.

`smoothgrad batch DIR --out O 2>&1 | head -n 1` closes stdout and stderr after one line;
the work must go on and every result be written. `survivable` puts stdout and stderr
behind `Survivable` for the command's run: the first write that finds the pipe closed
sends that descriptor to /dev/null, and every later write (warnings, progress bars, the
summary) is dropped instead of raising BrokenPipeError into the computation.

`report` prints an exception that escaped a command as one line: the user's to fix
(`smoothgrad.errors.is_users`, exit 2), raised in the user's own model code (exit 2,
naming the file and line), or a bug of smoothgrad (exit 1, with the command line and how
to get the traceback: ``--debug`` or ``SMOOTHGRAD_DEBUG=1``).

Example:
    >>> import io
    >>> stream = Survivable(io.StringIO())
    >>> stream.write("one line\\n"), stream.getvalue()
    (9, 'one line\\n')
"""

from __future__ import annotations

import contextlib
import os
import shlex
import site
import sys
import sysconfig
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from smoothgrad.errors import in_smoothgrad, is_users
from smoothgrad.files import one_line

__all__ = ["DEBUG_VARIABLE", "Survivable", "debugging", "report", "survivable"]

DEBUG_VARIABLE = "SMOOTHGRAD_DEBUG"
"""Set to 1 (like ``--debug``) to get the traceback of an error."""

_LIBRARIES = {Path(path).resolve() for path in (
    *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
    *site.getsitepackages(), site.getusersitepackages())}


class Survivable:
    """A text stream whose writes never raise BrokenPipeError: after the first one, its file
    descriptor points to /dev/null (for every writer that shares it) and writing goes on."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()  # what was buffered goes to /dev/null now

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def survivable() -> Iterator[None]:
    """stdout and stderr as `Survivable` streams in the block, then the originals again."""
    before = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, Survivable(sys.stdout))
    sys.stderr = cast(TextIO, Survivable(sys.stderr))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


def debugging(flag: bool) -> bool:
    """Whether tracebacks are wanted: ``--debug`` or SMOOTHGRAD_DEBUG set (not to 0)."""
    return flag or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def report(exc: Exception, argv: Sequence[str], debug: bool) -> int:
    """Print `exc` as one line on stderr (after its traceback when `debug`); the exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if debug else f"; add --debug (or set {DEBUG_VARIABLE}=1) for the traceback"
    if is_users(exc):
        message, code = one_line(exc), 2
    elif (where := model_frame(exc)) is not None:
        message = (f"the model's own code raised {type(exc).__name__}: {_first_line(exc)} "
                   f"(in {where}){hint}")
        code = 2
    else:
        message = (f"this is a bug in smoothgrad, please report it: {type(exc).__name__}: "
                   f"{_first_line(exc)} (command: {shlex.join(['smoothgrad', *argv])}){hint}")
        code = 1
    print(f"smoothgrad: error: {message}", file=sys.stderr)
    return code


def model_frame(exc: BaseException) -> str | None:
    """'file.py, line N, in fn' where `exc` was raised in the user's code, else None.

    The user's code is any Python file outside smoothgrad and the installed libraries (a
    `--model file.py:fn` or `module:fn`). It raised the error when the innermost such frame
    is deeper than smoothgrad's innermost frame (the model called by smoothgrad, not
    smoothgrad called back by the model).
    """
    frames = traceback.extract_tb(exc.__traceback__)
    kinds = [_kind(frame.filename) for frame in frames]
    users = [i for i, kind in enumerate(kinds) if kind == "user"]
    ours = [i for i, kind in enumerate(kinds) if kind == "ours"]
    if not users or (ours and ours[-1] > users[-1]):
        return None
    frame = frames[users[-1]]
    return f"{Path(frame.filename).name}, line {frame.lineno}, in {frame.name}"


def _kind(filename: str) -> str:
    path = Path(filename)
    if not path.is_file():
        return "other"  # <frozen ...>, <string>
    if in_smoothgrad(filename):
        return "ours"
    path = path.resolve()
    if any(path.is_relative_to(library) for library in _LIBRARIES):
        return "library"
    return "user"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
