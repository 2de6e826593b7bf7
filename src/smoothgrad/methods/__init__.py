"""Base attribution methods, each `(model, x, target) -> Tensor shaped like x`.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> gradient(model, torch.ones(1, 3), torch.tensor([1])).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from smoothgrad.methods.deeplift import deeplift
from smoothgrad.methods.gradient import gradient, input_x_gradient
from smoothgrad.methods.guided_backprop import guided_backprop
from smoothgrad.methods.integrated_gradients import integrated_gradients
from smoothgrad.targets import Target

__all__ = [
    "BY_NAME",
    "Method",
    "deeplift",
    "gradient",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
]

Method = Callable[[nn.Module, Tensor, Target], Tensor]

BY_NAME: dict[str, Method] = {
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "guided_backprop": guided_backprop,
    "integrated_gradients": integrated_gradients,
    "deeplift": deeplift,
}
"""The built-in base methods by name."""
