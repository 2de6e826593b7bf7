"""Vanilla gradient and gradient × input.

Every base method takes the target forms and model outputs `smooth` takes (see
`smoothgrad.methods.base.explained_score`): here an int, a tensor, a Hugging Face model.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    >>> gradient(model, torch.zeros(1, 2), 1)
    tensor([[3., 4.]])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.methods.base import Attributed, BaseMethod, explained_score

__all__ = ["gradient", "input_gradient", "input_x_gradient"]

GraphEdit = Callable[[Any], "Mapping[str, Any] | None"]
"""Receives the score's `grad_fn` before the backward pass; returns notes for the result."""


def input_gradient(
    model: nn.Module, x: Tensor, target: object, edit_graph: GraphEdit | None = None
) -> Attributed:
    """d score / d x for each row, computed for the input only (no weight gradients).

    `target` is any form `smooth` takes (None: each row's argmax). The model sees a copy of
    `x`, so one that edits its input in place (`x.sub_(…)`, a first `nn.ReLU(inplace=True)`)
    changes neither `x` nor the gradient's leaf. `edit_graph`, if given, receives the score's
    `grad_fn` before the backward pass (guided backprop uses it to hook the graph of this one
    pass) and its notes go into the result.
    """
    leaf = x.detach().requires_grad_(True)
    notes = None
    with torch.enable_grad():
        output, scores = explained_score(model, leaf.clone(), target)
        total = scores.sum()
        if edit_graph is not None:
            notes = edit_graph(total.grad_fn)
        (grad,) = torch.autograd.grad(total, leaf)
    return Attributed(grad, output.detach(), notes)


@BaseMethod
def gradient(model: nn.Module, x: Tensor, target: object) -> Attributed:
    """The vanilla gradient of the target score with respect to the input.

    target: None (each row's argmax), an int, N ints (list, tensor, NumPy), a class name
    where the model has labels, or a callable `output -> (rows,)`; the model may return a
    tensor, a tuple, a dict or a `ModelOutput` (its logits), as for `smooth`.
    """
    return input_gradient(model, x, target)


@BaseMethod
def input_x_gradient(model: nn.Module, x: Tensor, target: object) -> Attributed:
    """Gradient × input (Shrikumar et al. 2016); targets and outputs as for `gradient`."""
    grad = input_gradient(model, x, target)
    return Attributed(x * grad.map, grad.output, grad.notes)
