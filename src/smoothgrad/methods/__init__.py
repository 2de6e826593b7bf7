"""Base attribution methods, each `(model, x, target) -> Tensor shaped like x`.

Each built-in is a `BaseMethod` (`smoothgrad.methods.base`): `method.with_output(model, x,
target)` returns `Attributed(map, output)`, a named tuple, the map first, where `output` is
the model's output on exactly the rows of `x` when the method computed it anyway (the
engine takes flip rates from it), else None. A user's callable may return the map or
`(map, output)`. The built-ins by name, their titles and how any method is read are in
`smoothgrad.methods.registry`; this package's names are the methods only.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> gradient(model, torch.ones(1, 3), torch.tensor([1])).shape
    torch.Size([1, 3])
    >>> attribution, output = gradient.with_output(model, torch.ones(1, 3), torch.tensor([1]))
    >>> output.shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from smoothgrad.methods.deeplift import deeplift
from smoothgrad.methods.grad_cam import grad_cam, grad_cam_plus_plus
from smoothgrad.methods.gradient import gradient, input_x_gradient
from smoothgrad.methods.guided_backprop import guided_backprop
from smoothgrad.methods.integrated_gradients import integrated_gradients

__all__ = [
    "deeplift",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
]
