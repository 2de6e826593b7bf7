"""`smoothgrad explain`: top-5, the base method's map and its SmoothGrad, figures and arrays.

Example:
    $ smoothgrad explain cat.jpg --method guided_backprop --samples 50 --out maps/
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from smoothgrad import display, images, models, viz
from smoothgrad.cli.common import check_output_folder, load_model, say, target_of, unique_names
from smoothgrad.cli.options import (
    add_figure_options,
    add_method_option,
    add_model_options,
    add_smoothing_options,
    add_target_option,
    save_arg,
    smoothing,
    style,
)
from smoothgrad.cli.parser import Parser, subcommand
from smoothgrad.config import SmoothConfig
from smoothgrad.engine import SmoothResult, smooth
from smoothgrad.files import Data, npy_bytes, write_all
from smoothgrad.methods.registry import title as method_title
from smoothgrad.stats import AGGREGATE_FILE_NAMES, AGGREGATE_TITLES

__all__ = ["Explained", "add", "describe", "explain_image", "method_figure", "run"]

def add(commands: Any) -> None:
    parser: Parser = subcommand(
        commands, "explain",
        help="explain images: top-5, base map and SmoothGrad map, figures and arrays")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    add_model_options(parser)
    add_method_option(parser)
    add_smoothing_options(parser)
    add_target_option(parser)
    parser.add_argument("--out", type=Path, default=Path("smoothgrad-out"),
                        help="output folder (default: smoothgrad-out)")
    parser.add_argument("--save", type=save_arg, default=["png", "npy"], metavar="FORMATS",
                        help="what to write: figures as png,svg,pdf and raw arrays as npy "
                             "(default: png,npy)")
    add_figure_options(parser)
    parser.set_defaults(run=run)


@dataclass
class Explained:
    """One image explained with one base method: its plain and its smoothed map, and the
    class they explain with its probability (`label`, as figures name it)."""

    name: str
    image: Image.Image
    top5: list[tuple[str, float]]
    method: str
    plain: Tensor
    smoothed: SmoothResult
    seconds: float
    label: str


def explain_image(model: models.LoadedModel, name: str, image: Image.Image,
                  config: SmoothConfig, target: int | None, *, bar: bool = True) -> Explained:
    """Top-5, the base method's map and its SmoothGrad, for one image (a progress bar on a
    terminal unless `bar` is False)."""
    from tqdm import tqdm

    x = model.preprocess(image)
    top5 = model.top_k(x)
    method = config.method_name
    started = time.perf_counter()
    plain = smooth(model, x, method=method, target=target, samples=1, noise=0.0).attribution
    with tqdm(total=config.limit, desc=f"{name} {method}", unit="sample", delay=1.0,
              leave=False, disable=not bar or not sys.stderr.isatty(), file=sys.stderr) as shown:
        result = smooth(model, x, config, target=target, progress=shown.update)
    label = display.explained(result, 0, model.labels) or ""
    return Explained(name, image, top5, method, plain, result, time.perf_counter() - started,
                     label)


def method_figure(items: Sequence[Explained], shown: viz.Style,
                  picture: Any) -> Any:
    """Input | base method | SmoothGrad + base method, one row per image (tutorial Fig. 4-5),
    each row labelled with the class its maps explain and its probability; `picture(image)`
    is the input panel: the pixels the model saw (`LoadedModel.crop`)."""
    rows = [viz.Row(picture(item.image),
                    [shown.process(item.plain[0]), shown.process(item.smoothed.attribution[0])],
                    item.label) for item in items]
    title = method_title(items[0].method)
    smoothed = AGGREGATE_TITLES[items[0].smoothed.aggregate]
    return viz.comparison_figure(rows, titles=("Input", title, f"{smoothed} +\n{title}"),
                                 **shown.colors)


def describe(item: Explained, target: int | None, labels: Sequence[str], *,
             predictions: bool = True) -> str:
    """The top-5 printout (unless `predictions` is False) and the smoothed map's uncertainty."""
    explained = int(item.smoothed.target[0]) if item.smoothed.target is not None else None
    lines = [f"{item.name}: top-5" if predictions else f"{item.name}:"]
    for rank, (label, probability) in enumerate(item.top5 if predictions else [], start=1):
        mark = "  <- explained" if explained is not None and labels[explained] == label else ""
        lines.append(f"  {rank}. {label:<28} {probability:6.3f}{mark}")
    if target is not None and labels[target] not in [label for label, _ in item.top5]:
        lines.append(f"  explaining --target {target}: {item.label}")
    result = item.smoothed
    flips = "" if result.flip_rate is None else f", flip rate {float(result.flip_rate[0]):.2f}"
    lines.append(f"  {item.method}: SmoothGrad ({result.aggregate}) over {result.samples} "
                 f"samples, σ={float(result.sigma[0]):.3g}, relative standard error "
                 f"{float(result.relative_error()[0]):.3f}{flips}, {item.seconds:.1f} s")
    return "\n".join(lines)


def array_files(item: Explained, stem: Path) -> dict[Path, bytes]:
    """The plain map, the smoothed map and its standard error as float32 .npy files, named
    after the aggregate: ``STEM.npy``, ``STEM_square.npy``, ``STEM_square_stderr.npy``."""
    smoothed = AGGREGATE_FILE_NAMES[item.smoothed.aggregate]
    arrays = {"": item.plain[0], f"_{smoothed}": item.smoothed.attribution[0],
              f"_{smoothed}_stderr": item.smoothed.stderr[0]}
    return {stem.with_name(f"{stem.name}{suffix}.npy"): npy_bytes(array.detach().cpu().float())
            for suffix, array in arrays.items()}


def run(args: argparse.Namespace) -> int:
    """`smoothgrad explain`: everything is checked before anything is written."""
    shown, config = style(args), smoothing(args)
    check_output_folder(args.out)
    loaded = [images.load(path) for path in args.images]
    model = load_model(args)
    target = target_of(args, model)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [fmt for fmt in args.save if fmt != "npy"]
    for name, image in zip(unique_names(args.images), loaded, strict=True):
        item = explain_image(model, name, image, config, target, bar=not args.quiet)
        say(args, describe(item, target, model.labels))
        stem = args.out / f"{name}_{args.method}"
        outputs: dict[Path, Data] = {}
        if figures:
            figure = method_figure([item], shown, model.crop)
            outputs.update(viz.figure_files(figure, stem, figures))
        if "npy" in args.save:
            outputs.update(array_files(item, stem))
        for path in write_all(outputs):  # all of this image's files, or none
            say(args, f"  wrote {path}")
    return 0
