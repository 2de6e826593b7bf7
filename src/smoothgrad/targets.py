"""Which output is explained: class indices or a custom score, resolved once per call.

Example:
    >>> import torch
    >>> output = torch.tensor([[0.1, 2.0], [3.0, 0.5]])
    >>> score(output, torch.tensor([1, 0]))
    tensor([2., 3.])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Requested", "Resolved", "ScoreFn", "check_logits", "resolve", "score"]

ScoreFn = Callable[[Tensor], Tensor]
"""A custom score: the model's output -> one score per row, `(rows,)`."""

Resolved = Tensor | ScoreFn
"""What a base method receives: a LongTensor of one class per row, or a `ScoreFn`."""

Requested = int | Sequence[int] | Tensor | np.ndarray | ScoreFn | None
"""What a caller may ask for: None (the clean argmax), class indices, or a `ScoreFn`."""


def score(output: Tensor, target: Resolved) -> Tensor:
    """The explained score of each row of `output`, shape `(rows,)`."""
    rows = output.shape[0]
    if callable(target):
        scores = target(output)
        if not isinstance(scores, Tensor) or scores.shape != (rows,):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"target: the callable must return one score per example, "
                             f"shape ({rows},); it returned {got}")
        return scores
    check_logits(output)
    return output.gather(1, target.reshape(-1, 1).to(output.device)).squeeze(1)


def resolve(target: object, clean_output: Tensor) -> Resolved:
    """Turn the caller's `target` (`Requested`) into what base methods receive.

    None explains each example's clean argmax; an int, a sequence, a tensor or a NumPy array
    of N ints (NumPy integers and 0-d tensors included) name classes; a callable
    `output -> (rows,)` scores any output (regression, custom).
    """
    if callable(target) and not isinstance(target, Tensor):
        return target
    check_logits(clean_output)
    n, classes = clean_output.shape
    if target is None:
        return clean_output.argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, N ints or a callable, not a bool")
    if isinstance(target, np.generic | np.ndarray):
        target = torch.as_tensor(np.asarray(target))
    if isinstance(target, int):
        indices = torch.full((n,), target, dtype=torch.long)
    elif isinstance(target, Tensor | Sequence):
        indices = torch.as_tensor(target)
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, not {indices.dtype}")
        indices = indices.reshape(-1).long() if indices.dim() == 0 else indices.long()
        if indices.dim() != 1 or indices.shape[0] not in (1, n):
            raise ValueError(f"target must hold 1 or {n} class indices (one per example), "
                             f"got shape {tuple(indices.shape)}")
        indices = indices.expand(n).clone()
    else:
        raise TypeError(f"target must be None, an int, N ints or a callable, "
                        f"not {type(target).__name__}")
    bad = (indices < 0) | (indices >= classes)
    if bad.any():
        raise ValueError(f"target {indices[bad][0].item()} is out of range: "
                         f"the model has {classes} classes (0..{classes - 1})")
    return indices.to(clean_output.device)


def check_logits(output: object) -> None:
    """Refuse an output that is not (N, classes) logits, pointing at a callable target."""
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"model output must be (N, classes) to pick a class target, got {got}; "
                         "pass a callable target (output -> one score per example) instead")
