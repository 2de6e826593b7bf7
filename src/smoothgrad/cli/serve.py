"""`smoothgrad serve`: a local web page to explore σ and n (needs the ``web`` extra).

Example:
    $ pip install "smoothgrad[web]"
    $ smoothgrad serve --port 8000
"""

from __future__ import annotations

import argparse
from typing import Any

from smoothgrad.cli.options import add_model_options
from smoothgrad.cli.parser import UsageError, subcommand

__all__ = ["add", "run"]

MISSING = ("smoothgrad serve needs the web extra (Starlette and uvicorn): "
           "pip install 'smoothgrad[web]'")


def run(args: argparse.Namespace) -> int:
    """`smoothgrad serve`: take the port, load the model, then serve the page until Ctrl-C,
    SIGTERM or SIGHUP."""
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights: no such file '{args.weights}'")
    try:
        from smoothgrad.web import ServeError, serve
    except ImportError as exc:  # the library and the other commands work without the extra
        raise UsageError(f"{MISSING} ({exc})") from None
    try:
        serve(args.model, host=args.host, port=args.port, weights=args.weights,
              device=args.device, max_upload=args.max_upload_mb * 2**20, quiet=args.quiet)
    except ServeError as exc:
        raise UsageError(f"--{exc}") from None
    return 0


def port_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 (any free one) to "
                                         f"65535, got {text!r}")
    return int(text)


def megabytes_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of MB >= 1, got {text!r}")
    return int(text)


def add(commands: Any) -> None:
    parser = subcommand(
        commands, "serve", help="a local web page: drop an image, move σ and n, watch the map",
        description="Serve a page where you drop an image (or pick a bundled photo), choose the "
                    "method, σ and n, and watch the SmoothGrad map form as samples accumulate.",
        epilog="example:\n  smoothgrad serve --port 8000   # then open http://127.0.0.1:8000/")
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_arg, default=8000,
                        help="port (default: 8000; 0 picks a free one, printed with the URL)")
    parser.add_argument("--max-upload-mb", type=megabytes_arg, default=20, metavar="MB",
                        help="largest upload accepted (default: 20)")
    parser.set_defaults(run=run)
