"""Writing output files safely, and saying in one line what went wrong.

Every file smoothgrad writes goes through :func:`write_atomically`: a temporary sibling is
written, flushed to disk and renamed over the target, so a crash or a full disk leaves the
old file or the new one, never half of one. Files get the permissions the user's umask
gives (as ``open()`` would), not ``mkstemp``'s 0600.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomically(folder / "a.txt", "hello\\n").read_text()
    'hello\\n'
    >>> one_line(ValueError("first line\\nsecond"))
    'first line'
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from smoothgrad.errors import UserError
from smoothgrad.tables import to_csv as csv_text  # the one CSV writer (pure text, no I/O)

__all__ = ["OutputError", "csv_text", "json_bytes", "npy_bytes", "one_line", "sync_folder",
           "write_all", "write_atomically"]

Data = bytes | str | Callable[[IO[bytes]], None]
"""What a file holds: bytes, text (written as UTF-8), or a function writing into the file."""

TEMPORARY_PREFIX = "."
"""Temporary files are named ``.NAME.XXXXXXXX.tmp`` beside their target."""

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class OutputError(UserError, OSError):
    """An output file could not be written; the message names the file (one line)."""

    def __str__(self) -> str:
        return str(self.args[-1]) if self.args else "cannot write an output file"


def one_line(exc: BaseException) -> str:
    """`exc` as one line for the user.

    smoothgrad's own errors and ValueError/TypeError (validation messages) show their
    message's first line; any other exception (usually from the user's code: a model,
    a preprocess, an import) is prefixed with its type, e.g. ``"ModuleNotFoundError: No
    module named 'x'"``. An exception without a message shows its type.

    Example:
        >>> one_line(RuntimeError("size mismatch\\n  more detail"))
        'RuntimeError: size mismatch'
        >>> one_line(KeyError())
        'KeyError'
    """
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if not line:
        return type(exc).__name__
    own = type(exc).__module__.startswith("smoothgrad")
    if own or isinstance(exc, ValueError | TypeError):
        return line
    return f"{type(exc).__name__}: {line}"


def write_atomically(path: str | os.PathLike[str], data: Data) -> Path:
    """Write `data` to `path` (parent folders created) atomically; returns the path.

    The file is written to a temporary sibling, fsynced and renamed into place; the folder
    is fsynced too, so the rename survives a power cut. On any error the temporary file is
    removed and the target is left as it was; a full disk raises :class:`OutputError`
    naming the file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "x.bin"
        >>> write_atomically(path, b"\\x00\\x01").read_bytes()
        b'\\x00\\x01'
    """
    return write_all({Path(path): data})[0]


def write_all(files: Mapping[Path, Data]) -> list[Path]:
    """Write several files, renaming them into place only after every one was written.

    A failure leaves no new or partial file and the existing ones untouched (apart from
    the renames already done when the failure is in a rename itself, which is rare).
    """
    temporaries: dict[Path, Path] = {}
    try:
        for target, data in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f"{TEMPORARY_PREFIX}{target.name}."
                                         f"{secrets.token_hex(4)}.tmp")
            # O_EXCL with 0o666: the umask decides the permissions, as for open(path, "w")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            temporaries[target] = temporary
            with os.fdopen(descriptor, "wb") as file:
                _write(file, data, target)
        for target, temporary in temporaries.items():
            os.replace(temporary, target)
    finally:
        for temporary in temporaries.values():
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
    for folder in {target.parent for target in files}:
        sync_folder(folder)
    return list(files)


def _write(file: IO[bytes], data: Data, target: Path) -> None:
    try:
        if isinstance(data, str):
            file.write(data.encode("utf-8"))
        elif isinstance(data, bytes | bytearray | memoryview):
            file.write(data)
        else:
            data(file)
        file.flush()
        os.fsync(file.fileno())
    except OSError as exc:
        if exc.errno in _FULL:
            raise OutputError(exc.errno, f"cannot write '{target}': the disk is full "
                                         "(no space left on the device)") from exc
        raise


def sync_folder(folder: Path) -> None:
    """fsync a folder (its renames reach the disk); silently skipped where unsupported."""
    with contextlib.suppress(OSError):  # not every OS or file system can fsync a folder
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def json_bytes(value: Any) -> bytes:
    """`value` as indented, key-sorted UTF-8 JSON with a final newline."""
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def npy_bytes(array: Any) -> bytes:
    """A NumPy array as the bytes of a ``.npy`` file (no pickles)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()
