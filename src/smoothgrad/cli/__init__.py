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

from smoothgrad.files import one_line

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    from smoothgrad.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return run(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"smoothgrad: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smoothgrad: interrupted", file=sys.stderr)
        return 130


def show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Warnings as one line on stderr, like errors."""
    print(f"smoothgrad: warning: {message}", file=sys.stderr)
