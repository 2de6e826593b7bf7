"""Option types and the option groups the commands share (the only argparse in smoothgrad).

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_smoothing_options(parser)
    >>> parser.parse_args(["--samples", "auto"]).samples
    'auto'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from smoothgrad import evaluation, models, viz
from smoothgrad.cli.parser import UsageError
from smoothgrad.config import DEFAULT_NOISE, SmoothConfig
from smoothgrad.methods.registry import BY_NAME
from smoothgrad.stats import AGGREGATES

__all__ = ["SAVE_FORMATS", "add_evaluation_options", "add_figure_options", "add_method_option",
           "add_model_options", "add_noise_draw_options", "add_smoothing_options",
           "add_target_option", "batch_size_arg", "list_arg", "metric_options", "metric_settings",
           "metrics_arg", "non_negative_float", "non_negative_int", "positive_float",
           "positive_int", "samples_arg", "save_arg", "smoothing", "style"]

SAVE_FORMATS = ("png", "svg", "pdf", "npy")

T = TypeVar("T")


def _checked(text: str, convert: Callable[[str], T], ok: Callable[[T], bool],
             expected: str) -> T:
    """`convert(text)` if it works and passes `ok`, else argparse's one-line error."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _checked(text, int, lambda value: value >= 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    return _checked(text, float, lambda value: 0 <= value < math.inf, "a finite number >= 0")


def positive_float(text: str) -> float:
    return _checked(text, float, lambda value: 0 < value < math.inf, "a finite number > 0")


def samples_arg(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def batch_size_arg(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def save_arg(text: str) -> list[str]:
    formats = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [fmt for fmt in formats if fmt not in SAVE_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SAVE_FORMATS)}, got {text!r}")
    return formats



def list_arg(parse: Callable[[str], T], choices: Sequence[str] | None = None,
             ) -> Callable[[str], list[T]]:
    """An argparse type for a comma-separated list, each item parsed (and checked) alike."""
    def parse_list(text: str) -> list[T]:
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        unknown = [item for item in items if choices is not None and item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown))}; valid: {', '.join(choices or ())}")
        return [parse(item) for item in items]

    return parse_list


def metrics_arg(text: str) -> list[str]:
    if text.strip() == "all":
        return list(evaluation.METRICS)
    return list_arg(str, evaluation.METRICS)(text)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=models.DEFAULT_MODEL,
                        metavar="NAME|module:fn|file.py:fn",
                        help=f"a model name, or your own factory as module:fn or file.py:fn "
                             f"(a function returning an nn.Module, or (module, preprocess)) "
                             f"(default: {models.DEFAULT_MODEL}, offline)")
    parser.add_argument("--weights", type=Path, metavar="FILE",
                        help="local state-dict file for the model")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu",
                        help="where to run (default: cpu; auto picks cuda, then mps, then cpu)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def add_smoothing_options(parser: argparse.ArgumentParser, *, aggregate: bool = True,
                          unit: str = "image") -> None:
    parser.add_argument("--samples", type=samples_arg, default=50, metavar="N|auto",
                        help=f"noisy copies per {unit}, or auto (until --tol) (default: 50)")
    parser.add_argument("--tol", type=positive_float, default=0.05,
                        help="with --samples auto: stop at this relative standard error "
                             "(default: 0.05)")
    parser.add_argument("--max-samples", type=positive_int, default=500,
                        help="with --samples auto: at most this many copies (default: 500)")
    sigma = parser.add_mutually_exclusive_group()
    sigma.add_argument("--noise", type=non_negative_float, default=None,
                       help="noise σ as a fraction of each input's value range "
                            f"(default: {DEFAULT_NOISE})")
    sigma.add_argument("--stdev", type=non_negative_float, default=None,
                       help="absolute noise σ instead of --noise")
    if aggregate:
        parser.add_argument("--aggregate", choices=AGGREGATES, default="mean",
                            help="mean (SmoothGrad), abs, square (SmoothGrad²) or var (VarGrad)")
    add_noise_draw_options(parser)


def add_noise_draw_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--antithetic", action="store_true", help="use noise pairs ε, −ε")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--batch-size", type=batch_size_arg, default="auto", metavar="N|auto",
                        help="noisy copies per forward/backward pass (default: auto)")


def add_method_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=list(BY_NAME), default="gradient",
                        help="base attribution method (default: gradient)")


def add_target_option(parser: argparse.ArgumentParser, unit: str = "image") -> None:
    parser.add_argument("--target", metavar="INDEX|LABEL",
                        help=f"class to explain for every {unit} (default: each prediction)")


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """Options of `sweep` and `evaluate`: target, deletion/insertion curves, JSON output."""
    add_target_option(parser)
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="steps of the deletion and insertion curves (default: 50)")
    parser.add_argument("--substrate", choices=evaluation.SUBSTRATES, default=None,
                        help="what deleted pixels become and insertion starts from: zeros (the "
                             "dataset mean for mean/std-normalised inputs, mid-grey for the "
                             "default model), mean (each image's mean colour), blur (default: "
                             "mean for deletion, blur for insertion)")
    parser.add_argument("--rise", action="store_true",
                        help="RISE's deletion/insertion protocol (deletion to zeros, insertion "
                             "from RISE's blur, steps of 224 pixels): AUCs comparable with "
                             "RISE's published ones; not with --steps or --substrate")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the settings and the table as JSON")


def add_figure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activation", choices=["abs", "positive", "negative", "all"],
                        default="abs", help="how maps are shown (default: abs)")
    parser.add_argument("--skew", type=positive_float, default=0.5,
                        help="gamma applied to the shown map (default: 0.5)")
    parser.add_argument("--percentile", type=positive_float, default=99.0,
                        help="clip the shown map at this percentile (default: 99)")
    parser.add_argument("--colormap", default=None,
                        help="matplotlib colormap (default: viridis; RdBu_r for --activation all)")


def metric_options(args: argparse.Namespace) -> evaluation.MetricOptions:
    """The metric options of `evaluate` or `sweep`, checked (one-line errors naming them)."""
    if args.rise and (args.steps is not None or args.substrate is not None):
        raise UsageError("--rise is RISE's protocol: leave out --steps and --substrate")
    extra = {name: getattr(args, name) for name in (
        "infidelity_perturbations", "infidelity_std", "infidelity_normalize",
        "sensitivity_perturbations", "sensitivity_radius", "floor_seeds") if hasattr(args, name)}
    return evaluation.MetricOptions(steps=args.steps, substrate=args.substrate, rise=args.rise,
                                    **extra)


def metric_settings(options: evaluation.MetricOptions) -> dict[str, object]:
    """What the curves used, for the settings a command records."""
    return {"steps": options.curve_steps, "substrate": options.substrates(),
            "rise": options.rise}


def style(args: argparse.Namespace) -> viz.Style:
    """The figure options as a checked :class:`viz.Style` (a bad one is a UsageError)."""
    try:
        return viz.Style(activation=args.activation, skew=args.skew, percentile=args.percentile,
                         colormap=args.colormap)
    except ValueError as exc:  # viz checks what the user typed: their error, not ours
        raise UsageError(str(exc)) from None


def smoothing(args: argparse.Namespace) -> SmoothConfig:
    """The smoothing options (--method, --samples, --noise, ...) as a checked SmoothConfig."""
    return SmoothConfig(method=getattr(args, "method", "gradient"), samples=args.samples,
                        noise=args.noise, stdev=args.stdev,
                        aggregate=getattr(args, "aggregate", "mean"),
                        batch_size=args.batch_size, seed=args.seed, antithetic=args.antithetic,
                        tol=args.tol, max_samples=args.max_samples)
