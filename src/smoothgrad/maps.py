"""Attribution -> 2-D map: the one channel reduction shared by metrics, evaluation and viz.

Example:
    >>> import torch
    >>> a = torch.tensor([[[[1.0, -2.0]], [[3.0, -1.0]]]])  # (N=1, C=2, H=1, W=2)
    >>> to_map(a).tolist(), to_map(a, activation="abs").tolist()
    ([[[4.0, -3.0]]], [[[4.0, 3.0]]])
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = ["Activation", "Reduce", "to_map"]

Activation = Literal["abs", "positive", "negative", "all"]
"""Per element, before the channel reduction: |a|, max(a, 0), max(-a, 0), or a (signed)."""

Reduce = Literal["sum", "max"]
"""Channel reduction: the sum, or the value of largest magnitude (sign kept)."""


def to_map(attribution: Tensor, *, activation: Activation = "all",
           reduce: Reduce = "sum") -> Tensor:
    """A batch of attributions ``(N, C, H, W)`` as 2-D maps ``(N, H, W)``.

    ``activation`` is applied per element, then ``reduce`` collapses the channels (with
    ``sum``, positive + negative == abs and positive - negative == all). An ``(N, H, W)``
    input is taken as already reduced (only the activation applies).
    """
    if activation not in get_args(Activation):
        raise ValueError(f"activation must be one of {get_args(Activation)}, got {activation!r}")
    if reduce not in get_args(Reduce):
        raise ValueError(f"reduce must be one of {get_args(Reduce)}, got {reduce!r}")
    if attribution.ndim not in (3, 4):
        raise ValueError(f"expected an (N, C, H, W) or (N, H, W) map, got {attribution.shape}")
    values = attribution
    if activation == "abs":
        values = values.abs()
    elif activation == "positive":
        values = values.clamp(min=0)
    elif activation == "negative":
        values = (-values).clamp(min=0)
    if values.ndim == 3:
        return values
    if reduce == "sum":
        return values.sum(dim=1)
    largest = values.abs().argmax(dim=1, keepdim=True)
    return torch.gather(values, 1, largest).squeeze(1)
