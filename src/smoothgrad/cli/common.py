"""What several commands share: the model from the options, output names, printing.

Example:
    >>> unique_names(["a/cat.jpg", "b/cat.png", "dog.jpg"])
    ['cat', 'cat-2', 'dog']
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smoothgrad import evaluation, models
from smoothgrad.cli.parser import UsageError
from smoothgrad.files import csv_text, write_atomically

__all__ = ["DEMO_METHODS", "check_output_file", "load_model", "progress_bars", "say",
           "target_of", "unique_names", "write_tables"]

DEMO_METHODS = ("gradient", "guided_backprop")


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


def check_output_file(path: Path | None, option: str, out: Path | None = None) -> None:
    """Refuse an output file whose folder does not exist (and is not the output folder
    `out`, which the command creates), before any computation."""
    if path is None or path.parent.is_dir():
        return
    if out is not None and os.path.abspath(path.parent) == os.path.abspath(out):
        return
    raise UsageError(f"{option}: no such folder '{path.parent}'")


def load_model(args: argparse.Namespace) -> models.LoadedModel:
    """The model from --model/--weights/--device."""
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights: no such file '{args.weights}'")
    return models.load(args.model, weights=args.weights, device=args.device)


def target_of(args: argparse.Namespace, model: models.LoadedModel) -> int | None:
    """--target as a class index of `model` (a number or a label), None for the prediction."""
    if args.target is None:
        return None
    try:
        return model.class_index(args.target)
    except models.ModelError as exc:
        raise UsageError(f"--{exc}") from None


def say(args: argparse.Namespace, text: str) -> None:
    """Print `text` unless --quiet. A closed stdout (``smoothgrad ... | head -1``) is not an
    error: the rest of the output is dropped and the work goes on."""
    if args.quiet:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # later writes and the exit flush go here
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def progress_bars(args: argparse.Namespace) -> evaluation.Progress | None:
    """A progress bar per task of `evaluate` or `sweep` (on a terminal, unless --quiet)."""
    if args.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def update(task: str, done: int, total: int) -> None:
        if task not in bars:
            for bar in bars.values():
                bar.close()
            bars.clear()
            bars[task] = tqdm(total=total, desc=f"  {task}", delay=1.0, leave=False,
                              file=sys.stderr)
        bars[task].update(done - bars[task].n)
        if done >= total:
            bars.pop(task).close()

    return update


def write_tables(rows: Sequence[dict[str, Any]], columns: Sequence[str], csv: Path | None,
                 json: Path | None, settings: Mapping[str, Any]) -> list[Path]:
    """A metric table as CSV (`columns`) and as JSON with its `settings`, where asked for."""
    written = []
    if csv is not None:
        written.append(write_atomically(csv, csv_text(rows, columns)))
    if json is not None:
        written.append(write_atomically(json, evaluation.to_json(settings, rows)))
    return written
