"""The `smoothgrad` argument parser, built from the registry of commands.

Adding a command: write a module ``smoothgrad/cli/NAME.py`` with ``add(commands)`` (adds
its subparser to ``commands`` and sets ``run``, a function ``args -> exit code``) and add
its NAME to :data:`COMMANDS`.

Example:
    >>> build_parser().parse_args(["demo", "--samples", "4"]).samples
    4
"""

from __future__ import annotations

import argparse
import importlib
from typing import NoReturn

import smoothgrad
from smoothgrad.errors import UserError

__all__ = ["COMMANDS", "EXAMPLES", "Parser", "UsageError", "build_parser", "subcommand"]

DESCRIPTION = "The `smoothgrad` command: explain images, reproduce the tutorial, measure maps."

COMMANDS = ("explain", "explain_text", "demo", "batch", "sweep", "evaluate", "serve")
"""The subcommands in the order `smoothgrad --help` lists them; each is smoothgrad.cli.NAME."""

EXAMPLES = """examples:
  smoothgrad demo                                  # the tutorial on the bundled photos
  smoothgrad explain cat.jpg                       # gradient vs SmoothGrad, top-5 printout
  smoothgrad explain a.jpg b.png --method guided_backprop --samples 100 --out maps
  smoothgrad explain cat.jpg --target "tiger cat" --aggregate square --save png,pdf,npy
  smoothgrad explain cat.jpg --model resnet50 --weights resnet50.pth --device auto
  smoothgrad explain x.png --model mypkg.nets:build   # any nn.Module factory
  smoothgrad explain x.png --model ./mynet.py:build   # a factory in a file
  smoothgrad sweep cat.jpg --method guided_backprop   # maps over σ and n, convergence, table
  smoothgrad evaluate a.jpg b.jpg --json scores.json  # every metric, with and without SmoothGrad
  smoothgrad serve                                 # a local page: drop an image, move σ and n
"""


class UsageError(UserError, ValueError):
    """Bad command-line input; reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    """The `smoothgrad` argument parser with the subcommands of :data:`COMMANDS`."""
    parser = Parser(prog="smoothgrad", description=DESCRIPTION, epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {smoothgrad.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"smoothgrad.cli.{name}").add(commands)
    return parser


def subcommand(commands: argparse._SubParsersAction[Parser], name: str, help: str, *,
               description: str | None = None, epilog: str | None = EXAMPLES) -> Parser:
    """A subparser with the shared examples epilog (unless given), raw formatting and
    ``--debug``."""
    parser: Parser = commands.add_parser(
        name, help=help, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print its traceback (or set SMOOTHGRAD_DEBUG=1)")
    return parser
