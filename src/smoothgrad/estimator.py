"""What an estimator of SmoothGrad is handed: one call of `smooth`, its options resolved.

`smooth` checks the call once and gives an estimator a `Call`; the estimator returns the
`SmoothResult`. Two implement the interface, both below the engine and importing nothing
above them: `smoothgrad.montecarlo` (the average over noisy copies) and
`smoothgrad.meanfield` (noisy forward passes, then one backward with expected gates).

Example:
    >>> import torch
    >>> from smoothgrad.montecarlo import monte_carlo
    >>> call = Call(torch.nn.Linear(4, 3).eval(), torch.randn(2, 4), SmoothConfig(samples=5))
    >>> monte_carlo(call).samples
    5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.config import SmoothConfig
from smoothgrad.inputs import Inputs
from smoothgrad.result import SmoothResult
from smoothgrad.tuning import BatchTuner

__all__ = ["Call", "Estimator", "Kept", "check_input"]


@dataclass
class Kept:
    """What an explainer keeps for its model from call to call: the pass-size tuners
    (`smoothgrad.tuning`) and the fast path's copies (`smoothgrad.fast`)."""

    tuners: dict[tuple[Any, ...], BatchTuner] = field(default_factory=dict)
    copies: dict[nn.Module, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One call of `smooth`: the model, x, the options (validated, the method with its fixed
    keyword options bound), the requested target, the inputs beyond one tensor, the method's
    per-example options, the caller's progress and callback functions, and what an
    explainer keeps for its model (None: the process-wide caches)."""

    model: nn.Module
    x: Any
    options: SmoothConfig
    target: targets.Requested = None
    inputs: Inputs = field(default_factory=Inputs)
    per_call: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[int], None] | None = None
    callback: Callable[[SmoothResult[Any]], None] | None = None
    kept: Kept | None = None


class Estimator(Protocol):
    """An estimator: the `SmoothResult` of one call."""

    def __call__(self, call: Call) -> SmoothResult[Any]: ...


def check_input(x: object) -> None:
    """Refuse an x that is not a finite, non-empty floating batch, naming what is wrong."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
    if x.is_meta:
        raise ValueError("x is on the meta device, which holds no values: create it (and the "
                         "model) on a real device, e.g. x.to_empty(device='cpu') then fill "
                         "it, or model.to_empty(device=...) and load the weights")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype} "
                        "(convert images with x.float() and the model's preprocessing)")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch shaped (N, ...), got {tuple(x.shape)}; "
                         "add a batch dimension with x[None]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
