"""Integrated gradients (Sundararajan et al. 2017) with Gauss-Legendre quadrature.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> x = torch.randn(4, 3)
    >>> a = integrated_gradients(model, x, 0, steps=8)
    >>> expected = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    >>> torch.allclose(a.sum(dim=1), expected, atol=1e-5)
    True
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.methods.base import Attributed, BaseMethod, scores
from smoothgrad.methods.gradient import input_gradient

__all__ = ["DEFAULT_STEPS", "integrated_gradients"]

DEFAULT_STEPS = 50
"""Quadrature nodes on the path unless `steps` says otherwise (Captum's default too)."""


@BaseMethod
def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: object,
    *,
    steps: int = DEFAULT_STEPS,
    baseline: Tensor | None = None,
    batch_size: int | None = None,
) -> Attributed:
    """(x − baseline) × the path integral of the gradient from `baseline` to `x`.

    The integral uses `steps` Gauss-Legendre nodes on [0, 1] (Captum's default rule): the
    `steps × N` path points go through the model in passes of at most `batch_size` rows (all
    in one pass when None), each built only when its pass runs, so memory is bounded by
    `batch_size` whatever `steps` is (`smooth` sets it to its own pass size).
    `baseline` (zeros by default) broadcasts against `x`, so one example's shape serves a
    batch of noisy copies. The output is None: no path point is `x` itself, so flip rates
    need one forward pass of `x`, which `smooth` runs (deliberately: the only extra pass).
    Targets and outputs: any form `smooth` takes (see `gradient`); with target None the
    explained class is the argmax at `x`, which takes one forward pass of `x` (its output is
    then returned).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    output = None
    if target is None:
        with torch.no_grad():
            output = scores(model, x.clone())
        target = targets.resolve(None, output)
    else:
        target = targets.as_indices(target, x.shape[0], targets.labels_of(model))
    base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.as_tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
    weights_t = torch.as_tensor(weights / 2, dtype=x.dtype, device=x.device)
    delta = x - base
    n = x.shape[0]
    rows = steps * n if batch_size is None else batch_size
    per_pass = max(1, rows // n)  # whole steps per pass, or one step cut into row slices
    integral = torch.zeros_like(x)
    for first in range(0, steps, per_pass):
        k = min(per_pass, steps - first)
        shape = (k,) + (1,) * x.dim()
        for i in range(0, n, rows):
            j = min(i + rows, n)
            path = base[i:j] + alphas[first:first + k].view(shape) * delta[i:j]
            part = target if callable(target) else target[i:j].repeat(k)  # type: ignore[index]
            grad = input_gradient(model, path.reshape(k * (j - i), *x.shape[1:]), part).map
            integral[i:j] += (weights_t[first:first + k].view(shape)
                              * grad.view(k, j - i, *x.shape[1:])).sum(dim=0)
    return Attributed(delta * integral, output)
