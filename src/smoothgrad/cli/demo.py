"""`smoothgrad demo`: the SmoothGrad tutorial's figures for the bundled photos, offline.

Example:
    $ smoothgrad demo --out smoothgrad-demo
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smoothgrad import images, viz
from smoothgrad.cli.common import DEMO_METHODS, check_output_folder, load_model, say
from smoothgrad.cli.explain import describe, explain_image, method_figure
from smoothgrad.cli.options import (
    add_figure_options,
    add_model_options,
    add_smoothing_options,
    smoothing,
    style,
)
from smoothgrad.cli.parser import subcommand
from smoothgrad.config import DEFAULT_NOISE
from smoothgrad.methods.registry import title

__all__ = ["add", "run"]


def run(args: argparse.Namespace) -> int:
    """`smoothgrad demo`: the tutorial's figures for the bundled photos."""
    shown, config = style(args), smoothing(args)
    check_output_folder(args.out)
    model = load_model(args)
    samples = images.sample_images()
    loaded = {name: images.load(path) for name, path in samples.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    sigma = (f"σ={args.stdev}" if args.stdev is not None
             else f"σ={DEFAULT_NOISE if args.noise is None else args.noise:.0%} of the input range")
    say(args, f"model {args.model}, {args.samples} samples, {sigma}, seed {args.seed}")
    for method in DEMO_METHODS:
        items = [explain_image(model, name, image, config.replace(method=method), None,
                               bar=not args.quiet)
                 for name, image in loaded.items()]
        for item in items:
            say(args, describe(item, None, model.labels, predictions=method == DEMO_METHODS[0]))
        figure = method_figure(items, shown, model.crop)
        for path in viz.save(figure, args.out / method, ["png"]):
            say(args, f"wrote {path}: Input | {title(method)} | SmoothGrad + {title(method)} "
                      f"for {', '.join(loaded)}")
    return 0


def add(commands: Any) -> None:
    parser = subcommand(commands, "demo",
                        help="the SmoothGrad tutorial on the bundled photos, offline", epilog=None)
    parser.add_argument("--out", type=Path, default=Path("smoothgrad-demo"),
                        help="output folder (default: smoothgrad-demo)")
    add_model_options(parser)
    add_smoothing_options(parser)
    add_figure_options(parser)
    parser.set_defaults(run=run)
