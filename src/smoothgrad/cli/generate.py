"""`smoothgrad explain-text --generate N` (or `--continuation TEXT`): a causal LM's generation.

explain-text's texts become prompts, `--model hf:DIR` a causal language model: each prompt's
continuation (N greedy tokens, or the given text) is explained token by token with
`smoothgrad.text.explain_generation`. Printed: the continuation, and per generated token its
probability, flip rate and top source tokens; written: a heatmap page of every prompt
(generation.html), and per prompt the score matrix (generation-K.npy, generated tokens ×
source tokens) and its heatmap (generation-K.png).

Example:
    $ smoothgrad explain-text "The capital of France is" --model hf:./gpt2 --generate 8
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

from smoothgrad import hf
from smoothgrad.cli.common import check_output_folder, say
from smoothgrad.cli.options import positive_int, smoothing
from smoothgrad.cli.parser import UsageError
from smoothgrad.config import DEFAULT_NOISE
from smoothgrad.errors import OptionError
from smoothgrad.files import npy_bytes, write_all
from smoothgrad.forcing import METHODS, SCORES
from smoothgrad.generation import GenerationResult, explain_generation
from smoothgrad.tokens import html_page

__all__ = ["add_options", "run", "wanted"]

_NOT_FOR_GENERATION = {  # option: (attribute, value when not given)
    "--target": ("target", None), "--normalize": ("normalize", None),
    "--aggregate": ("aggregate", "mean"), "--stdev": ("stdev", None),
    "--antithetic": ("antithetic", False), "--max-length": ("max_length", None),
}


_OPTIONS = {"max_new_tokens": "--generate", "continuation": "--continuation"}
"""explain_generation's arguments that a prompt's length can make too large, as options."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """explain-text's options for causal language models."""
    group = parser.add_argument_group(
        "generation (a causal language model: hf:DIR)",
        "explain what the model writes after each TEXT (--reduce: norm by default), e.g.\n"
        '  smoothgrad explain-text "The capital of France is" --model hf:./gpt2 --generate 8')
    given = group.add_mutually_exclusive_group()
    given.add_argument("--generate", type=positive_int, metavar="N",
                       help="generate N tokens greedily and explain each")
    given.add_argument("--continuation", metavar="TEXT",
                       help="explain this continuation of every TEXT (teacher forcing)")
    group.add_argument("--score", choices=SCORES, default="log_prob",
                       help="what each generated token's map explains (default: log_prob)")
    group.add_argument("--top", type=positive_int, default=3,
                       help="source tokens printed per generated token (default: 3)")


def wanted(args: argparse.Namespace) -> bool:
    """Whether explain-text was asked to explain a generation (--score and --top are refused
    without it)."""
    if args.generate is not None or args.continuation is not None:
        return True
    for option, given in (("--score", args.score != "log_prob"), ("--top", args.top != 3)):
        if given:
            raise UsageError(f"{option} applies only with --generate or --continuation")
    return False


def _check(args: argparse.Namespace) -> None:
    if not hf.is_hf(args.model):
        raise UsageError("--model: explain-text --generate needs a Hugging Face causal "
                         "language model, hf:DIR")
    if args.method not in METHODS:
        raise UsageError(f"--method: generation supports {', '.join(METHODS)}, "
                         f"not {args.method}")
    if args.samples == "auto":
        raise UsageError("--samples: generation takes a number of samples, not auto")
    for option, (attribute, unset) in _NOT_FOR_GENERATION.items():
        if getattr(args, attribute, unset) != unset:
            raise UsageError(f"{option} does not apply to --generate/--continuation")
    smoothing(args)  # every smoothing option checked before the model loads
    check_output_folder(args.out)


def _show(args: argparse.Namespace, shown: list[GenerationResult]) -> None:
    for i, result in enumerate(shown, start=1):
        say(args, f"text {i}: {result.prompt!r}")
        say(args, f"  {'generated' if args.generate else 'continuation'}: {result.text!r}")
        for line in result.to_text(args.top).splitlines():
            say(args, "  " + line)
        say(args, "  " + result.caption())
        if result.precision is not None:
            say(args, f"  precision: {result.precision}")


def run(args: argparse.Namespace) -> int:
    """The generation branch of explain-text: everything is checked before anything is
    written, and the files are written together."""
    _check(args)
    lm = hf.load_causal_lm(args.model, device=args.device, quiet=args.quiet,
                           progress=sys.stderr.isatty())  # like explain-text's bars
    noise = DEFAULT_NOISE if args.noise is None else args.noise
    try:
        shown = explain_generation(
            lm.module, lm.tokenizer, list(args.texts), max_new_tokens=args.generate,
            continuation=args.continuation, method=args.method, samples=args.samples,
            noise=noise, seed=args.seed, reduce=args.reduce or "norm", score=args.score,
            batch_size=args.batch_size, fast=args.fast)
    except OptionError as exc:  # a prompt too long for its continuation: name the option
        name, _, rest = str(exc).partition(": ")
        if name not in _OPTIONS:
            raise
        raise UsageError(f"{_OPTIONS[name]}: {rest}") from None
    assert isinstance(shown, list)
    _show(args, shown)
    heading = f"smoothgrad explain-text --generate: {args.method} on {lm.name}"
    files: dict[Any, Any] = {
        args.out / "generation.html": html_page(heading, "\n".join(
            result._repr_html_() for result in shown)).encode()}
    for i, result in enumerate(shown, start=1):
        files[args.out / f"generation-{i}.npy"] = npy_bytes(result.to_numpy())
        buffer = io.BytesIO()
        result.figure().savefig(buffer, format="png", dpi=150, bbox_inches="tight")
        files[args.out / f"generation-{i}.png"] = buffer.getvalue()
    for path in write_all(files):
        say(args, f"  wrote {path}")
    return 0
