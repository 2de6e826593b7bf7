"""DeepLIFT with the rescale rule (Shrikumar et al. 2017), as a modified gradient.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> x = torch.randn(2, 3)
    >>> a = deeplift(model, x, torch.ones(2, dtype=torch.long))
    >>> expected = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    >>> torch.allclose(a.sum(dim=1), expected, atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothgrad.overrides import rescaling
from smoothgrad.targets import Target, score

__all__ = ["deeplift"]


def deeplift(
    model: nn.Module, x: Tensor, target: Target, *, baseline: Tensor | None = None
) -> Tensor:
    """(x − baseline) × the rescale-rule multipliers of the target score.

    At every elementwise nonlinearity (ReLU and its variants, sigmoid, tanh, GELU, …, in any
    form: module, functional or in-place) the local derivative is replaced by Δy/Δx between
    the input and the baseline pass; linear layers keep their gradient. On networks of linear
    layers, ReLUs and average pooling the attributions sum to f(x) − f(baseline) exactly (to
    float precision). Max pooling and softmax keep the plain gradient, with a warning.
    `baseline` (zeros by default) broadcasts against `x`.
    """
    base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    stacked = torch.cat([x.detach(), base]).requires_grad_(True)
    with torch.enable_grad():
        with rescaling(stacked.shape[0]):
            output = model(stacked)
        total = score(output[: x.shape[0]], target).sum()
        (grad,) = torch.autograd.grad(total, stacked)
    return (x - base) * grad[: x.shape[0]]
