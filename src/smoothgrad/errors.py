"""Which errors are the user's to fix: the one mark the command line trusts.

An exception whose class derives from `UserError` carries a one-line message meant for
whoever gave the input — a bad option value, a file that cannot be read or written, a
model that cannot be loaded. The command line shows such an error as one line with exit
code 2; anything else that escapes is treated as a bug of smoothgrad (exit 1, with the way
to get its traceback), so a plain `ValueError` or `TypeError` raised deep in the library is
never shown to the user as their mistake. Raise sites that check what a user typed raise a
`UserError` subclass (`OptionError` for a value, `ModelError`, `ImageError`, `BatchError`,
`OutputError`, the CLI's `UsageError`); checks of what a program passed stay plain
ValueError/TypeError.

Example:
    >>> issubclass(OptionError, ValueError), is_users(OptionError("tol must be > 0"))
    (True, True)
    >>> is_users(TypeError("unsupported operand")), is_users(FileNotFoundError(2, "x", "a.jpg"))
    (False, True)
"""

from __future__ import annotations

import traceback
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

__all__ = ["OptionError", "UserError", "in_smoothgrad", "is_users", "raised_by_smoothgrad"]


class UserError(Exception):
    """Base of the errors whose message is one line meant for the user (a mixin: subclasses
    also derive from the builtin that fits, e.g. ValueError or OSError)."""


class OptionError(UserError, ValueError):
    """An option has a value it cannot take; the message names the option."""


def is_users(exc: BaseException) -> bool:
    """Whether `exc` is for the user to fix: a `UserError`, or an OSError about a named file
    (missing, unreadable, not writable, disk full)."""
    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.filename is not None)


def raised_by_smoothgrad(exc: BaseException) -> bool:
    """Whether `exc` is a bug of ours: not the user's, and raised in smoothgrad's own code
    (its innermost frame), not in the user's model or a library it called.

    Example:
        >>> try:
        ...     is_users(1, 2)  # a call with wrong arguments fails in the caller's frame
        ... except TypeError as exc:
        ...     raised_by_smoothgrad(exc)
        False
    """
    frames = traceback.extract_tb(exc.__traceback__)
    return not is_users(exc) and bool(frames) and in_smoothgrad(frames[-1].filename)


def in_smoothgrad(filename: str) -> bool:
    """Whether a traceback frame's file is part of smoothgrad's own code.

    >>> in_smoothgrad(__file__), in_smoothgrad("model.py")
    (True, False)
    """
    return Path(filename).resolve().is_relative_to(_PACKAGE)
