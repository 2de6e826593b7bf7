"""The built-in base methods by name, their titles, and how any method is read.

`BY_NAME` maps each built-in's name to it (read-only); `resolve_method` turns any method (a
name, a callable, a Captum `Attribution` object) into one that `attributed` reads: a map,
or `Attributed(map, output)` — a named tuple, the map first (zennit's order is the reverse,
`(output, attribution)`). `rows_per_input` and `bounded` are what the engine needs to size
integrated gradients' passes.

Example:
    >>> sorted(BY_NAME)[:3], title("guided_backprop")
    (['deeplift', 'grad_cam', 'grad_cam_plus_plus'], 'Guided Backprop')
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn

from smoothgrad.methods.base import Attributed, BaseMethod
from smoothgrad.methods.captum import captum_method
from smoothgrad.methods.deeplift import deeplift
from smoothgrad.methods.grad_cam import grad_cam, grad_cam_plus_plus
from smoothgrad.methods.gradient import gradient, input_x_gradient
from smoothgrad.methods.guided_backprop import guided_backprop
from smoothgrad.methods.integrated_gradients import DEFAULT_STEPS, integrated_gradients
from smoothgrad.targets import Resolved

__all__ = ["BY_NAME", "TITLES", "Method", "attributed", "bounded", "resolve_method",
           "rows_per_input", "title"]

Method = Callable[[nn.Module, Tensor, Resolved],
                  "Attributed | tuple[Tensor, Tensor | None] | Tensor"]
"""A base method: `(model, x, target) -> (map, output or None)`, or just the map."""

BY_NAME: Mapping[str, BaseMethod] = MappingProxyType({
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "guided_backprop": guided_backprop,
    "integrated_gradients": integrated_gradients,
    "deeplift": deeplift,
    "grad_cam": grad_cam,
    "grad_cam_plus_plus": grad_cam_plus_plus,
})
"""The built-in base methods by name (read-only)."""

TITLES = {
    "gradient": "Gradient",
    "input_x_gradient": "Gradient × Input",
    "guided_backprop": "Guided Backprop",
    "integrated_gradients": "Integrated Gradients",
    "deeplift": "DeepLIFT",
    "grad_cam": "Grad-CAM",
    "grad_cam_plus_plus": "Grad-CAM++",
}
"""The built-in methods' names as figures, pages and printouts show them."""


def title(method: str) -> str:
    """A base method's name for titles: ``"guided_backprop"`` -> ``"Guided Backprop"``.

    >>> title("deeplift"), title("my_method")
    ('DeepLIFT', 'My method')
    """
    return TITLES.get(method, method.replace("_", " ").capitalize())


def resolve_method(method: str | Method | Any) -> Method:
    """A base method from a name, a callable, or a Captum `Attribution` object.

    Captum's `Saliency` returns |gradient| by default (its `abs=True`): it is kept as
    Captum defines it, with a warning saying so, since the object is the caller's choice;
    `method="gradient"` or `functools.partial(Saliency(model).attribute, abs=False)` gives
    the signed gradient.
    """
    if isinstance(method, str):
        if method not in BY_NAME:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(BY_NAME)}")
        return BY_NAME[method].with_output
    if isinstance(method, BaseMethod):
        return method.with_output
    if isinstance(method, functools.partial) and isinstance(method.func, BaseMethod):
        return functools.partial(method.func.with_output, *method.args, **method.keywords)
    if callable(getattr(method, "attribute", None)):
        return captum_method(method)
    if callable(method):
        return method
    raise TypeError(f"method must be a name, a callable or a Captum Attribution, "
                    f"not {type(method).__name__}")


def attributed(returned: object, rows: int) -> Attributed:
    """What a method returned, as `Attributed`: a tensor is the map with no output."""
    if isinstance(returned, Attributed):
        return returned
    if isinstance(returned, Tensor):
        return Attributed(returned, None)
    if isinstance(returned, tuple) and len(returned) == 2 and isinstance(returned[0], Tensor):
        output = returned[1]
        if output is not None and not (isinstance(output, Tensor) and output.dim() >= 1
                                       and output.shape[0] == rows):
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"method returned an output for {got} rows; it must be the "
                             f"model's output on the {rows} rows it was given, or None")
        return Attributed(returned[0], output)
    raise ValueError(f"method must return a tensor shaped like its input, or (map, output); "
                     f"got {type(returned).__name__}")


def _integrated(method: object) -> dict[str, Any] | None:
    """The keywords of `integrated_gradients` or a `functools.partial` of it, else None."""
    if method is integrated_gradients or method == "integrated_gradients":
        return {}
    if isinstance(method, functools.partial) and method.func in (
            integrated_gradients, integrated_gradients.with_output):
        return dict(method.keywords)
    return None


def rows_per_input(method: object) -> int:
    """Rows a method sends through the model per input row: integrated gradients' `steps`."""
    keywords = _integrated(method)
    return 1 if keywords is None else int(keywords.get("steps", DEFAULT_STEPS))


def bounded(method: Method, given: object, rows: int) -> Method:
    """`method` with no pass over `rows` rows: integrated gradients' path is cut into passes
    of at most `rows` (unless the caller set its `batch_size`); other methods as they are."""
    keywords = _integrated(given)
    if keywords is None or keywords.get("batch_size") is not None:
        return method
    return functools.partial(method, batch_size=rows)  # type: ignore[call-arg]
