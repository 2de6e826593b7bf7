"""SmoothGrad: average a base attribution over seeded noisy copies of the input.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> _ = model.eval()
    >>> result = sg.smooth(model, torch.randn(2, 4), samples=20, seed=0)
    >>> result.attribution.shape, result.samples
    (torch.Size([2, 4]), 20)
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.guard import explaining
from smoothgrad.methods import BY_NAME, Method
from smoothgrad.noise import noise_scale, standard_normal
from smoothgrad.stats import AGGREGATES, RunningMoments

__all__ = [
    "AUTO_STEP", "BatchTuner", "SmoothResult", "default_batch_size", "resolve_method", "smooth",
]

AUTO_STEP = 10
"""With `samples="auto"`, convergence is checked after every AUTO_STEP samples."""


@dataclass(frozen=True)
class SmoothResult:
    """What `smooth` returns. Tensors are shaped like x unless noted.

    attribution: the aggregated map. stderr: its per-element standard error.
    samples: noisy copies used per example. target: LongTensor (N,) of the explained
    classes, or None for a callable target. sigma: (N,) absolute noise std per example.
    flip_rate: (N,) share of noisy copies whose predicted class differs from the target
    (None for a callable target). aggregate: the aggregation used.
    """

    attribution: Tensor
    stderr: Tensor
    samples: int
    target: Tensor | None
    sigma: Tensor
    flip_rate: Tensor | None
    aggregate: str

    def relative_error(self) -> Tensor:
        """‖stderr‖ / ‖map‖ per example, (N,): how converged each map is (bias-corrected)."""
        return _relative_error(self.stderr, self.attribution)


def smooth(
    model: nn.Module,
    x: Tensor,
    *,
    method: str | Method | Any = "gradient",
    target: int | Tensor | Any | None = None,
    samples: int | Literal["auto"] = 50,
    noise: float | None = None,
    stdev: float | None = None,
    aggregate: str = "mean",
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
    antithetic: bool = False,
    tol: float = 0.05,
    max_samples: int = 500,
    progress: Callable[[int], None] | None = None,
    fast: bool = False,
) -> SmoothResult:
    """SmoothGrad of `method` for the batch `x` (N, ...): the aggregate of M(x + ε_k) over k.

    - noise: σ relative to each example's range, σ = noise · (max − min); 0.15 by default.
      stdev: an absolute σ instead (Captum's `stdevs`). Not both. σ = 0 gives exactly
      the base method's attribution (one pass, `samples` = 1).
    - target: None explains each example's clean argmax (kept for every noisy copy); an
      int, or N ints, names classes; a callable `output -> (rows,)` gives a custom score.
    - method: a name in `sg.methods.BY_NAME`, a callable `(model, x, target) -> Tensor`
      (`functools.partial` for options), or a Captum `Attribution` object.
    - aggregate: "mean" (SmoothGrad), "abs" (mean |M|), "square" (SmoothGrad², mean M²) or
      "var" (VarGrad, the unbiased variance over the noisy copies).
    - samples: noisy copies per example, or "auto": stop once the relative error
      (`SmoothResult.relative_error`) is ≤ tol for every example of x (checked every
      AUTO_STEP samples); at most `max_samples`, with a warning if it had not converged.
    - seed: noise of sample k depends only on (seed, k) and the example's shape, so results
      are the same for any `batch_size`, alone or in a batch, run after run.
    - batch_size: noisy copies per forward/backward pass; memory grows with it, never with
      `samples`. "auto" starts from `default_batch_size(device)` and times the call's own
      passes to find the fastest size for this model, device, example shape and method,
      remembered for the process (on CUDA, an out-of-memory pass halves it and is retried).
      antithetic: use noise pairs ε, −ε.
    - fast: explain an optimised copy of the model (BatchNorm folded into convolutions,
      channels-last, bfloat16 on CUDA where its gradients correlate ≥ 0.99 with float32),
      with glibc's malloc keeping freed blocks for the call; see `smoothgrad.fast`. The
      clean prediction (the default target) uses the model itself.
    - progress: called after each pass with the number of samples it added (progress bars).

    The model is explained in eval mode with frozen parameters and is restored afterwards.
    """
    explain = resolve_method(method)
    _check_input(x)
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    limit = _check_samples(samples, max_samples, tol, aggregate)
    if noise is not None and stdev is not None:
        raise ValueError("give either noise (relative) or stdev (absolute), not both")
    for name, value in (("noise", noise), ("stdev", stdev)):
        if value is not None and not (isinstance(value, int | float) and 0 <= value < math.inf):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")

    x = x.detach()
    with explaining(model), torch.no_grad(), contextlib.ExitStack() as fast_session:
        resolved = targets.resolve(target, model(x))
        sigma = noise_scale(x, noise, stdev)
        if not sigma.any():
            limit = 1
        runner = model
        if fast:
            from smoothgrad.fast import prepare, reusing_freed_memory
            runner = prepare(model, x, resolved)
            fast_session.enter_context(reusing_freed_memory())
        tuner = None
        if batch_size == "auto":
            tuner = _tuner(model, method, x, fast)
            if tuner.cost and limit * x.shape[0] < tuner.rows:
                tuner.finish()  # calls this size no longer fill a pass at the next size
            rows = tuner.rows
            if (x.shape[0] > tuner.least or tuner.finished or samples == "auto"
                    or limit * x.shape[0] <= rows):
                tuner = None  # nothing to learn: several parts, done, or no full passes
        else:
            rows = batch_size
        parts = [slice(i, min(i + rows, x.shape[0])) for i in range(0, x.shape[0], rows)]
        moments = [RunningMoments(x[part].shape, device=x.device, fourth=aggregate in
                                  ("square", "var")) for part in parts]
        flips = torch.zeros(x.shape[0], device=x.device)
        step = max(1, rows // x.shape[0])
        done = 0
        while done < limit:
            if tuner is not None:
                step = max(1, tuner.rows // x.shape[0])
                started = tuner.clock(x.device)
            boundary = (done // AUTO_STEP + 1) * AUTO_STEP if samples == "auto" else limit
            count = min(step, boundary - done, limit - done)
            noise_k = standard_normal(seed, range(done, done + count), x.shape[1:],
                                      antithetic=antithetic, device=x.device, dtype=x.dtype)
            try:
                for part, stats in zip(parts, moments, strict=True):
                    part_target = resolved if callable(resolved) else resolved[part]
                    flips[part] += _run_chunk(runner, explain, x[part], part_target,
                                              sigma[part], noise_k, stats)
            except torch.cuda.OutOfMemoryError:
                if tuner is None or step == 1:
                    raise
                tuner.out_of_memory(count * x.shape[0])  # one part: nothing was merged yet
                continue
            if tuner is not None:
                tuner.record(step * x.shape[0], count * x.shape[0],
                             tuner.clock(x.device) - started)
            done += count
            if progress is not None:
                progress(count)
            if samples == "auto" and done % AUTO_STEP == 0 and _worst_error(
                    moments, aggregate) <= tol:
                break
        worst = _worst_error(moments, aggregate) if samples == "auto" and done == limit else 0
        if worst > tol:
            warnings.warn(f"samples='auto' stopped at max_samples={limit} with relative error "
                          f"{worst:.3g} > tol={tol}: the map has not converged", stacklevel=2)
    stderr = torch.cat([m.stderr(aggregate) for m in moments]).to(x.dtype)
    return SmoothResult(
        attribution=torch.cat([m.aggregate(aggregate) for m in moments]).to(x.dtype),
        stderr=stderr if sigma.any() else torch.zeros_like(stderr),
        samples=done,
        target=None if callable(resolved) else resolved,
        sigma=sigma,
        flip_rate=None if callable(resolved) else flips / done,
        aggregate=aggregate,
    )


def _run_chunk(
    model: nn.Module, explain: Method, x: Tensor, target: targets.Target, sigma: Tensor,
    noise: Tensor, moments: RunningMoments,
) -> Tensor:
    """Explain the noisy copies x + σ·noise[k] in one pass; return flips per example."""
    count, shape = noise.shape[0], x.shape[1:]
    scale = sigma.view(1, -1, *([1] * len(shape)))
    batch = (x.unsqueeze(0) + scale * noise.unsqueeze(1)).reshape(-1, *shape)
    repeated = target if callable(target) else target.repeat(count)
    with targets.recording_outputs() as recorded:
        attribution = explain(model, batch, repeated)
    if not isinstance(attribution, Tensor) or attribution.shape != batch.shape:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else attribution
        raise ValueError(f"method must return a tensor shaped like its input "
                         f"{tuple(batch.shape)}, got {got}")
    moments.update(attribution.detach().reshape(count, *x.shape))
    if callable(repeated):
        return torch.zeros(x.shape[0], device=x.device)
    output = next((out for given, out in recorded  # a forward pass on exactly this batch
                   if given.shape == batch.shape and given.data_ptr() == batch.data_ptr()), None)
    if output is None:
        output = model(batch)
    flipped: Tensor = (output.argmax(dim=1) != repeated).view(count, -1).sum(dim=0)
    return flipped.to(x.device).float()


def _worst_error(moments: list[RunningMoments], aggregate: str) -> float:
    return max(float(_relative_error(m.stderr(aggregate), m.aggregate(aggregate)).max())
               for m in moments)


def _relative_error(stderr: Tensor, value: Tensor) -> Tensor:
    """‖stderr‖ / ‖noise-free map‖ per example; inf where the noise is as large as the map.

    The estimate's own noise inflates ‖value‖² by about ‖stderr‖², so the map's size is
    taken as √(‖value‖² − ‖stderr‖²); dividing by ‖value‖ itself reads low exactly when the
    error is large (0.77 where 1.18 was measured, see EVALUATION.md).
    """
    error = stderr.flatten(1).double().square().sum(dim=1)
    signal = value.flatten(1).double().square().sum(dim=1) - error
    ratio = (error / signal.clamp(min=torch.finfo(torch.float64).tiny)).sqrt()
    return torch.where(error == 0, 0.0, torch.where(signal > 0, ratio, math.inf))


def resolve_method(method: str | Method | Any) -> Method:
    """A base method from a name, a callable, or a Captum `Attribution` object."""
    if isinstance(method, str):
        if method not in BY_NAME:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(BY_NAME)}")
        return BY_NAME[method]
    attribute: Callable[..., Tensor] | None = getattr(method, "attribute", None)
    if callable(attribute):
        return lambda model, x, target: attribute(x, target=target)
    if callable(method):
        return method
    raise TypeError(f"method must be a name, a callable or a Captum Attribution, "
                    f"not {type(method).__name__}")


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


def _tuner(model: nn.Module, method: object, x: Tensor, fast: bool) -> BatchTuner:
    key = (x.device, tuple(x.shape[1:]), x.dtype, fast,
           method if isinstance(method, str) else id(method))
    tuners = _TUNERS.setdefault(model, {})
    if key not in tuners:
        least, most = _SIZE_RANGE.get(x.device.type, (2, 64))
        tuners[key] = BatchTuner(default_batch_size(x.device), least, most)
    return tuners[key]


def _check_input(x: object) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype} "
                        "(convert images with x.float() and the model's preprocessing)")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch shaped (N, ...), got {tuple(x.shape)}; "
                         "add a batch dimension with x[None]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")


def _check_samples(samples: object, max_samples: int, tol: float, aggregate: str) -> int:
    if samples == "auto":
        if not (isinstance(tol, int | float) and tol > 0):
            raise ValueError(f"tol must be a number > 0, got {tol!r}")
        samples = max_samples
        name = "max_samples"
    else:
        name = "samples"
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{name} must be a positive int{' or auto' * (name == 'samples')}, "
                         f"got {samples!r}")
    if aggregate == "var" and samples < 2:
        raise ValueError("aggregate 'var' needs samples >= 2")
    return samples
