"""`smoothgrad explain-text`: a text classifier's top classes and a SmoothGrad score per token.

The noise is added at the model's input embeddings (padding masked out); each token's
embedding-level map is reduced to one score (`smoothgrad.tokens`). The tokens are printed
coloured by score (plain text with the scores when the output is not a terminal), and an
HTML page and a PNG figure per text are written.

Example:
    $ smoothgrad explain-text "a fine film" --model hf:path/to/model --method integrated_gradients
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any

from smoothgrad import hf, models
from smoothgrad.cli import generate
from smoothgrad.cli.common import say, target_of
from smoothgrad.cli.options import (
    add_method_option,
    add_smoothing_options,
    add_target_option,
    positive_int,
)
from smoothgrad.cli.parser import Parser, UsageError, subcommand
from smoothgrad.files import write_atomically
from smoothgrad.text import TextMaps, explain_text
from smoothgrad.tokens import REDUCTIONS

__all__ = ["add", "run"]

EXAMPLES = """examples:
  smoothgrad explain-text "a fine film" --model hf:./my-classifier
  smoothgrad explain-text "w3 w0 w7" "w1 w9" --model hf:DIR --method integrated_gradients
  smoothgrad explain-text "..." --model hf:DIR --reduce sum --normalize l1 --samples 100
"""


def add(commands: Any) -> None:
    parser: Parser = subcommand(
        commands, "explain-text", epilog=EXAMPLES,
        help="explain a Hugging Face text classifier (hf:DIR): top classes, a score per token")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to explain")
    parser.add_argument("--model", required=True, metavar="hf:DIR",
                        help="a local save_pretrained directory of a sequence classifier "
                             "(read offline)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu",
                        help="where to run (default: cpu; auto picks cuda, then mps, then cpu)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_method_option(parser)
    add_smoothing_options(parser)
    add_target_option(parser)
    parser.add_argument("--reduce", choices=REDUCTIONS, default=None,
                        help="token score: sum (signed), norm (L2) or dot (gradient·embedding) "
                             "over the embedding (default: sum for input_x_gradient, "
                             "integrated_gradients and deeplift, else norm)")
    parser.add_argument("--normalize", choices=["l1", "l2"], default=None,
                        help="divide each text's scores by their L1 or L2 norm")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="truncate texts to this many tokens")
    parser.add_argument("--out", type=Path, default=Path("smoothgrad-out"),
                        help="output folder for explain-text.html and text-K.png "
                             "(default: smoothgrad-out)")
    generate.add_options(parser)
    parser.set_defaults(run=run)


def _show(args: argparse.Namespace, model: hf.TextModel, shown: TextMaps) -> None:
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    result = shown.result
    for i, (text, scores) in enumerate(zip(args.texts, shown.texts, strict=True), start=1):
        say(args, f"text {i}: {text!r}")
        explained = None if result.target is None else int(result.target[i - 1])
        top = model.top_k(model.encode(text, max_length=args.max_length).input_ids)
        for rank, (label, probability) in enumerate(top, start=1):
            mark = "  <- explained" if explained is not None and \
                model.labels[explained] == label else ""
            say(args, f"  {rank}. {label:<24} {probability:6.3f}{mark}")
        say(args, "  " + (scores.to_ansi() if colour else scores.to_text()))
    sigma = result.sigma if not isinstance(result.sigma, tuple) else result.sigma[0]
    say(args, f"  {args.method}: SmoothGrad ({result.aggregate}) over {result.samples} samples "
              f"at the embeddings, σ={float(sigma.flatten()[0]):.3g}")


def run(args: argparse.Namespace) -> int:
    """`smoothgrad explain-text`: everything is checked before anything is written."""
    if generate.wanted(args):
        return generate.run(args)
    if not hf.is_hf(args.model):
        raise UsageError("--model: explain-text needs a Hugging Face directory, hf:DIR")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: '{args.out}' is not a folder")
    model = models.load(args.model, device=args.device)
    assert isinstance(model, hf.TextModel)
    shown = explain_text(
        model, args.texts, method=args.method, reduce=args.reduce, normalize=args.normalize,
        max_length=args.max_length, target=target_of(args, model), samples=args.samples,
        noise=args.noise, stdev=args.stdev, aggregate=args.aggregate, seed=args.seed,
        antithetic=args.antithetic, batch_size=args.batch_size, tol=args.tol,
        max_samples=args.max_samples)
    _show(args, model, shown)
    args.out.mkdir(parents=True, exist_ok=True)
    heading = f"smoothgrad explain-text: {args.method} on {model.name}"
    written = [write_atomically(args.out / "explain-text.html", shown.to_html(heading).encode())]
    for i, scores in enumerate(shown.texts, start=1):
        buffer = io.BytesIO()
        scores.figure().savefig(buffer, format="png", dpi=150, bbox_inches="tight")
        written.append(write_atomically(args.out / f"text-{i}.png", buffer.getvalue()))
    for path in written:
        say(args, f"  wrote {path}")
    return 0

