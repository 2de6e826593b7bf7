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

from smoothgrad import hf
from smoothgrad.cli import generate
from smoothgrad.cli.common import check_output_folder, say, target_of
from smoothgrad.cli.options import add_smoothing_options, add_target_option, positive_int, smoothing
from smoothgrad.cli.parser import Parser, UsageError, subcommand
from smoothgrad.files import write_atomically
from smoothgrad.text import TEXT_METHODS, TextMaps, explain_text
from smoothgrad.tokens import REDUCTIONS

__all__ = ["add", "run"]

EXAMPLES = """examples:
  smoothgrad explain-text "a fine film" --model hf:./my-classifier
  smoothgrad explain-text "w3 w0 w7" "w1 w9" --model hf:DIR --method integrated_gradients
  smoothgrad explain-text "..." --model hf:DIR --reduce sum --normalize l1 --samples 100
  smoothgrad explain-text "a fine film" --model hf:DIR --fast
  smoothgrad explain-text "The capital of France is" --model hf:./gpt2 --generate 8
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
    parser.add_argument("--method", choices=TEXT_METHODS, default="gradient",
                        help="base attribution method at the embeddings (default: gradient)")
    add_smoothing_options(parser, unit="text")
    add_target_option(parser, unit="text")
    parser.add_argument("--reduce", choices=REDUCTIONS, default=None,
                        help="token score: sum (signed), norm (L2) or dot (gradient·embedding) "
                             "over the embedding (default: sum for input_x_gradient, "
                             "integrated_gradients and deeplift, else norm)")
    parser.add_argument("--normalize", choices=["l1", "l2"], default=None,
                        help="divide each text's scores by their L1 or L2 norm")
    parser.add_argument("--fast", action="store_true",
                        help="explain an optimised copy of the model: bfloat16 where the CPU "
                             "has it natively and a check on the first noisy copies finds the "
                             "map unchanged, else float32 (the precision used is printed)")
    parser.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                        help="truncate texts to N tokens (default: the most the model takes, "
                             "with a warning when a text is longer)")
    parser.add_argument("--out", type=Path, default=Path("smoothgrad-out"),
                        help="output folder for explain-text.html and text-K.png "
                             "(default: smoothgrad-out)")
    generate.add_options(parser)
    parser.set_defaults(run=run)


def _show(args: argparse.Namespace, model: hf.TextModel, shown: TextMaps) -> None:
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    result, probabilities = shown.result, shown.probabilities
    assert probabilities is not None
    for i, (text, scores) in enumerate(zip(args.texts, shown.texts, strict=True), start=1):
        say(args, f"text {i}: {text!r}")
        explained = None if result.target is None else int(result.target[i - 1])
        values, classes = probabilities[i - 1].topk(min(5, probabilities.shape[1]))
        for rank, (p, c) in enumerate(zip(values.tolist(), classes.tolist(), strict=True), 1):
            mark = "  <- explained" if c == explained else ""
            say(args, f"  {rank}. {model.labels[c]:<24} {p:6.3f}{mark}")
        say(args, "  " + (scores.to_ansi() if colour else scores.to_text()))
    sigma = result.sigma if not isinstance(result.sigma, tuple) else result.sigma[0]
    say(args, f"  {args.method}: SmoothGrad ({result.aggregate}) over {result.samples} samples "
              f"at the embeddings, σ={float(sigma.flatten()[0]):.3g}")
    if result.precision is not None:
        say(args, f"  precision: {result.precision}")


def run(args: argparse.Namespace) -> int:
    """`smoothgrad explain-text`: everything is checked before anything is written."""
    if generate.wanted(args):
        return generate.run(args)
    if not hf.is_hf(args.model):
        raise UsageError("--model: explain-text needs a Hugging Face directory, hf:DIR")
    smoothing(args)  # every smoothing option checked before the model loads
    check_output_folder(args.out)
    model = hf.load(args.model, device=args.device, quiet=args.quiet,
                    progress=sys.stderr.isatty())  # like the other commands' bars
    limit = model.max_length
    if args.max_length is not None and limit is not None and args.max_length > limit:
        raise UsageError(f"--max-length {args.max_length}: the model takes at most {limit} "
                         "tokens")
    shown = explain_text(
        model, args.texts, method=args.method, reduce=args.reduce, normalize=args.normalize,
        max_length=args.max_length, target=target_of(args, model), samples=args.samples,
        noise=args.noise, stdev=args.stdev, aggregate=args.aggregate, seed=args.seed,
        antithetic=args.antithetic, batch_size=args.batch_size, tol=args.tol,
        max_samples=args.max_samples, fast=args.fast)
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

