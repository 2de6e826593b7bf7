"""A Captum `Attribution` object used as a base method, with its keyword arguments.

Captum's `attribute` takes options a base method does not (`GradientShap` needs
`baselines`, `Occlusion` needs `sliding_window_shapes`): `smooth(..., method_kwargs=...)`
passes them on. Captum accepts class indices as targets, not a function of the output, so a
callable target is given to it as a model that returns that one score (target 0). When
`smooth` explains through a wrapper (several inputs, forward arguments, noise at a layer),
Captum's forward function is that wrapper for the call; the object is restored afterwards.

Example:
    >>> import torch
    >>> from captum.attr import InputXGradient
    >>> model = torch.nn.Linear(3, 2)
    >>> explain = captum_method(InputXGradient(model))
    >>> explain(model, torch.ones(1, 3), lambda out: out[:, 1] - out[:, 0]).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.methods.base import scores
from smoothgrad.outputs import pick

__all__ = ["captum_method"]

WRAPS = "wrapped_model"
"""The attribute a wrapper module sets to the user's model (see `smoothgrad.inputs`)."""


def captum_method(method: Any) -> Callable[..., Tensor]:
    """`method.attribute` as a base method `(model, x, target, **options) -> map`.

    The target takes every form `smooth` takes (`smoothgrad.targets`; None is the argmax at
    x, which costs one forward pass), and the model's output is read as `smooth` reads it
    (`smoothgrad.outputs.pick`: a `ModelOutput`'s logits), whatever Captum would make of it.
    """
    attribute: Callable[..., Tensor] = method.attribute
    absolute = type(method).__name__ == "Saliency"

    def captum(model: nn.Module, x: Tensor, target: object, **options: Any) -> Tensor:
        if absolute and options.get("abs", True):
            warnings.warn("Captum's Saliency returns |gradient| (its abs=True default), so "
                          "this is SmoothGrad of the absolute gradient; use "
                          "method='gradient' for the signed one", stacklevel=2)
        if target is None:
            with torch.no_grad():
                target = targets.resolve(None, scores(model, x.clone()))
        resolved = targets.as_indices(target, x.shape[0], targets.labels_of(model))
        with _forwarding(method, model, resolved) as given:
            return attribute(x, target=given, **options)

    return captum


@contextmanager
def _forwarding(method: Any, model: nn.Module, target: Any) -> Iterator[Any]:
    """Captum's target for `target`, with its forward function swapped for the call: the
    wrapper `smooth` explains through if any, reading outputs as `smooth` does, scoring a
    callable target."""
    original = getattr(method, "forward_func", None)
    if original is None:
        if callable(target):
            raise TypeError("target: a callable target needs a Captum Attribution with a "
                            "forward_func")
        yield target
        return
    inner: Callable[..., Any] = model if getattr(model, WRAPS, None) is not None else original

    def forward(*args: Any, **kwargs: Any) -> Tensor:
        output = pick(inner(*args, **kwargs))
        return target(output).unsqueeze(1) if callable(target) else output

    method.forward_func = forward
    try:
        yield 0 if callable(target) else target
    finally:
        method.forward_func = original
