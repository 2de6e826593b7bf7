"""What several commands share: the model from the options, output names, printing.

Example:
    >>> unique_names(["a/cat.jpg", "b/cat.png", "dog.jpg"])
    ['cat', 'cat-2', 'dog']
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smoothgrad import evaluation, models
from smoothgrad.cli.parser import UsageError
from smoothgrad.files import csv_text, one_line, write_atomically

__all__ = ["DEMO_METHODS", "check_output_file", "check_output_folder", "load_model",
           "progress_bars", "say", "target_of", "unique_names", "write_tables"]

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


def check_output_folder(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that exists as a file or cannot be created
    or written into (a read-only folder or file system, /proc/...): one line naming `option`.

    The folder is really tried — its missing parents created and a file written in it —
    and everything the try made is removed again.
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: '{path}' exists and is not a folder")
    made: list[Path] = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        descriptor, probe = tempfile.mkstemp(dir=path, prefix=".smoothgrad-probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or one_line(exc)
        raise UsageError(f"{option}: cannot write into '{path}': {reason}") from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_output_file(path: Path | None, option: str, out: Path | None = None) -> None:
    """Refuse, before any work, an output file that is a folder or whose folder does not
    exist (unless it is the output folder `out`, which the command creates) or cannot be
    written into."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option}: '{path}' is a folder, not a file")
    folder = path.parent
    if out is not None and os.path.abspath(folder) == os.path.abspath(out):
        check_output_folder(out, "--out")
        return
    if not folder.is_dir():
        raise UsageError(f"{option}: no such folder '{folder}'")
    check_output_folder(folder, option)


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
    error: `main` runs every command with survivable streams (`streams.survivable`)."""
    if not args.quiet:
        print(text, flush=True)


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
