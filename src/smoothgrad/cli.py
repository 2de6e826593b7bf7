"""The `smoothgrad` command: explain images, reproduce the tutorial, measure maps.

Example:
    $ smoothgrad explain cat.jpg --method guided_backprop --samples 50 --out maps/
    $ smoothgrad demo
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

import smoothgrad
from smoothgrad import evaluation, images, models, viz
from smoothgrad.engine import SmoothResult, smooth
from smoothgrad.methods import BY_NAME
from smoothgrad.stats import AGGREGATES

__all__ = ["main"]

TITLES = {
    "gradient": "Gradient",
    "input_x_gradient": "Gradient × Input",
    "guided_backprop": "Guided Backprop",
    "integrated_gradients": "Integrated Gradients",
    "deeplift": "DeepLIFT",
}
SAVE_FORMATS = ("png", "svg", "pdf", "npy")
DEMO_METHODS = ("gradient", "guided_backprop")

EXAMPLES = """examples:
  smoothgrad demo                                  # the tutorial on the bundled photos
  smoothgrad explain cat.jpg                       # gradient vs SmoothGrad, top-5 printout
  smoothgrad explain a.jpg b.png --method guided_backprop --samples 100 --out maps
  smoothgrad explain cat.jpg --target "tiger cat" --aggregate square --save png,pdf,npy
  smoothgrad explain cat.jpg --model resnet50 --weights resnet50.pth --device auto
  smoothgrad explain x.png --model mypkg.nets:build   # any nn.Module factory
  smoothgrad sweep cat.jpg --method guided_backprop   # maps over σ and n, convergence, table
  smoothgrad evaluate a.jpg b.jpg --json scores.json  # every metric, with and without SmoothGrad
"""


class UsageError(ValueError):
    """Bad command-line input; reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return run(args)
    except (ValueError, TypeError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"smoothgrad: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smoothgrad: interrupted", file=sys.stderr)
        return 130


def show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Warnings as one line on stderr, like errors."""
    print(f"smoothgrad: warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------ argument types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


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


T = TypeVar("T")


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


# ------------------------------------------------------------------------- parser


def build_parser() -> Parser:
    """The `smoothgrad` argument parser with its subcommands."""
    parser = Parser(prog="smoothgrad", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {smoothgrad.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    explain = commands.add_parser(
        "explain", help="explain images: top-5, base map and SmoothGrad map, figures and arrays",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    add_model_options(explain)
    add_method_option(explain)
    add_smoothing_options(explain)
    add_target_option(explain)
    explain.add_argument("--out", type=Path, default=Path("smoothgrad-out"),
                         help="output folder (default: smoothgrad-out)")
    explain.add_argument("--save", type=save_arg, default=["png", "npy"], metavar="FORMATS",
                         help="what to write: figures as png,svg,pdf and raw arrays as npy "
                              "(default: png,npy)")
    add_figure_options(explain)
    explain.set_defaults(run=run_explain)

    demo = commands.add_parser("demo",
                               help="the SmoothGrad tutorial on the bundled photos, offline")
    demo.add_argument("--out", type=Path, default=Path("smoothgrad-demo"),
                      help="output folder (default: smoothgrad-demo)")
    add_model_options(demo)
    add_smoothing_options(demo)
    add_figure_options(demo)
    demo.set_defaults(run=run_demo)

    from smoothgrad import batch  # the batch module builds on this one's helpers

    batch.add_command(commands)

    sweep = commands.add_parser(
        "sweep", help="maps over noise level and sample count, convergence plot, metric table",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("image", metavar="IMAGE", help="image file to explain")
    add_model_options(sweep)
    add_method_option(sweep)
    sweep.add_argument("--noise", type=list_arg(non_negative_float), metavar="LIST",
                       default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5],
                       help="noise levels of the first row (default: 0,0.05,0.1,0.2,0.3,0.5)")
    sweep.add_argument("--samples", type=list_arg(positive_int), metavar="LIST",
                       default=[2, 5, 20, 50, 100],
                       help="sample counts of the second row (default: 2,5,20,50,100)")
    sweep.add_argument("--at-noise", type=non_negative_float, default=0.15, metavar="σ",
                       help="noise level of the samples row (default: 0.15)")
    sweep.add_argument("--at-samples", type=positive_int, default=50, metavar="N",
                       help="samples per map of the noise row (default: 50)")
    sweep.add_argument("--reference-samples", type=positive_int, default=500, metavar="N",
                       help="samples of the reference map for the convergence plot "
                            "(default: 500)")
    sweep.add_argument("--aggregate", choices=AGGREGATES, default="mean",
                       help="mean (SmoothGrad), abs, square (SmoothGrad²) or var (VarGrad)")
    add_noise_draw_options(sweep)
    add_evaluation_options(sweep)
    sweep.add_argument("--out", type=Path, default=Path("smoothgrad-sweep"),
                       help="output folder (default: smoothgrad-sweep)")
    sweep.add_argument("--save", type=list_arg(str, ("png", "svg", "pdf")), default=["png"],
                       metavar="FORMATS", help="figure formats: png,svg,pdf (default: png)")
    add_figure_options(sweep)
    sweep.set_defaults(run=run_sweep)

    evaluate = commands.add_parser(
        "evaluate", help="every metric for each base method with and without SmoothGrad",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    add_model_options(evaluate)
    evaluate.add_argument("--methods", type=list_arg(str, list(BY_NAME)), metavar="LIST",
                          default=list(DEMO_METHODS),
                          help=f"base methods (default: {','.join(DEMO_METHODS)})")
    evaluate.add_argument("--aggregates", type=list_arg(str, AGGREGATES), metavar="LIST",
                          default=["mean", "square", "var"],
                          help="SmoothGrad aggregates to compare with each plain method "
                               "(default: mean,square,var)")
    evaluate.add_argument("--metrics", type=metrics_arg, metavar="LIST|all",
                          default=list(evaluation.DEFAULT_METRICS),
                          help=f"some of {','.join(evaluation.METRICS)}, or all (default: the "
                               "first five; sensitivity costs 10 more maps per variant, "
                               "randomization 1)")
    add_smoothing_options(evaluate, aggregate=False)
    add_evaluation_options(evaluate)
    evaluate.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    evaluate.set_defaults(run=run_evaluate)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=models.DEFAULT_MODEL, metavar="NAME|module:fn",
                        help=f"model name or factory (default: {models.DEFAULT_MODEL}, offline)")
    parser.add_argument("--weights", type=Path, metavar="FILE",
                        help="local state-dict file for the model")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu",
                        help="where to run (default: cpu; auto picks cuda, then mps, then cpu)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def add_smoothing_options(parser: argparse.ArgumentParser, *, aggregate: bool = True) -> None:
    parser.add_argument("--samples", type=samples_arg, default=50, metavar="N|auto",
                        help="noisy copies per image, or auto (until --tol) (default: 50)")
    parser.add_argument("--tol", type=positive_float, default=0.05,
                        help="with --samples auto: stop at this relative standard error "
                             "(default: 0.05)")
    parser.add_argument("--max-samples", type=positive_int, default=500,
                        help="with --samples auto: at most this many copies (default: 500)")
    sigma = parser.add_mutually_exclusive_group()
    sigma.add_argument("--noise", type=non_negative_float, default=None,
                       help="noise σ as a fraction of each input's value range (default: 0.15)")
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


def add_target_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", metavar="INDEX|LABEL",
                        help="class to explain for every image (default: each prediction)")


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """Options of `sweep` and `evaluate`: target, deletion/insertion steps, JSON output."""
    add_target_option(parser)
    parser.add_argument("--steps", type=positive_int, default=50,
                        help="steps of the deletion and insertion curves (default: 50)")
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


# ----------------------------------------------------------------------- pipeline


@dataclass
class Explained:
    """One image explained with one base method: its plain and its smoothed map."""

    name: str
    image: Image.Image
    top5: list[tuple[str, float]]
    method: str
    plain: Tensor
    smoothed: SmoothResult
    seconds: float


def resolve_device(name: str) -> torch.device:
    """The torch device for --device, refusing ones this machine does not have."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def resolve_target(text: str | None, labels: Sequence[str]) -> int | None:
    """--target as a class index: a number, or a label (close matches suggested)."""
    if text is None:
        return None
    if text.strip().lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(labels):
            raise UsageError(f"--target {index} is not a class: the model has {len(labels)} "
                             f"classes (0..{len(labels) - 1})")
        return index
    try:
        return models.class_index(text, labels)
    except models.ModelError as exc:
        raise UsageError(f"--target: {exc}") from None


def top_k(model: nn.Module, x: Tensor, labels: Sequence[str],
          k: int = 5) -> list[tuple[str, float]]:
    """The k most probable classes of `x` (one example) with their softmax probabilities."""
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    values, indices = probabilities.topk(min(k, probabilities.shape[0]))
    return [(labels[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def explain_image(model: nn.Module, name: str, image: Image.Image, method: str,
                  target: int | None, args: argparse.Namespace) -> Explained:
    """Top-5, the base method's map and its SmoothGrad, for one image."""
    from tqdm import tqdm

    x = loaded_model(model).preprocess(image)
    top5 = top_k(model, x, labels_of(model))
    started = time.perf_counter()
    plain = smooth(model, x, method=method, target=target, samples=1, noise=0.0).attribution
    total = args.max_samples if args.samples == "auto" else args.samples
    with tqdm(total=total, desc=f"{name} {method}", unit="sample", delay=1.0, leave=False,
              disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr) as bar:
        result = smooth(model, x, method=method, target=target, samples=args.samples,
                        noise=args.noise, stdev=args.stdev, aggregate=args.aggregate,
                        batch_size=args.batch_size, seed=args.seed, antithetic=args.antithetic,
                        tol=args.tol, max_samples=args.max_samples, progress=bar.update)
    return Explained(name, image, top5, method, plain, result, time.perf_counter() - started)


def method_figure(items: Sequence[Explained], args: argparse.Namespace) -> Any:
    """Input | base method | SmoothGrad + base method, one row per image (tutorial Fig. 4-5)."""
    style = {"activation": args.activation, "skew": args.skew, "percentile": args.percentile}
    rows = [viz.Row(centre_square(item.image),
                    [viz.process(item.plain[0], **style),
                     viz.process(item.smoothed.attribution[0], **style)],
                    f"{item.top5[0][0]} {item.top5[0][1]:.2f}") for item in items]
    title = TITLES[items[0].method]
    smoothed = {"mean": "SmoothGrad", "abs": "SmoothGrad |·|", "square": "SmoothGrad²",
                "var": "VarGrad"}[items[0].smoothed.aggregate]
    return viz.comparison_figure(rows, titles=("Input", title, f"{smoothed} +\n{title}"),
                                 colormap=args.colormap, activation=args.activation)


def centre_square(image: Image.Image, size: int = 224) -> Image.Image:
    """The centre crop ImageNet models see (7/8 of the shorter side), for display."""
    width, height = image.size
    side = int(min(width, height) * 224 / 256)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size))


def describe(item: Explained, target: int | None, labels: Sequence[str], *,
             predictions: bool = True) -> str:
    """The top-5 printout (unless `predictions` is False) and the smoothed map's uncertainty."""
    explained = int(item.smoothed.target[0]) if item.smoothed.target is not None else None
    lines = [f"{item.name}: top-5" if predictions else f"{item.name}:"]
    for rank, (label, probability) in enumerate(item.top5 if predictions else [], start=1):
        mark = "  <- explained" if explained is not None and labels[explained] == label else ""
        lines.append(f"  {rank}. {label:<28} {probability:6.3f}{mark}")
    if target is not None and labels[target] not in [label for label, _ in item.top5]:
        lines.append(f"  explaining --target {target} ({labels[target]})")
    result = item.smoothed
    flips = "" if result.flip_rate is None else f", flip rate {float(result.flip_rate[0]):.2f}"
    lines.append(f"  {item.method}: SmoothGrad ({result.aggregate}) over {result.samples} "
                 f"samples, σ={float(result.sigma[0]):.3g}, relative standard error "
                 f"{float(result.relative_error()[0]):.3f}{flips}, {item.seconds:.1f} s")
    return "\n".join(lines)


def unique_names(paths: Sequence[str]) -> list[str]:
    """File stems for output names, made unique (cat, cat-2, ...) when they collide."""
    names: list[str] = []
    for path in paths:
        stem = Path(path).stem or "image"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.append(name)
    return names


def save_array(array: Tensor, path: Path) -> Path:
    """Write a float32 .npy atomically (temporary file in the same folder, then rename)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, array.detach().cpu().float().numpy())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_text(text: str, path: Path) -> Path:
    """Write UTF-8 text atomically (temporary file in the same folder, then rename)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def check_output_file(path: Path | None, option: str) -> None:
    """Refuse an output file whose folder does not exist, before any computation."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option}: no such folder '{path.parent}'")


def loaded_model(model: nn.Module) -> Any:
    """`model` with the `preprocess` and `labels` that `models.load` attaches."""
    return model


def labels_of(model: nn.Module) -> list[str]:
    return list(loaded_model(model).labels)


def load_model(args: argparse.Namespace) -> nn.Module:
    """The model from --model/--weights/--device; figure options are checked first (cheap)."""
    if hasattr(args, "colormap"):
        viz.colorize(np.zeros((2, 2)), colormap=args.colormap, activation=args.activation)
    device = resolve_device(args.device)
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights: no such file '{args.weights}'")
    return models.load(args.model, weights=args.weights, device=device)


def say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


# ----------------------------------------------------------------------- commands


def run_explain(args: argparse.Namespace) -> int:
    """`smoothgrad explain`: everything is checked before anything is written."""
    loaded = [images.load(path) for path in args.images]
    model = load_model(args)
    target = resolve_target(args.target, labels_of(model))
    args.out.mkdir(parents=True, exist_ok=True)
    figures = [fmt for fmt in args.save if fmt != "npy"]
    for name, image in zip(unique_names(args.images), loaded, strict=True):
        item = explain_image(model, name, image, args.method, target, args)
        say(args, describe(item, target, labels_of(model)))
        stem = args.out / f"{name}_{args.method}"
        written = []
        if figures:
            written += viz.save(method_figure([item], args), stem, figures)
        if "npy" in args.save:
            written += [save_array(item.plain[0], stem.with_name(f"{stem.name}.npy")),
                        save_array(item.smoothed.attribution[0],
                                   stem.with_name(f"{stem.name}_smoothgrad.npy")),
                        save_array(item.smoothed.stderr[0],
                                   stem.with_name(f"{stem.name}_smoothgrad_stderr.npy"))]
        for path in written:
            say(args, f"  wrote {path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """`smoothgrad demo`: the tutorial's figures for the bundled photos."""
    model = load_model(args)
    samples = images.sample_images()
    loaded = {name: images.load(path) for name, path in samples.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    sigma = (f"σ={args.stdev}" if args.stdev is not None
             else f"σ={0.15 if args.noise is None else args.noise:.0%} of the input range")
    say(args, f"model {args.model}, {args.samples} samples, {sigma}, seed {args.seed}")
    for method in DEMO_METHODS:
        items = [explain_image(model, name, image, method, None, args)
                 for name, image in loaded.items()]
        for item in items:
            say(args, describe(item, None, labels_of(model),
                               predictions=method == DEMO_METHODS[0]))
        for path in viz.save(method_figure(items, args), args.out / method, ["png"]):
            say(args, f"wrote {path}: Input | {TITLES[method]} | SmoothGrad + {TITLES[method]} "
                      f"for {', '.join(loaded)}")
    return 0




def run_sweep(args: argparse.Namespace) -> int:
    """`smoothgrad sweep`: the paper's rows of maps over σ and over n, convergence, a table."""
    if args.reference_samples <= max(args.samples):
        raise UsageError(f"--reference-samples {args.reference_samples} must exceed the largest "
                         f"--samples ({max(args.samples)})")
    if args.aggregate == "var" and min(*args.samples, args.at_samples) < 2:
        raise UsageError("--aggregate var needs at least 2 samples per map")
    check_output_file(args.json, "--json")
    image = images.load(args.image)
    model = load_model(args)
    labels = labels_of(model)
    target = resolve_target(args.target, labels)
    args.out.mkdir(parents=True, exist_ok=True)
    name = unique_names([args.image])[0]
    x = loaded_model(model).preprocess(image)
    explained = top_k(model, x, labels, 1)[0][0] if target is None else labels[target]
    smoothed = f"{evaluation.SMOOTHING_NAMES[args.aggregate]} + {TITLES[args.method]}"
    say(args, f"{name}: {smoothed}, explaining {explained!r}")
    result = evaluation.sweep(
        model, x, method=args.method, noises=args.noise, samples=args.samples,
        at_noise=args.at_noise, at_samples=args.at_samples,
        reference_samples=args.reference_samples, target=target, steps=args.steps,
        seed=args.seed, aggregate=args.aggregate, antithetic=args.antithetic,
        batch_size=args.batch_size, log=lambda line: say(args, f"  {line}"))
    say(args, evaluation.format_table(result.rows, evaluation.SWEEP_COLUMNS))

    style = {"activation": args.activation, "skew": args.skew, "percentile": args.percentile}
    colors = {"colormap": args.colormap, "activation": args.activation}
    picture = centre_square(image)
    noise_row = viz.row_figure(
        [picture, *[viz.process(m, **style) for _, m in result.noise_maps]],
        ["Input", *[f"σ {noise:.0%}" for noise, _ in result.noise_maps]],
        suptitle=f"{smoothed}, {args.at_samples} samples, by noise level", **colors)
    samples_row = viz.row_figure(
        [picture, *[viz.process(m, **style) for _, m in result.sample_maps]],
        ["Input", *[f"n = {n}" for n, _ in result.sample_maps]],
        suptitle=f"{smoothed}, σ {args.at_noise:.0%}, by sample count", **colors)
    rows = [row for row in result.rows if row["row"] == "samples"]
    convergence = viz.convergence_figure(
        [row["samples"] for row in rows],
        {"map vs reference": [row["relative_l2"] for row in rows],
         "shown map vs reference": [row["processed_l2"] for row in rows],
         "‖stderr‖ / ‖map‖": [row["relative_error"] for row in rows]},
        title=f"{name}: {smoothed}\nreference: {args.reference_samples} samples, other seed")
    stem = f"{name}_{args.method}"
    written = [*viz.save(noise_row, args.out / f"{stem}_noise", args.save),
               *viz.save(samples_row, args.out / f"{stem}_samples", args.save),
               *viz.save(convergence, args.out / f"{stem}_convergence", args.save),
               save_text(evaluation.to_csv(result.rows, list(evaluation.SWEEP_COLUMNS)),
                         args.out / f"{stem}_sweep.csv")]
    if args.json is not None:
        settings = {"image": args.image, "model": args.model, "method": args.method,
                    "aggregate": args.aggregate, "target": explained, "seed": args.seed,
                    "at_noise": args.at_noise, "at_samples": args.at_samples,
                    "reference_samples": args.reference_samples, "steps": args.steps}
        written.append(save_text(evaluation.to_json(settings, result.rows), args.json))
    for path in written:
        say(args, f"wrote {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """`smoothgrad evaluate`: the metric table, plain and smoothed, for every image."""
    if "var" in args.aggregates and args.samples == 1:
        raise UsageError("--aggregates var needs --samples >= 2")
    check_output_file(args.json, "--json")
    check_output_file(args.csv, "--csv")
    loaded = [images.load(path) for path in args.images]
    model = load_model(args)
    labels = labels_of(model)
    target = resolve_target(args.target, labels)
    rows: list[dict[str, Any]] = []
    for name, image in zip(unique_names(args.images), loaded, strict=True):
        x = loaded_model(model).preprocess(image)
        explained = top_k(model, x, labels, 1)[0][0] if target is None else labels[target]
        say(args, f"{name}: explaining {explained!r}")
        rows += evaluation.evaluate(
            model, x, methods=args.methods, aggregates=args.aggregates, metrics=args.metrics,
            target=target, names=[name], steps=args.steps, samples=args.samples,
            noise=args.noise, stdev=args.stdev, seed=args.seed, antithetic=args.antithetic,
            batch_size=args.batch_size, tol=args.tol, max_samples=args.max_samples,
            log=lambda line: say(args, f"  {line}"))
    say(args, evaluation.format_table(rows))
    written = []
    if args.csv is not None:
        written.append(save_text(evaluation.to_csv(rows), args.csv))
    if args.json is not None:
        settings = {"images": args.images, "model": args.model, "samples": args.samples,
                    "noise": args.noise, "stdev": args.stdev, "seed": args.seed,
                    "antithetic": args.antithetic, "steps": args.steps, "metrics": args.metrics}
        written.append(save_text(evaluation.to_json(settings, rows), args.json))
    for path in written:
        say(args, f"wrote {path}")
    return 0
