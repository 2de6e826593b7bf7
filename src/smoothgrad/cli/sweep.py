"""`smoothgrad sweep`: the paper's rows of maps over σ and over n, convergence, a table.

Example:
    $ smoothgrad sweep cat.jpg --method guided_backprop --out sweep/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from smoothgrad import evaluation, images, viz
from smoothgrad.cli import common
from smoothgrad.cli.options import (
    add_evaluation_options,
    add_figure_options,
    add_method_option,
    add_model_options,
    add_noise_draw_options,
    list_arg,
    metric_options,
    metric_settings,
    non_negative_float,
    positive_int,
    style,
)
from smoothgrad.cli.parser import UsageError, subcommand
from smoothgrad.config import DEFAULT_NOISE
from smoothgrad.methods.registry import title as method_title
from smoothgrad.stats import AGGREGATES

__all__ = ["add", "run"]


def check(args: argparse.Namespace) -> tuple[viz.Style, evaluation.MetricOptions]:
    """Every option of `sweep` that can be checked before any work; the figure style and
    the metric options."""
    if args.reference_samples <= max(args.samples):
        raise UsageError(f"--reference-samples {args.reference_samples} must exceed the largest "
                         f"--samples ({max(args.samples)})")
    if args.aggregate == "var" and min(*args.samples, args.at_samples) < 2:
        raise UsageError("--aggregate var needs at least 2 samples per map")
    shown, options = style(args), metric_options(args)
    common.check_output_folder(args.out)
    common.check_output_file(args.json, "--json", args.out)
    return shown, options


def figures(args: argparse.Namespace, result: evaluation.Sweep, picture: Any, name: str,
            smoothed: str, shown: viz.Style) -> list[Any]:
    """The noise row, the samples row and the convergence plot."""
    noise_row = viz.row_figure(
        [picture, *[shown.process(m) for _, m in result.noise_maps]],
        ["Input", *[f"σ {noise:.0%}" for noise, _ in result.noise_maps]],
        suptitle=f"{smoothed}, {args.at_samples} samples, by noise level", **shown.colors)
    samples_row = viz.row_figure(
        [picture, *[shown.process(m) for _, m in result.sample_maps]],
        ["Input", *[f"n = {n}" for n, _ in result.sample_maps]],
        suptitle=f"{smoothed}, σ {args.at_noise:.0%}, by sample count", **shown.colors)
    rows = [row for row in result.rows if row["row"] == "samples"]
    convergence = viz.convergence_figure(
        [row["samples"] for row in rows],
        {"map vs reference": [row["relative_l2"] for row in rows],
         "shown map vs reference": [row["processed_l2"] for row in rows],
         "‖stderr‖ / ‖map‖": [row["relative_error"] for row in rows]},
        title=f"{name}: {smoothed}\nreference: {args.reference_samples} samples, other seed")
    return [noise_row, samples_row, convergence]


def run(args: argparse.Namespace) -> int:
    """`smoothgrad sweep`: the paper's rows of maps over σ and over n, convergence, a table."""
    shown, options = check(args)
    image = images.load(args.image)
    model = common.load_model(args)
    target = common.target_of(args, model)
    args.out.mkdir(parents=True, exist_ok=True)
    name = common.unique_names([args.image])[0]
    x = model.preprocess(image)
    explained = model.top_k(x, 1)[0][0] if target is None else model.labels[target]
    with torch.no_grad():  # the figures name the explained class and its probability
        probabilities = model(x).softmax(dim=1)[0]
    index = int(probabilities.argmax()) if target is None else target
    label = viz.class_label(index, float(probabilities[index]), model.labels)
    smoothed = f"{evaluation.SMOOTHING_NAMES[args.aggregate]} + {method_title(args.method)}"
    common.say(args, f"{name}: {smoothed}, explaining {explained!r}")
    result = evaluation.sweep(
        model, x, method=args.method, noises=args.noise, samples=args.samples,
        at_noise=args.at_noise, at_samples=args.at_samples,
        reference_samples=args.reference_samples, target=target, options=options,
        seed=args.seed, aggregate=args.aggregate, antithetic=args.antithetic,
        batch_size=args.batch_size, log=lambda line: common.say(args, f"  {line}"),
        progress=common.progress_bars(args))
    common.say(args, evaluation.format_table(result.rows, evaluation.SWEEP_COLUMNS))
    stem = f"{name}_{args.method}"
    written = []
    drawn = figures(args, result, model.crop(image), name, f"{smoothed} for {label}", shown)
    for figure, part in zip(drawn, ("noise", "samples", "convergence"), strict=True):
        written += viz.save(figure, args.out / f"{stem}_{part}", args.save)
    settings = {"image": args.image, "model": args.model, "method": args.method,
                "aggregate": args.aggregate, "target": explained, "seed": args.seed,
                "noises": args.noise, "samples": args.samples, "at_noise": args.at_noise,
                "at_samples": args.at_samples, "reference_samples": args.reference_samples,
                "antithetic": args.antithetic, "batch_size": args.batch_size,
                **metric_settings(options)}
    written += common.write_tables(result.rows, list(evaluation.SWEEP_COLUMNS),
                            args.out / f"{stem}_sweep.csv", args.json, settings)
    for path in written:
        common.say(args, f"wrote {path}")
    return 0


def add(commands: Any) -> None:
    parser = subcommand(
        commands, "sweep",
        help="maps over noise level and sample count, convergence plot, metric table")
    parser.add_argument("image", metavar="IMAGE", help="image file to explain")
    add_model_options(parser)
    add_method_option(parser)
    parser.add_argument("--noise", type=list_arg(non_negative_float), metavar="LIST",
                        default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5],
                        help="noise levels of the first row (default: 0,0.05,0.1,0.2,0.3,0.5)")
    parser.add_argument("--samples", type=list_arg(positive_int), metavar="LIST",
                        default=[2, 5, 20, 50, 100],
                        help="sample counts of the second row (default: 2,5,20,50,100)")
    parser.add_argument("--at-noise", type=non_negative_float, default=DEFAULT_NOISE, metavar="σ",
                        help=f"noise level of the samples row (default: {DEFAULT_NOISE})")
    parser.add_argument("--at-samples", type=positive_int, default=50, metavar="N",
                        help="samples per map of the noise row (default: 50)")
    parser.add_argument("--reference-samples", type=positive_int, default=500, metavar="N",
                        help="samples of the reference map for the convergence plot "
                             "(default: 500)")
    parser.add_argument("--aggregate", choices=AGGREGATES, default="mean",
                        help="mean (SmoothGrad), abs, square (SmoothGrad²) or var (VarGrad)")
    add_noise_draw_options(parser)
    add_evaluation_options(parser)
    parser.add_argument("--out", type=Path, default=Path("smoothgrad-sweep"),
                        help="output folder (default: smoothgrad-sweep)")
    parser.add_argument("--save", type=list_arg(str, ("png", "svg", "pdf")), default=["png"],
                        metavar="FORMATS", help="figure formats: png,svg,pdf (default: png)")
    add_figure_options(parser)
    parser.set_defaults(run=run)
