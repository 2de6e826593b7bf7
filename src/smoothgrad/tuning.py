"""How many rows go through the model per pass: the batch-size search and its policy.

`BatchTuner` learns the fastest rows per pass from a call's own passes; `tuner_for` keeps
one per (model, method, device, example shape, dtype, fast path) for the process; `Passes`
is the policy `smooth` follows: examples per part, noisy copies per pass, what is timed,
and what an out-of-memory pass does. Rows are what the model sees: for integrated
gradients each noisy copy is `steps` rows.

Example:
    >>> tuner = BatchTuner(8, 2, 64)
    >>> for seconds in (1.0, 0.8, 0.9):  # warm-up, then 8 rows, then 12 rows
    ...     tuner.record(tuner.rows, tuner.rows, seconds * tuner.rows)
    >>> tuner.rows  # 12 was dearer per row: descend from 8
    6
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BatchTuner", "Passes", "default_batch_size", "forget", "tuner_for"]


def default_batch_size(device: torch.device) -> int:
    """Rows per pass before tuning: small chunks are fastest on CPUs, large ones on GPUs."""
    return {"cuda": 64, "mps": 16}.get(device.type, 8)


_SIZE_RANGE = {"cuda": (16, 1024), "mps": (4, 256)}
_TUNERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], BatchTuner]] = (
    weakref.WeakKeyDictionary())


class BatchTuner:
    """Finds the fastest rows per pass for one (model, device, example shape, method).

    It learns from the passes of real calls, so the search costs no extra work: the first
    pass warms up, then the size climbs a ladder of powers of two and their halfway points
    (…, 4, 6, 8, 12, 16, …) while that makes a row cheaper, else descends it while that
    does; the choice is the smallest size within 3% of the cheapest. A pass that runs out of
    CUDA memory caps the size at half. The choice is kept for the process; a call too short
    to finish the search leaves it to the next one.
    """

    def __init__(self, start: int, least: int, most: int) -> None:
        self.rows, self.start, self.least, self.most = start, start, least, most
        self.cost: dict[int, float] = {}
        self.warm = False
        self.growing = True
        self.finished = False

    @staticmethod
    def clock(device: torch.device) -> float:
        """Seconds, after waiting for the device's queued work."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def record(self, full: int, rows: int, seconds: float) -> None:
        """A pass of `rows` rows (`full` for a whole pass at the current size) took `seconds`."""
        if self.finished or rows < full:
            return  # a short last pass says little about this size
        if not self.warm:
            self.warm = True
            return
        self.cost[self.rows] = seconds / rows
        best = self.best()
        larger = self._ladder(above=self.rows)
        if self.growing and best == self.rows and larger is not None:
            self.rows = larger
            return
        self.growing = False
        smaller = self._ladder(below=best) if best <= self.start else None
        if smaller is not None and smaller not in self.cost:
            self.rows = smaller  # descend from the start size only
            return
        self.finish()

    def _ladder(self, *, above: int = 0, below: int = 0) -> int | None:
        sizes = sorted({size for k in range(1, 31) for size in (2**k, 3 * 2 ** (k - 1))
                        if self.least <= size <= self.most})
        if above:
            return next((size for size in sizes if size > above), None)
        return next((size for size in reversed(sizes) if size < below), None)

    def finish(self) -> None:
        """Stop searching; keep the best size measured so far."""
        self.rows, self.finished = self.best(), True

    def best(self) -> int:
        """The smallest size measured within 3% of the cheapest cost per row."""
        if not self.cost:
            return self.rows
        cheapest = min(self.cost.values())
        return min(rows for rows, cost in self.cost.items() if cost <= cheapest * 1.03)

    def out_of_memory(self, rows: int) -> None:
        """A pass of `rows` rows ran out of memory: never try as many again."""
        self.most = max(self.least, rows // 2)
        self.growing = False
        self.rows = self.start = min(self.best(), self.most)
        self.finished = bool(self.cost)
        torch.cuda.empty_cache()


def tuner_for(model: nn.Module, method: object, x: Tensor, fast: bool) -> BatchTuner:
    """The tuner kept for this model, method, device, example shape and dtype, and fast path."""
    key = (x.device, tuple(x.shape[1:]), x.dtype, fast,
           method if isinstance(method, str) else id(method))
    tuners = _TUNERS.setdefault(model, {})
    if key not in tuners:
        least, most = _SIZE_RANGE.get(x.device.type, (2, 64))
        tuners[key] = BatchTuner(default_batch_size(x.device), least, most)
    return tuners[key]


class Passes:
    """The pass policy of one `smooth` call: parts, noisy copies per pass, tuning, retries.

    `rows` is the pass size in model rows (`batch_size`, or the tuner's current size with
    "auto"); each noisy copy of an example costs `unit` rows (integrated gradients' steps).
    Examples are split into parts of at most `rows // unit` when a pass cannot hold them
    all. The tuner learns only from calls of one part that fill whole passes, with a fixed
    sample count (no "auto" stopping); on CUDA an out-of-memory pass halves the size and is
    retried while it can shrink.
    """

    def __init__(self, model: nn.Module, x: Tensor, *, method: object, batch_size: int | str,
                 fast: bool, limit: int, stops_early: bool, unit: int = 1) -> None:
        self.examples, self.unit, self.device = x.shape[0], unit, x.device
        self.tuner: BatchTuner | None = None
        needed = limit * self.examples * unit
        if batch_size == "auto":
            tuner = tuner_for(model, method, x, fast)
            if tuner.cost and needed < tuner.rows:
                tuner.finish()  # calls this size no longer fill a pass at the next size
            self.fixed = tuner.rows
            if not (self.examples > tuner.least or tuner.finished or stops_early
                    or needed <= tuner.rows):
                self.tuner = tuner
        else:
            self.fixed = int(batch_size)
        per_part = max(1, self.fixed // unit)
        self.parts = [slice(i, min(i + per_part, self.examples))
                      for i in range(0, self.examples, per_part)]
        self.started = 0.0

    @property
    def rows(self) -> int:
        """Model rows per pass now."""
        return self.fixed if self.tuner is None else self.tuner.rows

    def copies(self) -> int:
        """Noisy copies of every example per pass."""
        return max(1, self.rows // (self.examples * self.unit))

    def start(self) -> None:
        """A pass begins (timed when tuning)."""
        if self.tuner is not None:
            self.started = self.tuner.clock(self.device)

    def done(self, copies: int, count: int) -> None:
        """A pass of `count` copies (`copies` for a full one) ended without error."""
        if self.tuner is not None:
            rows = self.examples * self.unit
            self.tuner.record(copies * rows, count * rows,
                              self.tuner.clock(self.device) - self.started)

    def out_of_memory(self, count: int) -> bool:
        """A pass of `count` copies ran out of memory: True to retry it at a smaller size."""
        if self.tuner is None or (self.copies() == 1 and self.unit == 1):
            return False
        rows = min(count * self.examples * self.unit, self.tuner.rows)
        if rows <= self.tuner.least:
            return False
        self.tuner.out_of_memory(rows)  # one part: nothing was merged yet
        return True


def forget(model: nn.Module | None = None) -> None:
    """Drop the tuned sizes kept for `model` (all models when None): the next call searches."""
    if model is None:
        _TUNERS.clear()
    else:
        _TUNERS.pop(model, None)
