"""`smoothgrad evaluate`: every metric for each base method, with and without SmoothGrad.

Example:
    $ smoothgrad evaluate a.jpg b.jpg --json scores.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smoothgrad import evaluation, images
from smoothgrad.cli.common import (
    DEMO_METHODS,
    check_output_file,
    load_model,
    progress_bars,
    say,
    target_of,
    unique_names,
    write_tables,
)
from smoothgrad.cli.options import (
    add_evaluation_options,
    add_model_options,
    add_smoothing_options,
    list_arg,
    metric_options,
    metric_settings,
    metrics_arg,
    positive_float,
    positive_int,
    smoothing,
)
from smoothgrad.cli.parser import UsageError, subcommand
from smoothgrad.methods.registry import BY_NAME
from smoothgrad.stats import AGGREGATES

__all__ = ["add", "run"]


_METRIC_FLAGS = (
    ("infidelity_perturbations", positive_int, "N",
     "Gaussian perturbations of infidelity (default: {})"),
    ("infidelity_std", positive_float, "S", "std of infidelity's Gaussian perturbations, in "
     "the units of the model's input (default: {})"),
    ("sensitivity_perturbations", positive_int, "N",
     "perturbed inputs of max-sensitivity (default: {})"),
    ("sensitivity_radius", positive_float, "R", "L-inf radius of max-sensitivity's "
     "perturbations (default: {}, Captum's; Quantus: 0.2, 200 perturbations)"),
    ("floor_seeds", positive_int, "N",
     "other noise seeds of the sensitivity noise floor (default: {})"),
)
"""The metric options' flags: MetricOptions field, type, metavar, help (with its default)."""


def add(commands: Any) -> None:
    parser = subcommand(
        commands, "evaluate",
        help="every metric for each base method with and without SmoothGrad")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    add_model_options(parser)
    parser.add_argument("--methods", type=list_arg(str, list(BY_NAME)), metavar="LIST",
                        default=list(DEMO_METHODS),
                        help=f"base methods (default: {','.join(DEMO_METHODS)})")
    parser.add_argument("--aggregates", type=list_arg(str, AGGREGATES), metavar="LIST",
                        default=["mean", "square", "var"],
                        help="SmoothGrad aggregates to compare with each plain method "
                             "(default: mean,square,var)")
    parser.add_argument("--metrics", type=metrics_arg, metavar="LIST|all",
                        default=list(evaluation.DEFAULT_METRICS),
                        help=f"some of {','.join(evaluation.METRICS)}, or all (default: the "
                             "first five; sensitivity costs 20 more maps per method, "
                             "randomization 1)")
    add_smoothing_options(parser, aggregate=False)
    add_evaluation_options(parser)
    defaults = evaluation.MetricOptions()
    for field, kind, metavar, text in _METRIC_FLAGS:
        default = getattr(defaults, field)
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, metavar=metavar,
                            default=default, help=text.format(default))
        if field == "infidelity_std":
            parser.add_argument("--infidelity-normalize", action=argparse.BooleanOptionalAction,
                                default=defaults.infidelity_normalize,
                                help="rescale each map by infidelity's optimal beta (default: "
                                     "on; Captum's default is off, with 10 perturbations)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    parser.set_defaults(run=run)


def check(args: argparse.Namespace) -> evaluation.MetricOptions:
    """Every option of `evaluate` that can be checked before any work; the metric options."""
    smoothing(args)  # checks --samples, --noise, --tol, ...
    if "var" in args.aggregates and args.samples == 1:
        raise UsageError("--aggregates var needs --samples >= 2")
    options = metric_options(args)
    check_output_file(args.json, "--json")
    check_output_file(args.csv, "--csv")
    return options


def run(args: argparse.Namespace) -> int:
    """`smoothgrad evaluate`: the metric table, plain and smoothed, for every image."""
    options = check(args)
    loaded = [images.load(path) for path in args.images]
    model = load_model(args)
    target = target_of(args, model)
    rows: list[dict[str, Any]] = []
    for name, image in zip(unique_names(args.images), loaded, strict=True):
        x = model.preprocess(image)
        explained = model.top_k(x, 1)[0][0] if target is None else model.labels[target]
        say(args, f"{name}: explaining {explained!r}")
        rows += evaluation.evaluate(
            model, x, methods=args.methods, aggregates=args.aggregates, metrics=args.metrics,
            target=target, names=[name], options=options, samples=args.samples,
            noise=args.noise, stdev=args.stdev, seed=args.seed, antithetic=args.antithetic,
            batch_size=args.batch_size, tol=args.tol, max_samples=args.max_samples,
            log=lambda line: say(args, f"  {line}"),
            progress=progress_bars(args))
    say(args, evaluation.format_table(rows))
    used = smoothing(args).as_dict()  # what was used: noise resolved, tol, max_samples, ...
    settings = {"images": args.images, "model": args.model, "methods": args.methods,
                "aggregates": args.aggregates, "target": target, "metrics": args.metrics,
                **{key: used[key] for key in ("samples", "noise", "stdev", "seed", "antithetic",
                                              "batch_size", "tol", "max_samples")},
                **metric_settings(options),
                "infidelity_perturbations": args.infidelity_perturbations,
                "infidelity_std": args.infidelity_std,
                "infidelity_normalize": args.infidelity_normalize,
                "sensitivity_perturbations": args.sensitivity_perturbations,
                "sensitivity_radius": args.sensitivity_radius, "floor_seeds": args.floor_seeds}
    written = write_tables(rows, list(evaluation.COLUMNS), args.csv, args.json, settings)
    for path in written:
        say(args, f"wrote {path}")
    return 0
