"""Vanilla gradient and gradient × input.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    >>> gradient(model, torch.zeros(1, 2), torch.tensor([1]))
    tensor([[3., 4.]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.methods.base import Attributed, BaseMethod
from smoothgrad.targets import Resolved, score

__all__ = ["gradient", "input_gradient", "input_x_gradient"]


def input_gradient(
    model: nn.Module, x: Tensor, target: Resolved, edit_graph: Callable[[Any], None] | None = None
) -> Attributed:
    """d score / d x for each row, computed for the input only (no weight gradients).

    The model sees a copy of `x`, so one that edits its input in place (`x.sub_(…)`, a first
    `nn.ReLU(inplace=True)`) changes neither `x` nor the gradient's leaf. `edit_graph`, if
    given, receives the score's `grad_fn` before the backward pass (guided backprop uses it
    to hook the graph of this one pass).
    """
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        output = model(leaf.clone())
        total = score(output, target).sum()
        if edit_graph is not None:
            edit_graph(total.grad_fn)
        (grad,) = torch.autograd.grad(total, leaf)
    return Attributed(grad, output.detach())


@BaseMethod
def gradient(model: nn.Module, x: Tensor, target: Resolved) -> Attributed:
    """The vanilla gradient of the target score with respect to the input."""
    return input_gradient(model, x, target)


@BaseMethod
def input_x_gradient(model: nn.Module, x: Tensor, target: Resolved) -> Attributed:
    """Gradient × input (Shrikumar et al. 2016)."""
    grad, output = input_gradient(model, x, target)
    return Attributed(x * grad, output)
