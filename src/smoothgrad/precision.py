"""Reduced precision for the fast path: detected per device, accepted per call by a check.

`reduced_dtype(device)` says which lower precision the hardware runs natively — bfloat16 on
a CPU with `avx512_bf16` or `amx_bf16` (oneDNN), bfloat16 or float16 on CUDA — or why none.
It reads the CPU's flags; it never assumes them. `decide` runs the check that accepts it
for one call: the same few noisy copies are explained in float32 and in the reduced
precision, and the reduced precision is used only when

- the two maps correlate ≥ `CORRELATION` (0.999) for every example, and
- the precision error the final map of n samples would carry is ≤ `ERROR_RATIO` (10 %) of
  that map's Monte-Carlo standard error, for every example.

The precision error of an n-sample map is the mean of n per-sample differences d_k, whose
expected squared size is ‖bias‖² + tr Σ_d / n: the bias is estimated without the check's
own noise (‖mean d‖² − tr S_d / k over k check samples, not below 0) and tr Σ_d by the
samples' variance S_d; the standard error is √(tr S / n) from the float32 samples' variance
S. `Precision` is the record of the decision (`SmoothResult.precision`).

`decide` is the reusable piece: anything that can explain the same noisy copies twice (the
engine's passes, a generation loop) gives it a function `dtype -> per-sample maps`.

Example:
    >>> import torch
    >>> maps = torch.randn(4, 2, 10)  # 4 noisy copies of 2 examples
    >>> same = decide(lambda dtype: maps, torch.device("cpu"), samples=50,
    ...               candidate=(torch.bfloat16, ""))
    >>> same.dtype, same.decision, same.error_ratio
    ('bfloat16', 'accepted', 0.0)
    >>> print(decide(lambda dtype: maps, torch.device("cpu"), samples=50,
    ...              candidate=(None, "not supported: no bfloat16 here")))
    float32 (not supported: no bfloat16 here)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CORRELATION", "ERROR_RATIO", "REMEMBER_BELOW", "Precision", "autocast",
           "candidate", "check_samples", "decide", "judge", "pearson", "reduced_dtype"]

CORRELATION = 0.999
"""The least per-example correlation of the check's reduced-precision map with float32's."""

ERROR_RATIO = 0.1
"""The largest precision error of the final map, as a share of its standard error."""

REMEMBER_BELOW = 0.99
"""A refusal whose map correlation is below this is a property of the model's arithmetic,
not of one input: the fast path remembers it for the model and does not check again."""

_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """Which precision a `fast=True` call ran in, and why.

    dtype: "float32" (the model's own precision) or the reduced one that ran ("bfloat16",
    "float16"). decision: "accepted", or why float32 ran ("not supported: ...", "map
    correlation 0.958 < 0.999", ...). correlation: the worst per-example Pearson
    correlation between the check's reduced-precision and float32 maps. error_ratio: the
    worst per-example precision error of the final map over its standard error. Both are
    None when nothing was measured. samples: noisy copies per example the check explained
    in each precision (0 when none).
    """

    dtype: str
    decision: str
    correlation: float | None = None
    error_ratio: float | None = None
    samples: int = 0

    @property
    def reduced(self) -> bool:
        """Whether the call ran in a reduced precision."""
        return self.dtype != "float32"

    def __str__(self) -> str:
        measured = "" if self.correlation is None else (
            f"; checked on {self.samples} samples: map correlation {self.correlation:.6f}, "
            f"precision error {_ratio(self.error_ratio)} of the standard error")
        verdict = "accepted" if self.reduced else self.decision
        return f"{self.dtype} ({verdict}{measured})"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def reduced_dtype(device: torch.device) -> tuple[torch.dtype | None, str]:
    """(the reduced precision `device` runs natively, or None; a reason when None)."""
    if device.type == "cpu":
        flags = _cpu_flags() & set(_CPU_FLAGS)
        if flags and torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            return torch.bfloat16, ""
        missing = "oneDNN is not available" if flags else (
            f"this CPU has neither {' nor '.join(_CPU_FLAGS)}")
        return None, f"not supported: bfloat16 needs native support ({missing})"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, ""
        if torch.cuda.get_device_capability(device) >= (7, 0):
            return torch.float16, ""
        return None, "not supported: this GPU has no bfloat16 or float16 tensor cores"
    return None, f"not supported on {device.type}"


def candidate(device: torch.device, samples: int, check: int
              ) -> tuple[torch.dtype | None, str]:
    """(the reduced precision a call of `samples` noisy copies checks, or None; why none):
    `reduced_dtype(device)`, unless the call has too few samples for a check (`check`, from
    `check_samples`, is 0).

    >>> candidate(torch.device("meta"), 50, 2)
    (None, 'not supported on meta')
    """
    dtype, why = reduced_dtype(device)
    if dtype is not None and not check:
        return None, f"too few samples ({samples}) to check a lower precision"
    return dtype, why


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[None]:
    """`torch.autocast` to `dtype` on `device` (off when dtype is None)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def check_samples(limit: int, *, antithetic: bool = False) -> int:
    """Noisy copies per example the check explains in each precision, for a call of `limit`
    samples (0: too few to check): 2 (4 in antithetic pairs), up to 4 % of the call's
    samples, at most 8. (With samples="auto", ask for min(max_samples, 100).)"""
    least = 4 if antithetic else 2
    count = min(8, max(least, limit // 25))
    count -= count % 2 if antithetic else 0
    return count if limit >= 2 * count else 0


def decide(
    attribute: Callable[[torch.dtype | None], Tensor],
    device: torch.device,
    *,
    samples: int,
    paired: bool = False,
    tol: float | None = None,
    candidate: tuple[torch.dtype | None, str] | None = None,
) -> Precision:
    """The precision a call of `samples` noisy copies per example should run in.

    `attribute(dtype)` explains the check's noisy copies — the same ones each time — in
    `dtype` (None: float32) and returns their maps, (k, N, ...) (k copies of N examples).
    `paired`: the copies come in antithetic pairs, whose averages are the independent units.
    `tol`: the call stops once the relative error reaches it (samples="auto", `samples`
    being its cap); the map it will produce is judged at the samples that takes.
    `candidate`: (the dtype to check, or None with the reason why none) instead of
    `reduced_dtype(device)`.
    """
    dtype, why = candidate if candidate is not None else reduced_dtype(device)
    if dtype is None:
        return Precision("float32", why)
    full = attribute(None)
    reduced = attribute(dtype)
    return judge(full, reduced, dtype, samples=samples, paired=paired, tol=tol)


def judge(full: Tensor, reduced: Tensor, dtype: torch.dtype, *, samples: int,
          paired: bool = False, tol: float | None = None) -> Precision:
    """The decision from the check's maps in float32 (`full`) and in `dtype` (`reduced`),
    both (k, N, ...) for the same noisy copies, for a final map of `samples` copies — or,
    with `tol` (samples="auto"), of as many as it takes every example's relative error to
    reach `tol` (estimated from `full`), at most `samples`."""
    name = str(dtype).removeprefix("torch.")
    k = full.shape[0]
    if not bool(torch.isfinite(reduced).all()):
        return Precision("float32", f"{name} gave non-finite values", samples=k)
    units_full, units_reduced = _units(full, paired), _units(reduced, paired)
    correlation = min(pearson(a, b) for a, b in zip(
        units_full.mean(0).flatten(1), units_reduced.mean(0).flatten(1), strict=True))
    variance = _trace_variance(units_full.flatten(2))
    final = torch.tensor(float(samples // 2 if paired else samples), dtype=torch.float64)
    if tol is not None:  # units until ‖stderr‖ / ‖map‖ <= tol for the slowest example
        signal = units_full.mean(0).flatten(1).square().sum(dim=1) - variance / k
        needed = variance / (tol**2 * signal.clamp(min=torch.finfo(torch.float64).tiny))
        final = needed.max().clamp(min=1.0, max=float(final)).ceil()
    difference = (units_reduced - units_full).flatten(2)
    spread = _trace_variance(difference)
    bias = (difference.mean(0).square().sum(dim=1) - spread / difference.shape[0]).clamp(min=0)
    error = (bias + spread / final).sqrt()
    stderr = (variance / final).sqrt()
    ratios = torch.where(error == 0, 0.0, error / stderr)
    ratio = float(ratios.max())
    record = {"correlation": correlation, "error_ratio": ratio, "samples": k}
    if not correlation >= CORRELATION:
        return Precision("float32", f"{name} refused: map correlation {correlation:.6f} < "
                         f"{CORRELATION}", **record)  # type: ignore[arg-type]
    if not ratio <= ERROR_RATIO:
        return Precision("float32", f"{name} refused: precision error {_ratio(ratio)} of the "
                         f"standard error > {ERROR_RATIO}", **record)  # type: ignore[arg-type]
    return Precision(name, "accepted", **record)  # type: ignore[arg-type]


def _units(maps: Tensor, paired: bool) -> Tensor:
    """The independent samples: the maps, or the averages of antithetic pairs."""
    maps = maps.double()
    return maps.reshape(-1, 2, *maps.shape[1:]).mean(1) if paired else maps


def _trace_variance(units: Tensor) -> Tensor:
    """Σ over elements of the unbiased variance over units, per example: (N,)."""
    return units.var(dim=0, correction=1).sum(dim=1)


def pearson(a: Tensor, b: Tensor) -> float:
    """The correlation of two tensors' elements (1 for two equal constants, 0 if undefined).

    >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])) > 0.99
    True
    """
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    if denominator == 0.0:
        return 1.0 if torch.equal(a, b) else 0.0
    value = float((a * b).sum()) / denominator
    return value if math.isfinite(value) else 0.0
