"""Leave the user's model exactly as it was handed over.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2).eval()
    >>> with explaining(model):
    ...     assert not model.weight.requires_grad
    >>> model.weight.requires_grad
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["explaining"]


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode with frozen parameters for the block, then restore it.

    Every module's training flag and every parameter's `requires_grad` come back as they
    were, also when the block raises. A model in training mode is explained in eval mode
    (so dropout is off and BatchNorm statistics do not drift from the noisy copies), with
    a warning.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    if any(training for _, training in modes):
        warnings.warn(
            "model is in training mode: explaining it in eval mode for this call "
            "(its mode is restored afterwards)",
            stacklevel=4,
        )
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)
