"""What a base method returns: its map and the model output it computed on the same rows.

`BaseMethod` wraps a built-in method so that calling it gives the map alone.

Example:
    >>> import torch
    >>> Attributed(torch.zeros(2, 3), None).output is None
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor, nn

__all__ = ["Attributed", "BaseMethod"]


class Attributed(NamedTuple):
    """map: the attribution, shaped like the method's input. output: the model's output on
    exactly those rows (detached) when the method evaluated it, else None (the engine then
    runs one forward pass for flip rates)."""

    map: Tensor
    output: Tensor | None


class BaseMethod:
    """A built-in base method: calling it gives the map (a tensor shaped like x), as any
    method callable does; `with_output` gives `Attributed(map, output)`, which `smooth` uses
    to take flip rates from the output the method computed anyway.

    Example:
        >>> import torch
        >>> double = BaseMethod(lambda model, x, target: Attributed(2 * x, None))
        >>> double(None, torch.ones(1, 2), None)
        tensor([[2., 2.]])
    """

    def __init__(self, explain: Callable[..., Attributed]) -> None:
        self.with_output = explain
        functools.update_wrapper(self, explain)

    def __call__(self, model: nn.Module, x: Tensor, target: Any, **options: Any) -> Tensor:
        return self.with_output(model, x, target, **options).map
