"""What a base method returns: its map and the model output it computed on the same rows.

Example:
    >>> import torch
    >>> Attributed(torch.zeros(2, 3), None).output is None
    True
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["Attributed"]


class Attributed(NamedTuple):
    """map: the attribution, shaped like the method's input. output: the model's output on
    exactly those rows (detached) when the method evaluated it, else None (the engine then
    runs one forward pass for flip rates)."""

    map: Tensor
    output: Tensor | None
