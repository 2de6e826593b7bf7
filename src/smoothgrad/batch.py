"""`smoothgrad batch`: explain a whole dataset, resumably, on one process or many (torchrun).

Example:
    $ smoothgrad batch photos/ --out maps/ --samples 50
    $ torchrun --standalone --nproc-per-node 4 -m smoothgrad batch photos/ --out maps/

INPUT is a folder (searched recursively for image files; names starting with "." are
skipped), a text file with one image path a line (relative paths are relative to the
list's folder; blank lines and lines starting with "#" are skipped), a glob
(``"data/**/*.JPEG"``, quoted) or a single image.

Output layout, for an input whose key is ``a/b.jpg``::

    DIR/run.json              the options that determine the outputs (checked on rerun)
    DIR/arrays/a/b.jpg.npy    the attribution, (C, H, W) float32 (or --dtype float16)
    DIR/figures/a/b.jpg.png   with --figures: the map as a colour image
    DIR/records/a/b.jpg.json  written last: marks the image finished (or failed)
    DIR/index.csv             one row per input, sorted by key: path, array, status,
                              target, label, probability, samples, flip_rate, error

The key is the path relative to INPUT for a folder, and the absolute path without its
leading "/" for lists, globs and single images (``../x.jpg`` run from ``/home/me`` is
``home/x.jpg``). Keys are normalised paths of distinct files, so two inputs never share
an output and no output lies outside DIR; the one remaining clash (a folder named like
another input's output, ``x.npy/`` beside ``x``) is detected and recorded as a failure.

Resume. Every file is written to a temporary sibling, fsynced and renamed, and an image's
record is written after its array and figure, so a kill at any moment leaves each image
either finished (record present) or not. A rerun skips finished images, retries failed
ones, removes leftover temporary files and rewrites the index; ``run.json`` must match
the new options that change what the outputs mean (model and a hash of its weights,
method, samples, noise, aggregate, seed, antithetic, target, dtype, figure settings), or
the run is refused (exit 2) unless ``--overwrite``, which discards DIR's outputs and starts
over. Settings that only change the float rounding (device, threads, batch size, images
per batch, torch version) give a warning instead.

Exactness. Noise of sample k depends only on (seed, k, shape), but measured on this
project's CPU the *same* image gives different last bits when the pass it is in has a
different number of rows (EfficientNet-Lite0, 1 thread: 8 vs 16 rows differ by 1e-4) or
the process a different number of threads; which other images share a pass of the same
size did not matter. So batches are fixed by the data, not by the run: the sorted inputs
are cut into groups of ``--images-per-batch`` consecutive images once, every group is
explained as one ``smooth`` call (whatever rank runs it, and also when only some of its
images are left to redo after a kill), and ``--batch-size auto`` means the fixed
``default_batch_size(device)`` here rather than the engine's timing-based tuning. With
the same threads per process (torchrun sets ``OMP_NUM_THREADS=1``), outputs are then
identical bit for bit for any number of ranks and any kill-and-resume history.

Several processes. Under ``torchrun`` (RANK/WORLD_SIZE in the environment) each rank
takes every WORLD_SIZE-th group of the unfinished ones, runs on its own device
(``cuda:LOCAL_RANK`` with NCCL, else the CPU with gloo), and writes only its images'
files; rank 0 checks ``run.json`` and the finished images first and merges the index
after all ranks are done. DIR must be on a file system every rank sees.

Exit code: 0 when every image is explained, 1 when some failed (see the index), 2 for
bad usage (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

import smoothgrad
from smoothgrad import images, models, viz
from smoothgrad.cli import (
    UsageError,
    add_figure_options,
    add_method_option,
    add_model_options,
    add_smoothing_options,
    add_target_option,
    batch_size_arg,
    non_negative_int,
    resolve_device,
    resolve_target,
)
from smoothgrad.engine import default_batch_size, smooth

__all__ = [
    "IMAGE_SUFFIXES",
    "INDEX_COLUMNS",
    "Source",
    "add_command",
    "collect",
    "images_per_batch",
    "output_clashes",
    "run",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif",
                            ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
"""File name endings (any case) taken as images when searching a folder or a glob."""

INDEX_COLUMNS = ("path", "array", "status", "target", "label", "probability", "samples",
                 "flip_rate", "error")
SUFFIXES = {"arrays": ".npy", "figures": ".png", "records": ".json"}
MANIFEST, INDEX, LOCK = "run.json", "index.csv", ".smoothgrad.lock"
FORMAT = 1
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
_TRASH = ".smoothgrad-trash-"


# ------------------------------------------------------------------------- command line


def add_command(commands: Any) -> None:
    """Add the `batch` subcommand to the `smoothgrad` subparsers `commands`."""
    parser = commands.add_parser(
        "batch", help="explain every image of a folder, list or glob: resumable, multi-GPU",
        description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT",
                        help="a folder (recursive), a text file of image paths, or a glob")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (rerun the same command to resume)")
    add_model_options(parser)
    add_method_option(parser)
    add_smoothing_options(parser)
    add_target_option(parser)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
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
    parser.add_argument("--overwrite", action="store_true",
                        help="if DIR holds a run with other options, discard it and start over")
    add_figure_options(parser)
    parser.set_defaults(run=run)


EPILOG = """examples:
  smoothgrad batch photos/ --out maps/                    # rerun the same line to resume
  smoothgrad batch val.txt --out maps/ --dtype float16 --figures
  smoothgrad batch "imagenet/val/**/*.JPEG" --out maps/ --samples 20 --device cuda
  torchrun --standalone --nproc-per-node 8 -m smoothgrad batch photos/ --out maps/ \\
      --device cuda
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
      -m smoothgrad batch photos/ --out /shared/maps/ --device cuda

outputs: DIR/arrays/KEY.npy (KEY: the path inside a folder INPUT, else the absolute path without
  its leading /), DIR/figures/KEY.png with --figures, DIR/index.csv, DIR/run.json (options checked
  on rerun), DIR/records/KEY.json (finished marks). --batch-size auto is the device's fixed default
  here (8 rows on CPU, 64 on CUDA), not the timing-based tuning, so reruns are exact.

exit code: 0 all explained, 1 some images failed (listed in DIR/index.csv), 2 bad usage
"""


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, order=True)
class Source:
    """One input image: its output key (relative POSIX path) and its absolute path."""

    key: str
    path: str

    def output(self, out: Path, tree: str) -> Path:
        """Where this image's file of `tree` ("arrays", "figures", "records") goes in `out`."""
        return out / tree / f"{self.key}{SUFFIXES[tree]}"


def collect(spec: str, out: Path | None = None) -> list[Source]:
    """The images named by INPUT `spec`, sorted by key, without duplicates.

    A folder is searched recursively for IMAGE_SUFFIXES files (skipping names that start
    with "." and the folder `out`); keys are paths relative to it. A file with an image
    suffix is one image; any other file is a list of paths; anything else is a glob
    (matches are filtered to IMAGE_SUFFIXES files). Those three are keyed by their absolute
    path without the anchor. Raises UsageError when nothing is found.

    Example:
        >>> from smoothgrad import images
        >>> source, = collect(f"{images.sample_path('chelsea').parent}/../data/./chelsea.jpg")
        >>> source.key.endswith("smoothgrad/data/chelsea.jpg"), ".." in source.key
        (True, False)
    """
    path = Path(spec)
    if path.is_dir():
        found = _walk(path, out)
    elif path.is_file():
        found = [_absolute(spec)] if _is_image_name(spec) else _read_list(path)
    elif any(char in spec for char in "*?["):
        import glob

        found = [_absolute(match) for match in glob.glob(spec, recursive=True)
                 if _is_image_name(match) and os.path.isfile(match)]
    else:
        raise UsageError(f"INPUT '{spec}': no such folder, file or glob matches")
    unique = sorted(set(found))
    if not unique:
        raise UsageError(f"INPUT '{spec}': no image files found")
    return unique


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(root: Path, out: Path | None) -> list[Source]:
    skip = os.path.realpath(out) if out is not None else None
    base = os.path.abspath(root)
    found = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) != skip)
        for name in files:
            if not name.startswith(".") and _is_image_name(name):
                full = os.path.join(folder, name)
                key = PurePath(os.path.relpath(full, base)).as_posix()
                found.append(Source(key, full))
    return found


def _absolute(path: str) -> Source:
    full = os.path.abspath(path)
    pure = PurePath(full)
    parts = list(pure.parts[1:])
    if pure.drive:  # Windows: C:\x\y.jpg -> C/x/y.jpg
        parts.insert(0, re.sub(r"[^A-Za-z0-9]+", "_", pure.drive).strip("_") or "drive")
    return Source("/".join(parts), full)


def _read_list(path: Path) -> list[Source]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"INPUT '{path}' is not a folder, an image file name or a UTF-8 "
                         "list of paths") from None
    base = path.parent
    found = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            found.append(_absolute(os.path.join(base, entry)))
    return found


def output_clashes(sources: Sequence[Source]) -> dict[str, str]:
    """Keys whose output folder is another input's output file (``x.npy/`` beside ``x``).

    Example:
        >>> output_clashes([Source("x", "/x"), Source("x.npy/y.jpg", "/x.npy/y.jpg")])
        {'x.npy/y.jpg': "output folder 'x.npy' is the array of input '/x'"}
    """
    files = {f"{s.key}{suffix}": s for s in sources for suffix in SUFFIXES.values()}
    clashes = {}
    for source in sources:
        parent = PurePath(source.key).parent
        for folder in (parent, *parent.parents):
            other = files.get(folder.as_posix())
            if other is not None:
                clashes[source.key] = (f"output folder '{folder.as_posix()}' is the "
                                       f"{_tree_of(folder.as_posix(), other)} of input "
                                       f"'{other.path}'")
                break
    return clashes


def _tree_of(name: str, source: Source) -> str:
    suffix = name[len(source.key):]
    return {".npy": "array", ".png": "figure", ".json": "record"}[suffix]


# ---------------------------------------------------------------------------- processes


class World:
    """This process's place among the torchrun ranks (one process alone: rank 0 of 1)."""

    def __init__(self, device: torch.device) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.device = device
        if device.type == "cuda" and self.size > 1:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.size > 1:
            import torch.distributed as dist

            # long: ranks that finish early wait here for the slowest; torchrun stops every
            # rank when one fails, so nothing hangs on a dead peer
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=timedelta(hours=24))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (waits for all of them)."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class Lock:
    """DIR/.smoothgrad.lock, held shared by every rank of a run until it exits.

    A new run's rank 0 must get it exclusively before it touches DIR, so a rerun refuses to
    start while any rank of another run is alive (e.g. the ranks of a `kill -9`ed torchrun,
    which starts them in their own sessions, so they outlive it). Where the file system has
    no locks, nothing is checked.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.file: Any = None

    def take(self, *, exclusive: bool) -> bool:
        """Lock (exclusive: without waiting); False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows
            return True
        if self.file is None:
            self.file = open(self.path, "a")  # noqa: SIM115  (held until the process ends)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            return False
        except OSError:  # no locks on this file system
            return True
        return True

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ----------------------------------------------------------------------------- manifest


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, types, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _model_spec(spec: str) -> str:
    where, colon, attr = spec.rpartition(":")
    if colon and (where.endswith(".py") or "/" in where or "\\" in where):
        return f"{os.path.abspath(where)}:{attr}"
    return spec


def images_per_batch(requested: int | str, rows: int, samples: int | str) -> int:
    """Images explained together: `requested`, or (auto) as many as fill one pass.

    Example:
        >>> images_per_batch("auto", 64, 10), images_per_batch("auto", 8, 50)
        (6, 1)
    """
    if samples == "auto":
        return 1  # adaptive n stops when all images of a call converge: keep them apart
    if isinstance(requested, int):
        return requested
    return max(1, rows // int(samples))


@dataclass
class Settings:
    """What a batch run computes; `options` must match on resume, `numerics` only warn."""

    options: dict[str, Any]
    numerics: dict[str, Any]
    rows: int
    group: int
    target: int | None

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "options": self.options, "numerics": self.numerics}


def settings(args: argparse.Namespace, model: nn.Module, device: torch.device,
             target: int | None) -> Settings:
    rows = default_batch_size(device) if args.batch_size == "auto" else int(args.batch_size)
    group = images_per_batch(args.images_per_batch, rows, args.samples)
    options: dict[str, Any] = {
        "model": _model_spec(args.model),
        "model_sha256": model_fingerprint(model),
        "method": args.method,
        "samples": args.samples,
        "noise": (0.15 if args.noise is None else args.noise) if args.stdev is None else None,
        "stdev": args.stdev,
        "aggregate": args.aggregate,
        "seed": args.seed,
        "antithetic": args.antithetic,
        "target": target,
        "dtype": args.dtype,
        "figures": ({"activation": args.activation, "skew": args.skew,
                     "percentile": args.percentile, "colormap": args.colormap}
                    if args.figures else None),
    }
    if args.samples == "auto":
        options.update(tol=args.tol, max_samples=args.max_samples)
    numerics = {"device": device.type, "batch_size": rows, "images_per_batch": group,
                "threads": torch.get_num_threads() if device.type == "cpu" else None,
                "torch": torch.__version__, "smoothgrad": smoothgrad.__version__}
    return Settings(options, numerics, rows, group, target)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{name} {old.get(name)!r} -> {new.get(name)!r}"
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        text = (out / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("options"), dict):
            raise ValueError
    except ValueError:
        raise UsageError(f"'{out / MANIFEST}' is not a smoothgrad batch manifest; "
                         "use another --out, or --overwrite to start over") from None
    return manifest


def _discard(out: Path) -> None:
    """Move this command's outputs into a trash folder (one rename each), then delete it."""
    trash = out / f"{_TRASH}{secrets.token_hex(4)}"
    trash.mkdir()
    for name in (*SUFFIXES, INDEX):
        if (out / name).exists():
            os.replace(out / name, trash / name)
    _sync_folder(out)
    shutil.rmtree(trash, ignore_errors=True)


def _clean(out: Path) -> int:
    """Delete temporary files and trash left by killed runs; returns how many went."""
    removed = 0
    for entry in out.iterdir():
        if entry.name.startswith(_TRASH):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        elif _TEMPORARY.match(entry.name):
            entry.unlink(missing_ok=True)
            removed += 1
    for tree in SUFFIXES:
        for folder, _, files in os.walk(out / tree):
            for name in files:
                if _TEMPORARY.match(name):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
    return removed


# ------------------------------------------------------------------------------- writing


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling: write, fsync, rename, fsync folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every OS or file system can fsync a folder
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _read_record(source: Source, out: Path, figures: bool) -> dict[str, Any] | None:
    """The finished record of `source`, or None when it must be (re)done."""
    try:
        record = json.loads(source.output(out, "records").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("path") != source.path:
        return None  # another input once had this key (another INPUT, same DIR)
    if record.get("status") == "ok":
        if not source.output(out, "arrays").is_file():
            return None
        if figures and not source.output(out, "figures").is_file():
            return None
    return record


def write_index(out: Path, records: Sequence[dict[str, Any]]) -> Path:
    """DIR/index.csv from the records, one row each, in the given order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for record in records:
        writer.writerow(["" if record.get(column) is None else _cell(record[column])
                         for column in INDEX_COLUMNS])
    path = out / INDEX
    write_atomically(path, buffer.getvalue().encode())
    return path


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------ loading


class Decoded(NamedTuple):
    """One image from the loader: its index in the run, and a tensor/picture or an error."""

    position: int
    data: Any
    error: str | None


class _Images(torch.utils.data.Dataset[Decoded]):
    """Decodes (and on CPU preprocesses) images in DataLoader workers; errors are returned."""

    def __init__(self, sources: Sequence[Source], preprocess: Callable[[Image.Image], Tensor]
                 | None, errors: dict[int, str]) -> None:
        self.sources, self.preprocess, self.errors = sources, preprocess, errors

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Decoded:
        if index in self.errors:
            return Decoded(index, None, self.errors[index])
        try:
            image = images.load(self.sources[index].path)
            return Decoded(index, image if self.preprocess is None else self.preprocess(image),
                           None)
        except Exception as exc:  # a bad image or the user's preprocess: recorded, not fatal
            return Decoded(index, None, _one_line(exc))


def _as_list(batch: list[Decoded]) -> list[Decoded]:
    return batch


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if isinstance(exc, images.ImageError | models.ModelError):
        return line
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _workers(requested: int | None, local_size: int) -> int:
    if requested is not None:
        return requested
    return max(1, min(4, (os.cpu_count() or 1) // max(1, local_size)))


def _loader(sources: Sequence[Source], groups: list[list[int]], errors: dict[int, str],
            preprocess: Callable[[Image.Image], Tensor], device: torch.device,
            workers: int) -> Iterator[list[Decoded]]:
    fork = "fork" in multiprocessing.get_all_start_methods()
    # workers preprocess only on CPU with fork: model.preprocess moves tensors to the model's
    # device (no CUDA in forked workers) and is a closure (cannot be sent to spawned ones)
    in_worker = workers == 0 or (fork and device.type == "cpu")
    dataset = _Images(sources, preprocess if in_worker else None, errors)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=groups, collate_fn=_as_list, num_workers=workers,
        multiprocessing_context=("fork" if fork else "spawn") if workers else None)
    for batch in loader:
        if not in_worker:
            batch = [item if item.error else _preprocess_here(item, preprocess)
                     for item in batch]
        yield batch


def _preprocess_here(item: Decoded, preprocess: Callable[[Image.Image], Tensor]) -> Decoded:
    try:
        return Decoded(item.position, preprocess(item.data), None)
    except Exception as exc:
        return Decoded(item.position, None, _one_line(exc))


# ---------------------------------------------------------------------------- explaining


@dataclass
class Explained:
    """One image's attribution and the numbers of its index row."""

    attribution: Tensor
    target: int
    probability: float
    samples: int
    flip_rate: float


def explain_group(model: nn.Module, xs: Sequence[Tensor], args: argparse.Namespace,
                  conf: Settings) -> list[Explained]:
    """Explain images (1, C, H, W) of one shape as one `smooth` call, in order."""
    x = torch.cat(list(xs))
    with torch.no_grad():
        probabilities = model(x).float().softmax(dim=1)
    target = (probabilities.argmax(dim=1) if conf.target is None
              else torch.full((x.shape[0],), conf.target, device=x.device))
    result = smooth(model, x, method=args.method, target=target, samples=args.samples,
                    noise=args.noise, stdev=args.stdev, aggregate=args.aggregate,
                    batch_size=conf.rows, seed=args.seed, antithetic=args.antithetic,
                    tol=args.tol, max_samples=args.max_samples)
    flips = result.flip_rate
    return [Explained(result.attribution[i], int(target[i]),
                      float(probabilities[i, target[i]]), result.samples,
                      float(flips[i]) if flips is not None else math.nan)
            for i in range(x.shape[0])]


def _by_shape(items: Sequence[Decoded]) -> list[list[Decoded]]:
    shapes: dict[tuple[int, ...], list[Decoded]] = {}
    for item in items:
        shapes.setdefault(tuple(item.data.shape), []).append(item)
    return list(shapes.values())


def _save(source: Source, out: Path, done: Explained, args: argparse.Namespace,
          labels: Sequence[str]) -> dict[str, Any]:
    array = done.attribution.detach().cpu().numpy().astype(args.dtype)
    write_atomically(source.output(out, "arrays"), _npy_bytes(array))
    if args.figures:
        shown = viz.process(done.attribution.detach().cpu().float(), activation=args.activation,
                            percentile=args.percentile, skew=args.skew)
        picture = Image.fromarray(viz.colorize(shown, colormap=args.colormap,
                                               activation=args.activation))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        write_atomically(source.output(out, "figures"), buffer.getvalue())
    record = {"path": source.path, "key": source.key, "status": "ok",
              "array": source.output(Path(), "arrays").as_posix(), "target": done.target,
              "label": labels[done.target] if 0 <= done.target < len(labels) else "",
              "probability": done.probability, "samples": done.samples,
              "flip_rate": None if math.isnan(done.flip_rate) else done.flip_rate,
              "error": None}
    write_atomically(source.output(out, "records"), _json_bytes(record))
    return record


def _fail(source: Source, out: Path, error: str) -> dict[str, Any]:
    record = {"path": source.path, "key": source.key, "status": "failed", "array": None,
              "target": None, "label": None, "probability": None, "samples": None,
              "flip_rate": None, "error": error}
    with contextlib.suppress(OSError):
        write_atomically(source.output(out, "records"), _json_bytes(record))
    return record


# ------------------------------------------------------------------------------ the run


@dataclass
class Plan:
    """Rank 0's decisions, sent to every rank."""

    sources: list[Source] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def prepare(out: Path, conf: Settings, sources: list[Source], overwrite: bool,
            lock: Lock) -> Plan:
    """Lock DIR, check or write run.json, clean up after killed runs, find the unfinished
    images; DIR stays locked (shared) for the run."""
    manifest = conf.manifest()
    warnings: list[str] = []
    out.mkdir(parents=True, exist_ok=True)
    if not lock.take(exclusive=True):
        raise UsageError(f"--out '{out}' is in use by another smoothgrad batch run (or the "
                         "ranks of a killed torchrun, which outlive it): stop it first")
    try:
        plan = _prepare(out, conf, sources, overwrite, manifest, warnings)
    finally:
        lock.take(exclusive=False)
    return plan


def _prepare(out: Path, conf: Settings, sources: list[Source], overwrite: bool,
             manifest: dict[str, Any], warnings: list[str]) -> Plan:
    old = _read_manifest(out)
    if old is None:
        leftovers = [name for name in (*SUFFIXES, INDEX) if (out / name).exists()]
        if leftovers and not overwrite:
            raise UsageError(f"--out '{out}' holds {', '.join(leftovers)} but no {MANIFEST}; "
                             "use another --out, or --overwrite to replace them")
        if leftovers:
            _discard(out)
        write_atomically(out / MANIFEST, _json_bytes(manifest))
    elif old["options"] != conf.options:
        changes = _differences(old["options"], conf.options)
        if not overwrite:
            raise UsageError(f"--out '{out}' holds a run with other options "
                             f"({'; '.join(changes)}); rerun with its options to resume, "
                             "or add --overwrite to discard it")
        _discard(out)  # records go before the new manifest: no old record is ever trusted
        write_atomically(out / MANIFEST, _json_bytes(manifest))
        warnings.append(f"--overwrite: discarded the earlier run in '{out}' "
                        f"({'; '.join(changes)})")
    else:
        changes = _differences(old.get("numerics", {}), conf.numerics)
        if changes:
            warnings.append(f"resuming with other numerics ({'; '.join(changes)}): the images "
                            "explained now may differ from the earlier ones in the last bits")
    _clean(out)
    clashes = output_clashes(sources)
    figures = conf.options["figures"] is not None
    todo = []
    for i, source in enumerate(sources):
        record = None if source.key in clashes else _read_record(source, out, figures)
        if record is None or record.get("status") != "ok":
            todo.append(i)  # unfinished, or failed: failed images are retried
    errors = {i: clashes[sources[i].key] for i in todo if sources[i].key in clashes}
    return Plan(sources, todo, errors, warnings)


def groups_for(todo: Sequence[int], count: int, size: int, rank: int,
               world: int) -> list[list[int]]:
    """This rank's groups: inputs cut into runs of `size`, those with unfinished images,
    every `world`-th starting at `rank`.

    Example:
        >>> groups_for([0, 1, 4, 5, 6], 7, 2, 0, 2), groups_for([0, 1, 4, 5, 6], 7, 2, 1, 2)
        ([[0, 1], [6]], [[4, 5]])
    """
    left = set(todo)
    groups = [list(range(start, min(start + size, count))) for start in range(0, count, size)]
    return [g for g in groups if left.intersection(g)][rank::world]


def run(args: argparse.Namespace) -> int:
    """`smoothgrad batch`; returns the exit code (0 ok, 1 some images failed, 2 bad usage)."""
    started = time.perf_counter()
    viz.colorize(np.zeros((2, 2)), colormap=args.colormap, activation=args.activation)
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights: no such file '{args.weights}'")
    world = World(resolve_device(args.device))
    lock = Lock(args.out)
    try:
        return _run(args, world, lock, started)
    except UsageError:
        if world.rank == 0:
            raise
        return 2  # rank 0 says it
    finally:
        lock.release()
        world.close()


def _run(args: argparse.Namespace, world: World, lock: Lock, started: float) -> int:
    out: Path = args.out
    device = world.device
    if device.type == "cuda":  # same algorithms every run, for exact resume
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    found: list[Source] | str = []
    if world.rank == 0:
        try:
            found = collect(args.input, out)
        except UsageError as exc:
            found = str(exc)
    found = world.broadcast(found)
    if isinstance(found, str):
        raise UsageError(found)
    model = models.load(args.model, weights=args.weights, device=device)
    labels: list[str] = list(getattr(model, "labels", []))
    conf = settings(args, model, device, resolve_target(args.target, labels))
    plan = Plan()
    if world.rank == 0:
        try:
            plan = prepare(out, conf, found, args.overwrite, lock)
        except (UsageError, OSError) as exc:
            plan = Plan(error=_one_line(exc) if isinstance(exc, OSError) else str(exc))
    plan = world.broadcast(plan)
    if plan.error is not None:
        raise UsageError(plan.error)
    if world.rank != 0:
        lock.take(exclusive=False)
    if world.rank == 0 and not args.quiet:
        for warning in plan.warnings:
            print(f"smoothgrad: warning: {warning}", file=sys.stderr)
    sources = plan.sources
    todo = set(plan.todo)
    groups = groups_for(plan.todo, len(sources), conf.group, world.rank, world.size)
    mine = sum(len(todo.intersection(g)) for g in groups)
    begun = time.perf_counter()
    explained = samples = 0
    from tqdm import tqdm

    with tqdm(total=mine, unit="img", desc="smoothgrad batch", dynamic_ncols=True,
              disable=args.quiet or world.rank != 0 or not sys.stderr.isatty(),
              file=sys.stderr) as bar:
        preprocess: Callable[[Image.Image], Tensor] = cast(Any, model).preprocess
        loader = _loader(sources, groups, plan.errors, preprocess, device,
                         _workers(args.workers, world.local_size)) if groups else iter([])
        for batch in loader:
            records = _explain_batch(model, batch, sources, todo, out, args, conf, labels)
            explained += sum(r["status"] == "ok" for r in records)
            samples += sum(r["samples"] or 0 for r in records)
            bar.update(len(records))
            seconds = time.perf_counter() - begun
            bar.set_postfix_str(f"{samples / seconds:.1f} samples/s", refresh=False)
    busy = time.perf_counter() - begun
    memory = _peak_memory(device, _workers(args.workers, world.local_size) > 0)
    stats = world.gather({"explained": explained, "samples": samples, "seconds": busy,
                          "attempted": mine, "memory": memory})
    if world.rank != 0:
        return 0
    records = [_read_record(source, out, False) or _missing(source) for source in sources]
    index = write_index(out, records)
    failed = [r for r in records if r["status"] != "ok"]
    if not args.quiet:
        print(_summary(records, failed, stats, plan, index, device, world.size,
                       time.perf_counter() - started))
    return 1 if failed else 0


def _explain_batch(model: nn.Module, batch: list[Decoded], sources: Sequence[Source],
                   todo: set[int], out: Path, args: argparse.Namespace, conf: Settings,
                   labels: Sequence[str]) -> list[dict[str, Any]]:
    """Explain one group (all its readable images, as in any run) and save its unfinished
    images; returns their records."""
    results: dict[int, Explained | str] = {
        item.position: item.error for item in batch if item.error is not None}
    for same in _by_shape([item for item in batch if item.error is None]):
        try:
            done = explain_group(model, [item.data for item in same], args, conf)
        except Exception as exc:  # e.g. the user's model fails on this input: record it
            message = _one_line(exc)
            results.update({item.position: message for item in same})
        else:
            results.update({item.position: d for item, d in zip(same, done, strict=True)})
    records = []
    for item in batch:
        if item.position not in todo:
            continue
        source, result = sources[item.position], results[item.position]
        if isinstance(result, str):
            records.append(_fail(source, out, result))
            continue
        try:
            records.append(_save(source, out, result, args, labels))
        except OSError as exc:  # e.g. a file name too long for the file system
            records.append(_fail(source, out, f"cannot write outputs: {_one_line(exc)}"))
    return records


def _missing(source: Source) -> dict[str, Any]:
    return {"path": source.path, "key": source.key, "status": "failed",
            "error": "no record was written (a rank stopped early?)"}


def _peak_memory(device: torch.device, workers: bool) -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (the decoding
    workers), in MiB; the GPU's peak allocation on CUDA."""
    import resource

    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    memory = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
              "worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
              if workers else 0.0}
    if device.type == "cuda":
        memory["gpu"] = torch.cuda.max_memory_allocated(device) / 1024**2
    return memory


def _summary(records: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]],
             stats: Sequence[dict[str, Any]], plan: Plan, index: Path, device: torch.device,
             ranks: int, seconds: float) -> str:
    attempted = sum(s["attempted"] for s in stats)
    explained = sum(s["explained"] for s in stats)
    samples = sum(s["samples"] for s in stats)
    busy = max((s["seconds"] for s in stats), default=0.0) or math.inf
    skipped = len(records) - len(plan.todo)
    memory = max(s["memory"]["process"] for s in stats)
    workers = max(s["memory"]["worker"] for s in stats)
    gpu = max((s["memory"].get("gpu", 0.0) for s in stats), default=0.0)
    lines = [f"smoothgrad batch: {len(records)} images, {len(records) - len(failed)} explained "
             f"({skipped} already done, {explained} now), {len(failed)} failed",
             f"  {seconds:.1f} s on {ranks} process{'es' * (ranks > 1)} ({device.type}): "
             f"{explained / busy:.2f} images/s, {samples / busy:.1f} noisy samples/s "
             f"over {attempted} images; peak memory per process {memory:.0f} MiB"
             + (f", per decoding worker {workers:.0f} MiB" if workers else "")
             + (f", GPU {gpu:.0f} MiB" if gpu else "")]
    lines += [f"  failed: {r['path']}: {r['error']}" for r in failed[:5]]
    if len(failed) > 5:
        lines.append(f"  ... and {len(failed) - 5} more")
    lines.append(f"  index: {index}")
    return "\n".join(lines)
