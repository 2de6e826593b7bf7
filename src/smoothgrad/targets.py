"""Which output is explained: class indices or a custom score, resolved once per call.

Example:
    >>> import torch
    >>> output = torch.tensor([[0.1, 2.0], [3.0, 0.5]])
    >>> score(output, torch.tensor([1, 0]))
    tensor([2., 3.])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

__all__ = ["Target", "forward", "recording_outputs", "resolve", "score"]

ScoreFn = Callable[[Tensor], Tensor]
Target = Tensor | ScoreFn
"""What a base method receives: a LongTensor of one class per row, or `output -> (rows,)`."""

_recorded: ContextVar[list[tuple[Tensor, Tensor]] | None] = ContextVar(
    "smoothgrad_recorded", default=None)


def score(output: Tensor, target: Target) -> Tensor:
    """The explained score of each row of `output`, shape `(rows,)`."""
    rows = output.shape[0]
    if callable(target):
        scores = target(output)
        if not isinstance(scores, Tensor) or scores.shape != (rows,):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"target: the callable must return one score per example, "
                             f"shape ({rows},); it returned {got}")
        return scores
    _check_logits(output)
    return output.gather(1, target.reshape(-1, 1).to(output.device)).squeeze(1)


def forward(model: nn.Module, x: Tensor) -> Tensor:
    """`model(x)`, also handed to the engine when it is recording outputs (for flip rates)."""
    output: Tensor = model(x)
    recorded = _recorded.get()
    if recorded is not None:
        recorded.append((x, output.detach()))
    return output


@contextmanager
def recording_outputs() -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Collect the (input, output) pairs of the forward passes that base methods run."""
    recorded: list[tuple[Tensor, Tensor]] = []
    token = _recorded.set(recorded)
    try:
        yield recorded
    finally:
        _recorded.reset(token)


def resolve(target: object, clean_output: Tensor) -> Target:
    """Turn the caller's `target` into what base methods receive.

    None explains each example's clean argmax; an int, a sequence or a tensor of N ints
    name classes; a callable `output -> (rows,)` scores any output (regression, custom).
    """
    if callable(target) and not isinstance(target, Tensor):
        return target
    _check_logits(clean_output)
    n, classes = clean_output.shape
    if target is None:
        return clean_output.argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, N ints or a callable, not a bool")
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


def _check_logits(output: Tensor) -> None:
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"model output must be (N, classes) to pick a class target, got {got}; "
                         "pass a callable target (output -> one score per example) instead")
