"""Integrated gradients (Sundararajan et al. 2017) with Gauss-Legendre quadrature.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> x = torch.randn(4, 3)
    >>> a = integrated_gradients(model, x, torch.zeros(4, dtype=torch.long), steps=8)
    >>> expected = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    >>> torch.allclose(a.sum(dim=1), expected, atol=1e-5)
    True
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from smoothgrad.methods.gradient import input_gradient
from smoothgrad.targets import Target

__all__ = ["integrated_gradients"]


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: Target,
    *,
    steps: int = 50,
    baseline: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """(x − baseline) × the path integral of the gradient from `baseline` to `x`.

    The integral uses `steps` Gauss-Legendre nodes on [0, 1] (Captum's default rule), all
    evaluated in one batch of `steps × N` rows unless `batch_size` caps the rows per pass.
    `baseline` (zeros by default) broadcasts against `x`, so one example's shape serves a
    batch of noisy copies.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.as_tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
    weights_t = torch.as_tensor(weights / 2, dtype=x.dtype, device=x.device)
    delta = x - base
    shape = (-1,) + (1,) * x.dim()
    path = (base + alphas.view(shape) * delta).reshape(steps * x.shape[0], *x.shape[1:])
    repeated = target if callable(target) else target.repeat(steps)
    rows = path.shape[0] if batch_size is None else batch_size
    grads = torch.cat([
        input_gradient(model, path[i:i + rows],
                       repeated if callable(repeated) else repeated[i:i + rows])
        for i in range(0, path.shape[0], rows)
    ])
    integral = (weights_t.view(shape) * grads.view(steps, *x.shape)).sum(dim=0)
    return delta * integral
