"""Which output is explained: class indices or a custom score, converted in one place.

Every entry point (`smooth`, each base method, the metrics) takes the same target forms and
converts them here: None (each example's argmax), an int, N ints (a list, a tensor, a NumPy
array), a class name or N names where the model's labels are known (`labels_of`), or a
callable `output -> (rows,)`.

Example:
    >>> import torch
    >>> output = torch.tensor([[0.1, 2.0], [3.0, 0.5]])
    >>> score(output, torch.tensor([1, 0]))
    tensor([2., 3.])
    >>> resolve(1, output), resolve(None, output), resolve("b", output, labels=["a", "b"])
    (tensor([1, 1]), tensor([1, 0]), tensor([1, 1]))
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Requested", "Resolved", "ScoreFn", "as_indices", "check_logits", "labels_of",
           "resolve", "score"]

ScoreFn = Callable[[Tensor], Tensor]
"""A custom score: the model's output -> one score per row, `(rows,)`."""

Resolved = Tensor | ScoreFn
"""What a base method works with: a LongTensor of one class per row, or a `ScoreFn`."""

Requested = int | str | Sequence[int] | Sequence[str] | Tensor | np.ndarray | ScoreFn | None
"""What a caller may ask for: None (the argmax), class indices or names, or a `ScoreFn`."""

_FORMS = "None, an int, N ints, a class name (where the model has labels) or a callable"


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


def resolve(target: object, output: Tensor, labels: Sequence[str] | None = None) -> Resolved:
    """The caller's `target` (`Requested`) for the rows of `output`, the model's (N, classes)
    scores on the explained examples: a checked LongTensor (N,) on its device, or a callable.

    None explains each row's argmax; class names need `labels` (see `labels_of`).
    """
    converted = as_indices(target, output.shape[0] if output.dim() else 0, labels)
    if callable(converted):
        return converted
    check_logits(output)
    if converted is None:
        return output.argmax(dim=1)
    classes = output.shape[1]
    bad = (converted < 0) | (converted >= classes)
    if bad.any():
        raise ValueError(f"target {converted[bad][0].item()} is out of range: "
                         f"the model has {classes} classes (0..{classes - 1})")
    return converted.to(output.device)


def as_indices(target: object, n: int,
               labels: Sequence[str] | None = None) -> Tensor | ScoreFn | None:
    """`target` as a LongTensor (n,) of classes (unchecked against a model), a callable, or
    None (the argmax, which needs the model's output); any other form is refused."""
    if callable(target) and not isinstance(target, Tensor):
        return target
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"target must be {_FORMS}, not a bool")
    if isinstance(target, str) or (isinstance(target, Sequence) and target
                                   and all(isinstance(t, str) for t in target)):
        target = _named(target, labels)
    if isinstance(target, np.generic | np.ndarray):
        target = torch.as_tensor(np.asarray(target))
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    if not isinstance(target, Tensor | Sequence):
        raise TypeError(f"target must be {_FORMS}, not {type(target).__name__}")
    try:
        indices = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"target must be {_FORMS}; got a {type(target).__name__} that is "
                        "not a list of ints") from None
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, not {indices.dtype}")
    indices = indices.reshape(-1).long() if indices.dim() == 0 else indices.long()
    if indices.dim() != 1 or indices.shape[0] not in (1, n):
        raise ValueError(f"target must hold 1 or {n} class indices (one per example), "
                         f"got shape {tuple(indices.shape)}")
    return indices.expand(n).clone()


def _named(target: str | Sequence[str], labels: Sequence[str] | None) -> list[int]:
    """Class names -> indices in `labels`, ignoring case."""
    names = [target] if isinstance(target, str) else list(target)
    if labels is None:
        raise ValueError(f"target: {names[0]!r} is a class name, but the model has no labels "
                         "(a `labels` list or a Hugging Face config's id2label); pass the class "
                         "index instead")
    folded = [label.casefold() for label in labels]
    indices = []
    for name in names:
        if name.casefold() not in folded:
            close = difflib.get_close_matches(name, list(labels), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"target: unknown class {name!r}{hint}")
        indices.append(folded.index(name.casefold()))
    return indices


def labels_of(model: object) -> list[str] | None:
    """The model's class names by index: its `labels` list (`smoothgrad.models`), or a Hugging
    Face config's `id2label`; None when it has neither.

    Example:
        >>> labels_of(torch.nn.Linear(2, 3)) is None
        True
    """
    labels = getattr(model, "labels", None)
    if isinstance(labels, Sequence) and labels and all(isinstance(x, str) for x in labels):
        return list(labels)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, Mapping) and id2label:
        by_index = {int(key): str(value) for key, value in id2label.items()}
        if set(by_index) == set(range(len(by_index))):
            return [by_index[i] for i in range(len(by_index))]
    inner = getattr(model, "wrapped_model", None)  # smoothgrad's own wrappers
    return labels_of(inner) if isinstance(inner, nn.Module) and inner is not model else None


def check_logits(output: object) -> None:
    """Refuse an output that is not (N, classes) logits, pointing at a callable target."""
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"model output must be (N, classes) to pick a class target, got {got}; "
                         "pass a callable target (output -> one score per example) instead")
