"""An explainer object for repeated calls: what belongs to the model is bound once.

`SmoothGrad(model, method=..., config=..., layer=..., output=...)` holds the model, the
smoothing options, the inputs that describe the model (the layer noised, how its output is
read) and what is learnt about the model (the tuned pass sizes and the fast path's
copies, kept on the object instead of the process-wide caches); `explainer(x, target=...,
forward_kwargs=...)` explains one batch with what comes with the data. This is the split
Captum makes between an `Attribution`'s construction and its `attribute` call.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 3)).eval()
    >>> explainer = sg.SmoothGrad(model, method="input_x_gradient", samples=10)
    >>> result = explainer(torch.randn(2, 4), target=1)
    >>> result.method, result.samples, result.target.tolist()
    ('input_x_gradient', 10, [1, 1])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn
from typing_extensions import Unpack

from smoothgrad import targets
from smoothgrad.config import SmoothConfig, SmoothOptions, configured
from smoothgrad.engine import X, checked_call, estimate
from smoothgrad.estimator import Kept
from smoothgrad.inputs import Inputs
from smoothgrad.outputs import OutputFn
from smoothgrad.result import SmoothResult

__all__ = ["SmoothGrad"]


class SmoothGrad:
    """SmoothGrad of one model, bound once and called per batch.

    - model, method, layer, output: what is explained and how the model is read (see
      `smooth` and `Inputs`); config and the keywords: the `SmoothConfig` of every call
      (keywords replace config's fields, as in `smooth`).
    - Called as `explainer(x, target=None, *, forward_kwargs=None, noise_mask=None,
      noise_range=None, method_kwargs=None, progress=None, callback=None, **overrides)`:
      the data of one call; `overrides` replace options for this call only.
    """

    def __init__(self, model: nn.Module, config: SmoothConfig | None = None, *,
                 layer: nn.Module | None = None, output: OutputFn | None = None,
                 **overrides: Unpack[SmoothOptions]) -> None:
        self.model = model
        self.config = configured(config, overrides, caller="SmoothGrad",
                                 others=("layer", "output"))
        self.inputs = Inputs(layer=layer, output=output)
        self.kept = Kept()
        """What is learnt about the model: its pass-size tuners and fast copies."""

    def __call__(self, x: X, target: targets.Requested = None, *,
                 forward_kwargs: Mapping[str, Any] | None = None,
                 noise_mask: Tensor | None = None, noise_range: Tensor | None = None,
                 method_kwargs: Mapping[str, Any] | None = None,
                 progress: Callable[[int], None] | None = None,
                 callback: Callable[[SmoothResult], None] | None = None,
                 **overrides: Unpack[SmoothOptions]) -> SmoothResult[X]:
        """The `SmoothResult` of the batch `x` (see `smooth`)."""
        data = {"forward_kwargs": forward_kwargs, "noise_mask": noise_mask,
                "noise_range": noise_range}
        inputs = self.inputs.given({key: value for key, value in data.items()
                                    if value is not None})
        call, method = checked_call(self.model, x, self.config, target, inputs, method_kwargs,
                                    progress, callback, overrides)
        return estimate(dataclasses.replace(call, kept=self.kept), method)

    def __repr__(self) -> str:
        return f"SmoothGrad({type(self.model).__name__}, {self.config!r})"
