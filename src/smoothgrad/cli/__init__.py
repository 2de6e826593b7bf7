"""The `smoothgrad` command: explain images, reproduce the tutorial, measure maps.

One module per command (``explain``, ``demo``, ``batch``, ``sweep``, ``evaluate``); the
parser is built from the registry in :mod:`smoothgrad.cli.parser`. This package is the
only place that sees argparse, and nothing in smoothgrad imports it.

Example:
    $ smoothgrad explain cat.jpg --method guided_backprop --samples 50 --out maps/
    $ smoothgrad demo
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from smoothgrad.cli import streams

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 a bug of ours or a command's own
    failure code, 2 bad input, 130 interrupted).

    A closed stdout or stderr (``| head -1``) costs no result (`streams.survivable`). Errors
    meant for the user are one line with exit 2; any other exception is reported as a bug
    (one line, exit 1; ``--debug`` or SMOOTHGRAD_DEBUG=1 adds the traceback).
    """
    from smoothgrad.cli.parser import build_parser

    words = list(sys.argv[1:] if argv is None else argv)
    with streams.survivable():
        args = build_parser().parse_args(words)
        try:
            run: Callable[[argparse.Namespace], int] = args.run
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                return run(args)
        except KeyboardInterrupt:
            print("smoothgrad: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            return streams.report(exc, words, streams.debugging(getattr(args, "debug", False)))


def show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Warnings as one line on stderr, like errors."""
    print(f"smoothgrad: warning: {message}", file=sys.stderr)
