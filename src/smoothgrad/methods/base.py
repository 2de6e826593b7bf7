"""What a base method returns, and the one reading of outputs and targets they all share.

`Attributed` is a method's map, the model output it computed on the same rows and its notes
(what it measured or changed: DeepLIFT's summation gap, the rules guided backprop applied).
`BaseMethod` wraps a built-in method so that calling it gives the map alone. `scores` reads a
model's output in any form `smooth` takes (a tensor, a tuple, a dict or a Hugging Face
`ModelOutput`: `smoothgrad.outputs.pick`) and `explained_score` resolves any target form
(`smoothgrad.targets`) against it, so every method takes what `smooth` takes.

Example:
    >>> import torch
    >>> Attributed(torch.zeros(2, 3), None).output is None
    True
    >>> model = torch.nn.Linear(3, 2)
    >>> output, total = explained_score(model, torch.ones(4, 3), 1)
    >>> output.shape, total.shape
    (torch.Size([4, 2]), torch.Size([4]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.outputs import pick

__all__ = ["Attributed", "BaseMethod", "MeasuredWarning", "explained_score", "scores"]


class _MapOutput(NamedTuple):
    map: Tensor
    output: Tensor | None


class Attributed(_MapOutput):
    """map: the attribution, shaped like the method's input. output: the model's output on
    exactly those rows (detached) when the method evaluated it, else None (the engine then
    runs one forward pass for flip rates). It unpacks as ``(map, output)``; `notes` holds
    what the method measured or applied, by name (`smooth` gathers them into
    `SmoothResult.diagnostics`): ``deeplift_gap`` (one value per row), ``extended_rule``
    and ``unmodified`` (operation names)."""

    notes: Mapping[str, Any]

    def __new__(cls, map: Tensor, output: Tensor | None,
                notes: Mapping[str, Any] | None = None) -> Attributed:
        self = super().__new__(cls, map, output)
        self.notes = dict(notes or {})
        return self


class MeasuredWarning(UserWarning):
    """A warning about a measured value (DeepLIFT's summation gap): `key` is its text without
    the number, so `smooth` gives one warning per key per call, the one with the largest
    `value`, instead of one per pass.

    Example:
        >>> MeasuredWarning("gap 0.5", key="gap", value=0.5).value
        0.5
    """

    def __init__(self, message: str, *, key: str, value: float) -> None:
        super().__init__(message)
        self.key, self.value = key, value


def scores(model: nn.Module, x: Tensor) -> Tensor:
    """The model's scores for `x`, whatever form its output takes (`outputs.pick`)."""
    return pick(model(x))


def explained_score(model: nn.Module, x: Tensor, target: object) -> tuple[Tensor, Tensor]:
    """(the model's scores on x, the explained score of each row), `target` in any form
    `smooth` takes: None (each row's argmax), an int, N ints, class names (where the model
    has labels) or a callable."""
    output = scores(model, x)
    resolved = targets.resolve(target, output.detach(), targets.labels_of(model))
    return output, targets.score(output, resolved)


class BaseMethod:
    """A built-in base method: calling it gives the map (a tensor shaped like x), as any
    method callable does; `with_output` gives `Attributed(map, output, notes)`, which `smooth`
    uses to take flip rates from the output the method computed anyway.

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
