"""Every change to the user's model or to process state, each undone when its block ends.

- `explaining(model)`: eval mode and frozen parameters for the call.
- `gradients_on()`: autograd on inside the block whatever the caller's mode
  (`torch.no_grad`, `torch.inference_mode`), which comes back afterwards.
- `cudnn_benchmark(enabled)`: cuDNN's autotuner flag (and, if asked, its deterministic one).
- `intra_op_threads(count)`: torch's CPU threads per operation (batch runs fix them: the
  count changes the last bits of a map).
- `reusing_freed_memory()`: glibc's malloc keeps freed blocks. The one exception: glibc cannot
  give back its adaptive mmap threshold once any threshold was set, so this is opt-in (no
  smoothgrad call enters it) and says what it leaves behind.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2).eval()
    >>> with explaining(model):
    ...     assert not model.weight.requires_grad
    >>> model.weight.requires_grad
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["cudnn_benchmark", "explaining", "gradients_on", "intra_op_threads",
           "reusing_freed_memory"]


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode with frozen parameters for the block, then restore it.

    Every module's training flag and every parameter's `requires_grad` come back as they
    were, also when the block raises. A model in training mode is explained in eval mode
    (so dropout is off and BatchNorm statistics do not drift from the noisy copies), with
    a warning.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    if any(training for _, training in modes):
        warnings.warn(
            "model is in training mode: explaining it in eval mode for this call "
            "(its mode is restored afterwards)",
            stacklevel=4,
        )
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


@contextmanager
def gradients_on() -> Iterator[None]:
    """Autograd enabled in the block, also inside the caller's `no_grad`/`inference_mode`.

    Both modes are thread-local and restored on exit, so a caller inside
    `torch.inference_mode()` is still in it afterwards.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def cudnn_benchmark(enabled: bool, *, deterministic: bool | None = None) -> Iterator[None]:
    """`torch.backends.cudnn.benchmark = enabled` for the block, then the caller's value.

    `deterministic`, if given, sets `torch.backends.cudnn.deterministic` the same way.

    Example:
        >>> before = torch.backends.cudnn.benchmark
        >>> with cudnn_benchmark(not before):
        ...     assert torch.backends.cudnn.benchmark is not before
        >>> torch.backends.cudnn.benchmark is before
        True
    """
    cudnn = torch.backends.cudnn
    before = cudnn.benchmark, cudnn.deterministic
    cudnn.benchmark = enabled
    if deterministic is not None:
        cudnn.deterministic = deterministic
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = before


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to `count` for the block (`torch.set_num_threads`),
    then back to what they were.

    >>> before = torch.get_num_threads()
    >>> with intra_op_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


@functools.cache
def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None  # not glibc (musl, ...): nothing to tune


@contextlib.contextmanager
def reusing_freed_memory() -> Iterator[bool]:
    """Within the block, glibc's malloc keeps freed blocks for reuse; yields whether it could.

    Opt-in, process-wide and not fully undone: no smoothgrad call enters it by itself.
    By default glibc maps every allocation over its mmap threshold afresh and gives it back
    on free, so each pass over a large batch page-faults its activations in again and the
    kernel zeroes them. Here large blocks come from the heap and stay there until the block
    ends, when the heap is trimmed and the thresholds are set to glibc's adaptive ceilings
    (32 MiB mapping, 64 MiB trimming). What cannot be restored: setting any of these
    parameters switches glibc's adaptive threshold off for the rest of the process (glibc has
    no call to switch it back), so afterwards every block under 32 MiB comes from the heap.
    Measured on EfficientNet-Lite0 (224×224, n=50, `fast=True`) in BENCHMARKS.md. Elsewhere
    than Linux with glibc this does nothing.

    Example (a long-running job that explains many images, for which the process-wide
    change is acceptable)::

        with reusing_freed_memory():
            for x in batches:
                sg.smooth(model, x, fast=True)
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, 65536)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)
        libc.malloc_trim(0)
