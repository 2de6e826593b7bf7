"""`smoothgrad batch`: explain every image of a folder, list or glob; resumable, multi-GPU.

The work is :func:`smoothgrad.batch.run`; this module turns the options into a
:class:`smoothgrad.batch.Job`.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from smoothgrad import batch
from smoothgrad.cli.common import check_output_folder, say
from smoothgrad.cli.options import (
    add_figure_options,
    add_method_option,
    add_model_options,
    add_smoothing_options,
    add_target_option,
    batch_size_arg,
    non_negative_int,
    positive_int,
    smoothing,
    style,
)
from smoothgrad.cli.parser import subcommand

__all__ = ["add", "job", "run"]

EPILOG = """examples:
  smoothgrad batch photos/ --out maps/                    # rerun the same line to resume
  smoothgrad batch val.txt --out maps/ --dtype float16 --figures
  smoothgrad batch "imagenet/val/**/*.JPEG" --out maps/ --samples 20 --device cuda
  torchrun --standalone --nproc-per-node 8 -m smoothgrad batch photos/ --out maps/ \\
      --device cuda
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
      -m smoothgrad batch photos/ --out /shared/maps/ --device cuda

outputs: DIR/arrays/KEY.npy (KEY: the path inside a folder INPUT, else the absolute path without
  its leading /; a rerun keeps the keys of the run in DIR, so a glob of the folder resumes
  it), DIR/stderr/KEY.npy (standard errors), DIR/figures/KEY.png with --figures (add
  it to a finished run to draw them from the arrays), DIR/index.csv, DIR/run.json (options
  checked on rerun), DIR/records/KEY.json (finished marks). --batch-size auto is the device's
  fixed default here (8 rows on CPU, 64 on CUDA), not the timing-based tuning, so reruns are exact.

exit code: 0 all explained, 1 some images failed (listed in DIR/index.csv), 2 bad usage
"""


def add(commands: Any) -> None:
    """Add the `batch` subcommand to the `smoothgrad` subparsers `commands`."""
    parser = subcommand(
        commands, "batch",
        help="explain every image of a folder, list or glob: resumable, multi-GPU",
        description=(batch.__doc__ or "").split("\n\n")[0], epilog=EPILOG)
    parser.add_argument("input", metavar="INPUT",
                        help="a folder (recursive), a text file of image paths, or a glob")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (rerun the same command to resume)")
    add_model_options(parser)
    add_method_option(parser)
    add_smoothing_options(parser)
    add_target_option(parser)
    parser.add_argument("--dtype", choices=batch.DTYPES, default="float32",
                        help="attribution arrays' type; float16 halves the size "
                             "(default: float32)")
    parser.add_argument("--figures", action="store_true",
                        help="also write each map as a PNG under DIR/figures")
    parser.add_argument("--images-per-batch", type=batch_size_arg, default="auto",
                        metavar="N|auto",
                        help="images whose noisy copies share passes (default auto: "
                             "batch size // samples, at least 1; 1 with --samples auto)")
    parser.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                        help="image-decoding processes per rank (default: up to 4, "
                             "by CPUs per rank; 0 decodes in the main process)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch's CPU threads per process, recorded in DIR/run.json "
                             "(default: the recorded count when resuming, else torch's: the "
                             "CPU count, 1 under torchrun); maps are identical bit for bit "
                             "for the same count, whatever the number of processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="if DIR holds a run with other options, discard it and start over")
    add_figure_options(parser)
    parser.set_defaults(run=run)


def job(args: argparse.Namespace) -> batch.Job:
    """The batch job the options describe (checked: a bad option fails here)."""
    shown = style(args)
    return batch.Job(
        input=args.input, out=args.out, smoothing=smoothing(args), model=args.model,
        weights=args.weights, device=args.device, target=args.target, dtype=args.dtype,
        figures=shown if args.figures else None, images_per_batch=args.images_per_batch,
        workers=args.workers, threads=args.threads, overwrite=args.overwrite,
        progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    """`smoothgrad batch`; returns the exit code (0 ok, 1 some images failed, 2 bad usage)."""
    todo = job(args)
    check_output_folder(args.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if args.quiet else "always", batch.RunWarning)
        summary = batch.run(todo)
    if summary.text:
        say(args, summary.text)
    return summary.code
