"""The output folder of a batch run: its lock, manifest (run.json), records and index.

Layout (see :mod:`smoothgrad.batch`): ``run.json`` holds the options that give the outputs
their meaning; ``records/KEY.json`` marks an image finished (written after its array and
figure); ``index.csv`` is rebuilt from the records at the end of every run.

Example:
    >>> groups_for([0, 1, 4, 5, 6], 7, 2, 0, 2)
    [[0, 1], [6]]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothgrad.batch.sources import SUFFIXES, BatchError, Source, output_clashes
from smoothgrad.files import (
    Data,
    csv_text,
    json_bytes,
    npy_bytes,
    sync_folder,
    write_all,
    write_atomically,
)

__all__ = ["INDEX", "INDEX_COLUMNS", "LOCK", "MANIFEST", "Earlier", "Lock", "Plan", "Settings",
           "earlier_run", "groups_for", "keys_option", "model_fingerprint", "plan",
           "read_record", "write_failure", "write_figure", "write_index", "write_outputs"]

INDEX_COLUMNS = ("path", "array", "status", "target", "label", "probability", "samples",
                 "flip_rate", "relative_error", "converged", "error")
MANIFEST, INDEX, LOCK = "run.json", "index.csv", ".smoothgrad.lock"
FORMAT = 1
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
_TRASH = ".smoothgrad-trash-"


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

    def _open(self) -> None:
        """Open the lock file; forked children (the decoding workers) close their copy at
        once, so a killed run's lock goes with its main process, not with its orphans."""
        self.file = open(self.path, "a")  # noqa: SIM115  (held until the process ends)
        _HELD.add(self)
        global _FORK_HOOK
        if not _FORK_HOOK and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_close_in_child)
            _FORK_HOOK = True

    def take(self, *, exclusive: bool) -> bool:
        """Lock (exclusive: without waiting); False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows
            return True
        if self.file is None:
            self._open()
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
        _HELD.discard(self)


_HELD: weakref.WeakSet[Lock] = weakref.WeakSet()
_FORK_HOOK = False


def _close_in_child() -> None:
    """In a forked child: close the inherited lock files (this releases nothing: the parent
    still holds its lock; without it the lock lives as long as the child)."""
    for lock in list(_HELD):
        if lock.file is not None:
            with contextlib.suppress(OSError):
                lock.file.close()
            lock.file = None


# ----------------------------------------------------------------------------- manifest


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, types, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Settings:
    """What a batch run computes: `options` must match on resume, `numerics` only warn,
    `figures` (the figures' style, or None) may change: figures are drawn from the arrays."""

    options: dict[str, Any]
    numerics: dict[str, Any]
    rows: int
    group: int
    target: int | None
    figures: dict[str, Any] | None = None

    def manifest(self, figures: dict[str, Any] | None = None) -> dict[str, Any]:
        """run.json's content; `figures` is the style the figures in DIR have."""
        return {"format": FORMAT, "options": self.options, "numerics": self.numerics,
                "figures": figures}


def keys_option(root: str | None) -> str:
    """How a run keys its outputs, as run.json records it (an option: it must not change).

    >>> keys_option("/data/photos"), keys_option(None)
    ('paths inside /data/photos', 'absolute paths')
    """
    return "absolute paths" if root is None else f"paths inside {root}"


@dataclass(frozen=True)
class Earlier:
    """What a resumed run takes from the run already in DIR: how it keys its outputs
    (`keys_option`; None: not known yet, no image finished) and its intra-op thread count
    (None: not recorded, e.g. a GPU run)."""

    keys: str | None
    threads: int | None

    def key_root(self, default: str | None) -> str | None:
        """The folder that keys the outputs (None: absolute paths); `default` if unknown."""
        if self.keys is None:
            return default
        return None if self.keys == "absolute paths" else self.keys.removeprefix(
            "paths inside ")


def earlier_run(out: Path) -> Earlier | None:
    """The run in `out`, or None when there is none (or none that can be read: `plan`
    says why). Runs from before the keys were recorded tell them by a record."""
    try:
        manifest = _read_manifest(out)
    except (BatchError, OSError):
        return None
    if manifest is None:
        return None
    keys = manifest["options"].get("keys") or _keys_of_records(out)
    numerics = manifest.get("numerics")
    threads = numerics.get("threads") if isinstance(numerics, dict) else None
    return Earlier(keys if isinstance(keys, str) else None,
                   threads if isinstance(threads, int) and threads > 0 else None)


def _keys_of_records(out: Path) -> str | None:
    """`keys_option` of the run in `out` told by one of its records, None without any."""
    for folder, _, files in os.walk(out / "records"):
        for name in files:
            try:
                record = json.loads(Path(folder, name).read_text(encoding="utf-8"))
                key, path = str(record["key"]), str(record["path"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if path.replace(os.sep, "/").endswith("/" + key.lstrip("/")):
                root = path[:len(path) - len(key) - 1]
                return keys_option(None if root in ("", os.path.splitdrive(path)[0])
                                   else root)
    return None


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
        raise BatchError(f"'{out / MANIFEST}' is not a smoothgrad batch manifest; "
                         "use another --out, or --overwrite to start over") from None
    return manifest


def _discard(out: Path, trees: Sequence[str] = (*SUFFIXES, INDEX)) -> None:
    """Move outputs (by default all of them) into a trash folder (one rename each), then
    delete it."""
    trash = out / f"{_TRASH}{secrets.token_hex(4)}"
    trash.mkdir()
    for name in trees:
        if (out / name).exists():
            os.replace(out / name, trash / name)
    sync_folder(out)
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


# ---------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Rank 0's decisions, sent to every rank: the inputs, the images to explain (`todo`),
    the finished images whose figure is to be drawn from their array (`draw`)."""

    sources: list[Source] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)
    draw: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def plan(out: Path, conf: Settings, sources: list[Source], overwrite: bool,
         lock: Lock) -> Plan:
    """Lock DIR, check or write run.json, clean up after killed runs, find the unfinished
    images and the figures to draw; DIR stays locked (shared) for the run."""
    out.mkdir(parents=True, exist_ok=True)
    if not lock.take(exclusive=True):
        raise BatchError(f"--out '{out}' is in use by another smoothgrad batch run (or the "
                         "ranks of a killed torchrun, which outlive it): stop it first")
    try:
        warnings: list[str] = []
        redraw = _check_manifest(out, conf, overwrite, warnings)
        _clean(out)
        return _find_work(out, conf, sources, redraw, warnings)
    finally:
        lock.take(exclusive=False)


def _check_manifest(out: Path, conf: Settings, overwrite: bool, warnings: list[str]) -> bool:
    """Check run.json against `conf` (or start a run); True when every figure is to be
    drawn again (a new style)."""
    old = _read_manifest(out)
    if old is None:
        leftovers = [name for name in (*SUFFIXES, INDEX) if (out / name).exists()]
        if leftovers and not overwrite:
            raise BatchError(f"--out '{out}' holds {', '.join(leftovers)} but no {MANIFEST}; "
                             "use another --out, or --overwrite to replace them")
        if leftovers:
            _discard(out)
        write_atomically(out / MANIFEST, json_bytes(conf.manifest(conf.figures)))
        return False
    options = {k: v for k, v in old["options"].items() if k != "figures"}  # format 1 had it
    options.setdefault("keys", _keys_of_records(out) or conf.options.get("keys"))  # older runs
    if options != conf.options:
        changes = _differences(options, conf.options)
        if not overwrite:
            raise BatchError(f"--out '{out}' holds a run with other options "
                             f"({'; '.join(changes)}); rerun with its options to resume, "
                             "or add --overwrite to discard it")
        _discard(out)  # records go before the new manifest: no old record is ever trusted
        write_atomically(out / MANIFEST, json_bytes(conf.manifest(conf.figures)))
        warnings.append(f"--overwrite: discarded the earlier run in '{out}' "
                        f"({'; '.join(changes)})")
        return False
    changes = _differences(old.get("numerics", {}), conf.numerics)
    if changes:
        warnings.append(f"resuming with other numerics ({'; '.join(changes)}): the images "
                        "explained now may differ from the earlier ones in the last bits")
    drawn = old.get("figures", old["options"].get("figures"))
    if conf.figures is None or conf.figures == drawn:
        return False
    if drawn is not None:  # figures of another style go first, then the manifest says so
        _discard(out, ["figures"])
        warnings.append(f"drawing the figures again from the arrays "
                        f"({'; '.join(_differences(drawn, conf.figures))})")
    write_atomically(out / MANIFEST, json_bytes(conf.manifest(conf.figures)))
    return True


def _find_work(out: Path, conf: Settings, sources: list[Source], redraw: bool,
               warnings: list[str]) -> Plan:
    clashes = output_clashes(sources)
    todo, draw = [], []
    for i, source in enumerate(sources):
        record = None if source.key in clashes else read_record(source, out)
        if record is None or record.get("status") != "ok":
            todo.append(i)  # unfinished, or failed: failed images are retried
        elif conf.figures is not None and (
                redraw or not source.output(out, "figures").is_file()):
            draw.append(i)
    errors = {i: clashes[sources[i].key] for i in todo if sources[i].key in clashes}
    return Plan(sources, todo, draw, errors, warnings)


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


# ------------------------------------------------------------------------------- records


def read_record(source: Source, out: Path) -> dict[str, Any] | None:
    """The record of `source` (None when there is none): "ok" only with its array."""
    try:
        record = json.loads(source.output(out, "records").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("path") != source.path:
        return None  # another input once had this key (another INPUT, same DIR)
    if record.get("status") == "ok" and not source.output(out, "arrays").is_file():
        return None
    return record


def write_index(out: Path, records: Sequence[dict[str, Any]]) -> Path:
    """DIR/index.csv from the records, one row each, in the given order."""
    return write_atomically(out / INDEX, csv_text(records, INDEX_COLUMNS))




def write_outputs(source: Source, out: Path, arrays: dict[str, Any], figure: bytes | None,
                  record: dict[str, Any]) -> dict[str, Any]:
    """Write an explained image's arrays (tree -> array) and figure, all or none, then its
    record: the finished mark."""
    files: dict[Path, Data] = {source.output(out, tree): npy_bytes(array)
                               for tree, array in arrays.items()}
    if figure is not None:
        files[source.output(out, "figures")] = figure
    write_all(files)
    write_atomically(source.output(out, "records"), json_bytes(record))
    return record


def write_figure(source: Source, out: Path, figure: bytes) -> None:
    write_atomically(source.output(out, "figures"), figure)


def write_failure(source: Source, out: Path, error: str) -> dict[str, Any]:
    """Record that `source` failed (best effort: a record that cannot be written is retried
    on the next run anyway)."""
    record = {"path": source.path, "key": source.key, "status": "failed", "array": None,
              "target": None, "label": None, "probability": None, "samples": None,
              "flip_rate": None, "relative_error": None, "converged": None, "error": error}
    with contextlib.suppress(OSError):
        write_atomically(source.output(out, "records"), json_bytes(record))
    return record
