"""The inputs of a batch run: finding the images (folder, list, glob, file) and decoding them.

Example:
    >>> from smoothgrad import images
    >>> source, = collect(str(images.sample_path("coffee")))
    >>> source.key.endswith("smoothgrad/data/coffee.jpg")
    True
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

from smoothgrad import images
from smoothgrad.errors import UserError
from smoothgrad.files import one_line

__all__ = ["IMAGE_SUFFIXES", "SUFFIXES", "BatchError", "Decoded", "Source", "collect",
           "decode", "key_root", "output_clashes", "workers"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif",
                            ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
"""File name endings (any case) taken as images when searching a folder or a glob."""

SUFFIXES = {"arrays": ".npy", "stderr": ".npy", "figures": ".png", "records": ".json"}
"""The output trees of a run and the ending their files get."""


class BatchError(UserError, ValueError):
    """A batch run cannot start (bad input, a locked or foreign output folder); one line."""


@dataclass(frozen=True, order=True)
class Source:
    """One input image: its output key (relative POSIX path) and its absolute path."""

    key: str
    path: str

    def output(self, out: Path, tree: str) -> Path:
        """Where this image's file of `tree` ("arrays", "figures", "records") goes in `out`."""
        return out / tree / f"{self.key}{SUFFIXES[tree]}"


_OWN = object()


def key_root(spec: str) -> str | None:
    """The folder whose paths key INPUT `spec`'s outputs: the folder itself, as an absolute
    path, for a folder; None (absolute paths) for a list, a glob or an image."""
    return os.path.abspath(spec) if os.path.isdir(spec) else None


def collect(spec: str, out: Path | None = None, root: str | object | None = _OWN
            ) -> list[Source]:
    """The images named by INPUT `spec`, sorted by key, without duplicates.

    A folder is searched recursively for IMAGE_SUFFIXES files (skipping names that start
    with "." and the folder `out`). A file with an image suffix is one image; any other file
    is a list of paths; anything else is a glob (matches are filtered to IMAGE_SUFFIXES
    files). Keys are paths relative to `root`, by default `key_root(spec)`: inside the
    folder for a folder, else the absolute path without the anchor (also for `root=None`).
    A resumed run passes the root of the run in its folder, so the same images get the
    same keys whichever way they are named; an image outside it is a BatchError. Raises
    BatchError when nothing is found.

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
        found = [os.path.abspath(spec)] if _is_image_name(spec) else _read_list(path)
    elif any(char in spec for char in "*?["):
        import glob

        found = [os.path.abspath(match) for match in glob.glob(spec, recursive=True)
                 if _is_image_name(match) and os.path.isfile(match)]
    else:
        raise BatchError(f"INPUT '{spec}': no such folder, file or glob matches")
    folder = key_root(spec) if root is _OWN else root
    assert folder is None or isinstance(folder, str)
    unique = sorted({_keyed(full, folder, spec) for full in found})
    if not unique:
        raise BatchError(f"INPUT '{spec}': no image files found")
    return unique


def _keyed(full: str, root: str | None, spec: str) -> Source:
    """`full` (an absolute path) keyed by its path inside `root`, or absolutely (None)."""
    if root is None:
        return _absolute(full)
    inside = os.path.relpath(full, root)
    if inside == os.pardir or inside.startswith(os.pardir + os.sep) or os.path.isabs(inside):
        raise BatchError(f"INPUT '{spec}' names '{full}', which is not in '{root}': --out "
                         f"holds a run of that folder, its outputs keyed by the path inside "
                         "it; use another --out (or --overwrite to discard the earlier run)")
    return Source(PurePath(inside).as_posix(), full)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(root: Path, out: Path | None) -> list[str]:
    skip = os.path.realpath(out) if out is not None else None
    found = []
    for folder, dirs, files in os.walk(os.path.abspath(root)):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) != skip)
        found += [os.path.join(folder, name) for name in files
                  if not name.startswith(".") and _is_image_name(name)]
    return found


def _absolute(path: str) -> Source:
    full = os.path.abspath(path)
    pure = PurePath(full)
    parts = list(pure.parts[1:])
    if pure.drive:  # Windows: C:\x\y.jpg -> C/x/y.jpg
        parts.insert(0, re.sub(r"[^A-Za-z0-9]+", "_", pure.drive).strip("_") or "drive")
    return Source("/".join(parts), full)


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BatchError(f"INPUT '{path}' is not a folder, an image file name or a UTF-8 "
                         "list of paths") from None
    base = path.parent
    found = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            found.append(os.path.abspath(os.path.join(base, entry)))
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


# ------------------------------------------------------------------------------ decoding


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
            return Decoded(index, None, one_line(exc))


def _as_list(batch: list[Decoded]) -> list[Decoded]:
    return batch


def workers(requested: int | None, local_size: int) -> int:
    """Decoding processes per rank: `requested`, or up to 4 by the CPUs per rank."""
    if requested is not None:
        return requested
    return max(1, min(4, (os.cpu_count() or 1) // max(1, local_size)))


def decode(sources: Sequence[Source], groups: list[list[int]], errors: dict[int, str],
           preprocess: Callable[[Image.Image], Tensor], device: torch.device,
           workers: int) -> Iterator[list[Decoded]]:
    """The images of `groups`, one list per group, decoded (and, where the workers can,
    preprocessed) in `workers` processes; an image that fails carries its error."""
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
        return Decoded(item.position, None, one_line(exc))


