"""Turn whatever a model returns into the tensor of scores that targets pick from.

A tensor is used as it is; a tuple or list gives its first element; a mapping (a dict, or a
Hugging Face `ModelOutput`, which is one) gives its `logits`. Note that `out[0]` of a Hugging
Face output is the *loss* when labels were passed, which is why mappings are read by key.
An `output=` callable picks anything else.

Example:
    >>> import torch
    >>> pick({"logits": torch.ones(2, 3), "hidden": None}).shape
    torch.Size([2, 3])
    >>> pick((torch.zeros(1, 2), "extra")).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["OutputFn", "check_output_fn", "pick"]

OutputFn = Callable[[Any], Tensor]
"""`output=`: the model's raw output -> the (N, classes) or (N, ...) scores tensor."""


def pick(output: object, output_fn: OutputFn | None = None) -> Tensor:
    """The scores tensor in a model's `output` (see the module docstring for the rules)."""
    if output_fn is not None:
        picked = output_fn(output)
        if not isinstance(picked, Tensor):
            raise TypeError(f"output: the callable must return a tensor, "
                            f"it returned {type(picked).__name__}")
        return picked
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if "logits" not in output:
            keys = ", ".join(repr(key) for key in output) or "none"
            raise ValueError(f"the model returned a {type(output).__name__} without 'logits' "
                             f"(keys: {keys}); pass output=lambda out: out[KEY] to pick one")
        return pick(output["logits"])
    if isinstance(output, tuple | list) and output:
        return pick(output[0])
    raise TypeError(f"cannot find the scores in a model output of type "
                    f"{type(output).__name__}; pass output=a callable returning a tensor")


def check_output_fn(output_fn: object) -> OutputFn | None:
    """Validate the `output=` argument: None or a callable."""
    if output_fn is not None and not callable(output_fn):
        raise TypeError(f"output must be a callable (model output -> tensor) or None, "
                        f"not {type(output_fn).__name__}")
    return output_fn
