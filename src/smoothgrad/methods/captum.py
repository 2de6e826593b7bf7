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

from torch import Tensor, nn

from smoothgrad.targets import Resolved

__all__ = ["captum_method"]

WRAPS = "wrapped_model"
"""The attribute a wrapper module sets to the user's model (see `smoothgrad.inputs`)."""


def captum_method(method: Any) -> Callable[..., Tensor]:
    """`method.attribute` as a base method `(model, x, target, **options) -> map`."""
    attribute: Callable[..., Tensor] = method.attribute
    absolute = type(method).__name__ == "Saliency"

    def captum(model: nn.Module, x: Tensor, target: Resolved, **options: Any) -> Tensor:
        if absolute and options.get("abs", True):
            warnings.warn("Captum's Saliency returns |gradient| (its abs=True default), so "
                          "this is SmoothGrad of the absolute gradient; use "
                          "method='gradient' for the signed one", stacklevel=2)
        with _forwarding(method, model, target) as given:
            return attribute(x, target=given, **options)

    return captum


@contextmanager
def _forwarding(method: Any, model: nn.Module, target: Resolved) -> Iterator[Any]:
    """Captum's target for `target`, with its forward function swapped while needed."""
    original = getattr(method, "forward_func", None)
    forward = model if getattr(model, WRAPS, None) is not None else original
    if not callable(target):
        if forward is original:
            yield target
            return
    elif original is None:
        raise TypeError("target: a callable target needs a Captum Attribution with a "
                        "forward_func")
    if callable(target):
        inner: Callable[..., Tensor] = forward  # type: ignore[assignment]

        def scored(*args: Any, **kwargs: Any) -> Tensor:
            return target(inner(*args, **kwargs)).unsqueeze(1)

        forward = scored
    method.forward_func = forward
    try:
        yield 0 if callable(target) else target
    finally:
        method.forward_func = original
