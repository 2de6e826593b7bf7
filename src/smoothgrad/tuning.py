"""How many rows go through the model per pass: the batch-size search and its policy.

`BatchTuner` learns the fastest rows per pass from a call's own passes; `tuner_for` keeps
one per (model, method, device, example shape, dtype, fast path) for the process; `Passes`
is the policy `smooth` follows: examples per part, noisy copies per pass, what is timed and
measured, and what an out-of-memory pass does. Rows are what the model sees: for integrated
gradients each noisy copy is `steps` rows.

The size follows the work per row and the memory a row needs. A pass costs about
`a + b·rows`: `a` the fixed cost of a pass (Python, dispatch, the statistics' update), `b`
the work per row. Two measured sizes give `a` and `b`, and the next size is the one at which
`a` is 3 % of the pass (at most 8 times the last), so passes grow fast where rows are cheap
(a 64×64 ResNet: all 100 rows of a call in one pass) and stop where the cost per row stops
falling (EfficientNet-Lite0 at 224×224 on a CPU: 8–12 rows, where larger passes page-fault
their activations in). The memory a row keeps for the backward pass, counted on the first
pass, sets where the search starts (`START_BYTES`: where rows are small, passes are large
from the first measured one, whatever timing noise says) and caps the size to a budget per
device.

Example:
    >>> tuner = BatchTuner(8, 2, 1024)
    >>> for seconds_per_row in (0.5, 0.4, 0.4, 0.4, 0.1, 0.1, 0.1):  # warm-up, 8 and 32 rows
    ...     tuner.record(tuner.rows, seconds_per_row * tuner.rows)
    >>> tuner.rows  # fixed cost 3.2 s a pass and no work per row: grow eightfold
    256
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BatchTuner", "Passes", "default_batch_size", "forget", "memory_budget",
           "tuner_for"]

FIXED_SHARE = 0.03
"""Grow passes until a pass's fixed cost is this share of it."""

START_BYTES = {"cpu": 32 * 2**20, "cuda": 2**30}
"""The search starts where a pass keeps this much for its backward pass (or at the default
size, if larger): about a CPU's last-level cache, and glibc's largest heap allocation (over it
each pass page-faults its memory in afresh); on CUDA a batch that fills the device's cores."""

BALANCE = 1.25
"""A tuned pass size may grow by this factor to spread a call's rows evenly over its passes."""

REPEATS = 3
"""Passes measured at each size before the tuner moves on (the cheapest counts)."""

LADDER_SPAN = 1.3
"""After growing, sizes between the best one and the next larger measured one are tried only
when that one costs at most this factor more per row: a steeper rise (EfficientNet-Lite0 at
224×224 on one core: 19 rows 1.5× the cost per row of 8) leaves nothing to find in between,
and each size tried costs a user's calls `REPEATS` passes at a worse size."""


def default_batch_size(device: torch.device) -> int:
    """Rows per pass before tuning: small chunks are fastest on CPUs, large ones on GPUs."""
    return {"cuda": 64, "mps": 16}.get(device.type, 8)


_SIZE_RANGE = {"cuda": (16, 8192), "mps": (4, 2048)}
_TUNERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], BatchTuner]] = (
    weakref.WeakKeyDictionary())


def memory_budget(device: torch.device) -> int:
    """Bytes a pass's activations may take: half the free memory of a CUDA device, else an
    eighth of the machine's memory (at most 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(min(total // 8, 4 * 2**30))


class BatchTuner:
    """Finds the fastest rows per pass for one (model, device, example shape, method).

    It learns from the passes of real calls, so the search costs no extra work: the first
    pass warms up (one-time costs); each size is measured `REPEATS` times and its cheapest
    pass counts (noise only adds). The start size comes first, then 4 times it; from then on
    each size comes from the fixed cost and work per row fitted to the last two
    (`FIXED_SHARE`), within the memory cap, while a row keeps getting cheaper. Then it tries
    the ladder sizes (…, 4, 6, 8, 12, 16, …) between the cheapest and the next larger size
    measured; the choice is the smallest size within 3 % of the cheapest. It never goes below
    the start size: near there a row's cost is flat where rows are dear (6 and 8 rows of
    EfficientNet-Lite0 were 54 ms each) and climbs steeply where they are cheap, so under
    timing noise a smaller size was a risk without a gain. A call whose rows all fit in one
    pass measures that size (its own), and ends the search when the tuner wants more. A pass
    that runs out of CUDA memory caps the size at half. The choice is kept for the process.
    """

    def __init__(self, start: int, least: int, most: int) -> None:
        self.rows, self.start, self.least, self.most = start, start, least, most
        self.cost: dict[int, float] = {}
        self.times: Counter[int] = Counter()
        self.order: list[int] = []
        self.warm = False
        self.growing = True
        self.finished = False
        self.bytes_per_row: float | None = None
        self.quantum = 1

    @staticmethod
    def clock(device: torch.device) -> float:
        """Seconds: after waiting for the queued work of a CUDA device, wall-clock time;
        on a CPU the process's CPU time, which counts the work of a pass (page faults
        included) rather than the time other processes hold the cores (a pass of a small
        model varied by a coefficient of 0.2 in wall time, 0.05 in CPU time, under load)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if device.type == "cpu":
            return time.process_time()
        return time.perf_counter()

    def record(self, rows: int, seconds: float, *, whole_call: bool = False,
               quantum: int = 1) -> None:
        """A pass of `rows` rows took `seconds` (`whole_call`: it held all of a call's rows,
        fewer than the tuner asked for; `quantum`: the call's passes are multiples of it)."""
        if self.finished:
            return
        if not self.warm:
            self.warm = True
            return
        self.cost[rows] = min(seconds / rows, self.cost.get(rows, math.inf))  # noise adds
        self.times[rows] += 1
        if self.times[rows] < REPEATS:
            return  # the first pass at a size also pays one-time costs (kernels for a shape)
        self.order = [size for size in self.order if size != rows] + [rows]
        self.quantum = quantum
        following = self._following(rows)
        if following is None or (whole_call and following > rows):
            self.finish()
        else:
            self.rows = following

    def limit_memory(self, bytes_per_row: float, budget: int, start_bytes: int = 0) -> None:
        """Size passes by the memory a row keeps (`bytes_per_row`, twice that while the
        backward pass runs): at most `budget` bytes a pass, and, before any size is measured,
        start where a pass keeps `start_bytes` (never below the start size)."""
        self.bytes_per_row = bytes_per_row
        if bytes_per_row > 0:
            self.most = max(self.least, min(self.most, int(budget // (2 * bytes_per_row))))
            if not self.cost:
                self.rows = self.start = max(self.rows, int(start_bytes // bytes_per_row))
            self.rows = self.start = min(self.rows, self.most)

    def _following(self, measured: int) -> int | None:
        """The size of the next pass, or None when the search is over."""
        earlier = [size for size in self.order[:-1] if size < measured]
        cheaper = not earlier or self.cost[measured] < self.cost[earlier[-1]]
        grown = self._grown(measured) if self.growing and cheaper else None
        if grown is not None:
            grown = self._whole(min(self.most, grown))
            if grown > measured:
                return grown
        self.growing = False
        best = self.best()
        above = [size for size in self.cost if size > best]
        near = above and self.cost[min(above)] <= LADDER_SPAN * self.cost[best]
        between = self._ladder(above=best, below=min(above)) if near else None
        if between is not None and between not in self.cost:
            return between
        return None

    def _grown(self, measured: int) -> int | None:
        """The next size up: where the fixed cost is `FIXED_SHARE` of a pass, fitted to the
        last two measured sizes (4 × `measured` without two), 1.5 to 8 times `measured`;
        None when the fixed cost is that small at `measured` already."""
        earlier = [size for size in self.order[:-1] if size < measured]
        if not earlier:
            return 4 * measured  # a step the fixed cost shows through the timing noise in
        smaller = earlier[-1]
        fixed = (self.cost[smaller] - self.cost[measured]) / (1 / smaller - 1 / measured)
        work = self.cost[measured] - fixed / measured
        target = fixed / (FIXED_SHARE * work) if work > 0 else 8 * measured
        if target <= measured:
            return None
        return int(min(8 * measured, max(1.5 * measured, target)))

    def _whole(self, rows: int) -> int:
        """`rows` rounded down to whole passes of the current call (`quantum`)."""
        return max(self.quantum, rows // self.quantum * self.quantum)

    def _ladder(self, *, above: int, below: int) -> int | None:
        """The middle one of the ladder's sizes between `above` and `below`, if any."""
        sizes = sorted({self._whole(size) for k in range(1, 31)
                        for size in (2**k, 3 * 2 ** (k - 1)) if self.least <= size <= self.most})
        inside = [size for size in sizes if above < size < below]
        return inside[len(inside) // 2] if inside else None

    def finish(self) -> None:
        """Stop searching; keep the best size measured so far."""
        self.rows, self.finished = self.best(), True

    def best(self) -> int:
        """The smallest size measured within 3% of the cheapest cost per row."""
        return min(self._near_cheapest(), default=self.rows)

    def balance_limit(self) -> int:
        """The most rows a balanced pass may hold: up to the memory cap where the best size is
        the largest measured (the cost per row was still falling), else the largest measured
        size within 3 % of the cheapest (a steeper rise above it is not worth an even split)."""
        if not self.cost or self.best() == max(self.cost):
            return self.most
        return max(self._near_cheapest())

    def _near_cheapest(self) -> list[int]:
        """The sizes measured within 3 % of the cheapest cost per row."""
        cheapest = min(self.cost.values(), default=0.0)
        return [rows for rows, cost in self.cost.items() if cost <= cheapest * 1.03]

    def out_of_memory(self, rows: int) -> None:
        """A pass of `rows` rows ran out of memory: never try as many again."""
        self.most = max(self.least, rows // 2)
        self.growing = False
        self.rows = self.start = min(self.best(), self.most)
        self.finished = bool(self.cost)
        torch.cuda.empty_cache()


def tuner_for(model: nn.Module, method: object, x: Tensor, fast: bool,
              kept: dict[tuple[Any, ...], BatchTuner] | None = None) -> BatchTuner:
    """The tuner kept for this model, method, device, example shape and dtype, and fast path:
    in `kept` (the tuners an explainer holds for its model), else for the process."""
    key = (x.device, tuple(x.shape[1:]), x.dtype, fast,
           method if isinstance(method, str) else id(method))
    tuners = _TUNERS.setdefault(model, {}) if kept is None else kept
    if key not in tuners:
        least, most = _SIZE_RANGE.get(x.device.type, (2, 4096))
        tuners[key] = BatchTuner(default_batch_size(x.device), least, most)
    return tuners[key]


class Passes:
    """The pass policy of one `smooth` call: parts, noisy copies per pass, tuning, retries.

    `rows` is the pass size in model rows (`batch_size`, or the tuner's current size with
    "auto"); each noisy copy of an example costs `unit` rows (integrated gradients' steps),
    and a pass holds whole copies of every example. Examples are split into parts of at most
    `rows // unit` when a pass cannot hold them all. The tuner learns from calls of one part
    with a fixed sample count (no "auto" stopping), from passes as large as it asked for or
    holding the whole call; on CUDA an out-of-memory pass halves the size and is retried
    while it can shrink.
    """

    def __init__(self, model: nn.Module, x: Tensor, *, method: object, batch_size: int | str,
                 fast: bool, limit: int, stops_early: bool, unit: int = 1,
                 kept: dict[tuple[Any, ...], BatchTuner] | None = None) -> None:
        self.examples, self.unit, self.device, self.limit = x.shape[0], unit, x.device, limit
        self.tuner: BatchTuner | None = None
        self.most = 0  # balanced passes up to this many rows (0: passes of `rows` exactly)
        if batch_size == "auto":
            tuner = tuner_for(model, method, x, fast, kept)
            self.fixed = tuner.rows
            if not (tuner.finished or stops_early or self.examples * unit > tuner.rows):
                self.tuner = tuner
            elif not stops_early:
                self.most = tuner.balance_limit()
        else:
            self.fixed = int(batch_size)
        per_part = max(1, self.fixed // unit)
        self.parts = [slice(i, min(i + per_part, self.examples))
                      for i in range(0, self.examples, per_part)]
        self.started, self.done_copies = 0.0, 0

    @property
    def rows(self) -> int:
        """Model rows per pass now."""
        return self.fixed if self.tuner is None else self.tuner.rows

    def copies(self) -> int:
        """Noisy copies of every example per pass. With a tuned size, the copies left are
        spread evenly over as few passes as hold them at up to `BALANCE` times the size (and
        the memory cap): 400 rows at a tuned 384 go in one pass, not 384 and 16."""
        group = self.examples * self.unit
        per_pass = max(1, self.rows // group)
        if not self.most:
            return per_pass
        left = max(1, self.limit - self.done_copies)
        passes = math.ceil(left / (BALANCE * per_pass))
        return max(1, min(math.ceil(left / passes), self.most // group))

    @contextmanager
    def measuring(self, copies: int) -> Iterator[None]:
        """Around a pass's base method on `copies` noisy copies (rows of the batch): on the
        tuner's first pass, count the bytes the autograd graph keeps per model row
        (`BatchTuner.limit_memory`, with `START_BYTES`)."""
        tuner = self.tuner
        if tuner is None or tuner.bytes_per_row is not None:
            yield
            return
        storages: dict[int, int] = {}
        rows = copies * self.unit

        def pack(tensor: Tensor) -> Tensor:
            if (tensor.device == self.device and tensor.layout == torch.strided
                    and not _fixed(tensor, rows)):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        tuner.limit_memory(sum(storages.values()) / (copies * self.unit),
                           memory_budget(self.device), START_BYTES.get(self.device.type, 0))

    def start(self) -> None:
        """A pass begins (timed when tuning)."""
        if self.tuner is not None:
            self.started = self.tuner.clock(self.device)

    def done(self, copies: int, count: int) -> None:
        """A pass of `count` copies (`copies` for a full one) ended without error."""
        first, self.done_copies = self.done_copies == 0, self.done_copies + count
        if self.tuner is None:
            return
        whole = first and count == self.limit < copies
        if count == copies or whole:
            seconds = self.tuner.clock(self.device) - self.started
            self.tuner.record(count * self.examples * self.unit, seconds, whole_call=whole,
                              quantum=self.examples * self.unit)

    def out_of_memory(self, count: int) -> bool:
        """A pass of `count` copies ran out of memory: True to retry it at a smaller size."""
        if self.tuner is None or (self.copies() == 1 and self.unit == 1):
            return False
        rows = min(count * self.examples * self.unit, self.tuner.rows)
        if rows <= self.tuner.least:
            return False
        self.tuner.out_of_memory(rows)  # one part: nothing was merged yet
        return True


def _fixed(tensor: Tensor, rows: int) -> bool:
    """Whether a tensor saved for the backward pass is the same whatever the pass size: one
    outside the graph (a weight, a weight cast once to a lower precision, a constant) whose
    first dimension is not the pass's rows. Counted per row, BERT-base's weights made a
    bfloat16 pass look 2.4× as large as it is (70.6 MiB a row where float32 had 29.2)."""
    return (tensor.grad_fn is None and not tensor.requires_grad
            and (tensor.dim() == 0 or tensor.shape[0] != rows))


def forget(model: nn.Module | None = None) -> None:
    """Drop the tuned sizes kept for `model` (all models when None): the next call searches."""
    if model is None:
        _TUNERS.clear()
    else:
        _TUNERS.pop(model, None)

