"""Guided backpropagation (Springenberg et al. 2015), at every rectifier of the model.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU6(), torch.nn.Linear(2, 1))
    >>> guided_backprop(model, torch.ones(3, 2), 0).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from torch import Tensor, nn

from smoothgrad.methods.base import Attributed, BaseMethod
from smoothgrad.methods.gradient import input_gradient
from smoothgrad.overrides import guide_rectifiers

__all__ = ["guided_backprop"]


@BaseMethod
def guided_backprop(model: nn.Module, x: Tensor, target: object) -> Attributed:
    """The gradient with only positive gradients passed back through each rectifier.

    The rule is applied in the autograd graph of this one pass, so it covers every form a
    rectifier takes: `nn.ReLU` (in-place, one module reused), `F.relu`, `torch.relu_`,
    `nn.ReLU6`/`F.relu6`/`hardtanh`, `LeakyReLU`, `PReLU`, `threshold`. The rectifier-like
    ELU, SELU, CELU, GELU, SiLU, Mish, Softplus and Hardswish get the same rule (zero negative
    upstream gradient, then the local derivative): that is our extension of the method, said
    in a warning and listed in the notes as ``extended_rule``. Sigmoid, tanh, hard-sigmoid and
    clamp are left unmodified and named in a warning (notes: ``unmodified``). Nothing
    outlives the call. Targets and outputs: any form `smooth` takes (see `gradient`).
    """
    return input_gradient(model, x, target, edit_graph=guide_rectifiers)
