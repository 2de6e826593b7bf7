"""Gradient-rule overrides that live only as long as one forward/backward pass.

Guided backpropagation edits the autograd graph of one pass (pre-hooks on its activation
nodes), so it reaches every form a rectifier takes — `nn.ReLU` (in-place or reused),
`F.relu`, `torch.relu_`, `ReLU6`/`hardtanh`, `LeakyReLU` — and nothing outlives the graph.
DeepLIFT's rescale rule replaces elementwise nonlinearities during one forward pass, inside
a `TorchFunctionMode` that is popped on exit.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> y = (torch.relu(x) * torch.tensor([1.0, -3.0])).sum()
    >>> guide_rectifiers(y.grad_fn)
    >>> torch.autograd.grad(y, x)[0]
    tensor([0., 0.])
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["GUIDED", "RESCALED", "graph_nodes", "guide_rectifiers", "rescaling"]

GUIDED = frozenset({
    "Relu", "Hardtanh", "LeakyRelu", "Threshold", "PreluKernel", "Elu", "Celu",
    "Gelu", "Silu", "Mish", "Softplus", "Hardswish",
})
"""Autograd node kinds whose negative upstream gradient guided backprop zeroes."""

_GATES = frozenset({"Sigmoid", "Tanh", "Hardsigmoid", "Clamp", "ClampMin", "ClampMax"})

RESCALED = frozenset({
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
    "threshold", "threshold_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu",
    "silu", "mish", "softplus", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_",
    "tanh", "tanh_",
})
"""Elementwise functions that DeepLIFT's rescale rule replaces, by name."""

_NOT_RESCALED = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "softmax", "log_softmax",
})
_SUFFIX = re.compile(r"Backward\d*$")


def graph_nodes(root: Any) -> Iterator[Any]:
    """Every autograd node reachable from `root` (a `grad_fn`), each once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(child for child, _ in node.next_functions)


def _positive_part(grad_outputs: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    return tuple(None if g is None else g.clamp(min=0) for g in grad_outputs)


def guide_rectifiers(root: Any) -> None:
    """Apply the guided rule at every activation node of the graph below `root`.

    Guided nodes (`GUIDED`: ReLU, ReLU6/hardtanh, LeakyReLU, PReLU, threshold, and the
    rectifier-like ELU, CELU, SELU, GELU, SiLU, Mish, Softplus, Hardswish) pass on only the
    positive part of their upstream gradient times their local derivative. Sigmoid, tanh,
    hard-sigmoid and clamp nodes are left unmodified, with a warning naming them; a graph
    without any rectifier (a compiled model, say) warns that the result is the plain gradient.
    """
    guided, left = 0, set()
    for node in graph_nodes(root):
        kind = _SUFFIX.sub("", node.name())
        if kind in GUIDED:
            node.register_prehook(_positive_part)
            guided += 1
        elif kind in _GATES:
            left.add(kind)
    if not guided:
        warnings.warn("guided_backprop found no rectifier in the model's autograd graph: "
                      "the result is the plain gradient", stacklevel=3)
    if left:
        warnings.warn("guided_backprop left these nonlinearities unmodified: "
                      + ", ".join(sorted(left)), stacklevel=3)


class _Rescale(torch.autograd.Function):
    """y = f(x) on a batch stacked as [inputs; baselines]; backward uses Δy/Δx per element."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], inplace: bool) -> Tensor:
        y = fn(x.clone())
        ctx.fn = fn
        ctx.save_for_backward(x.clone() if inplace else x, y)  # x is overwritten if inplace
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, y = ctx.saved_tensors
        half = x.shape[0] // 2
        delta_x = (x[:half] - x[half:]).repeat(2, *([1] * (x.dim() - 1)))
        delta_y = (y[:half] - y[half:]).repeat(2, *([1] * (y.dim() - 1)))
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(ctx.fn(leaf.clone()), leaf, grad)
        flat = delta_x.abs() < 1e-10
        multiplier = grad * delta_y / torch.where(flat, 1.0, delta_x)
        return torch.where(flat, local, multiplier), None, None


class _RescaleMode(TorchFunctionMode):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.unhandled: set[str] = set()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        first = args[0] if args else None
        if (name in RESCALED and isinstance(first, Tensor) and first.requires_grad
                and first.dim() > 0 and first.shape[0] == self.rows):
            inplace = name.endswith("_") or kwargs.get("inplace") is True or (
                len(args) > 1 and args[-1] is True)
            y = _Rescale.apply(  # type: ignore[no-untyped-call]
                first, lambda t: func(t, *args[1:], **kwargs), inplace)
            return first.copy_(y) if inplace else y
        if name in _NOT_RESCALED:
            self.unhandled.add(name)
        return func(*args, **kwargs)


@contextmanager
def rescaling(rows: int) -> Iterator[None]:
    """Within the block, elementwise nonlinearities (`RESCALED`) follow DeepLIFT's rescale rule.

    The model must run on a batch of `rows` stacked as `[inputs; baselines]` (equal halves
    along dim 0, which must stay the batch dimension); tensors with another leading size are
    left alone. Max pooling and softmax keep their plain gradient, with a warning, so
    summation-to-delta is then only approximate.
    """
    mode = _RescaleMode(rows)
    with mode:
        yield
    if mode.unhandled:
        warnings.warn("deeplift applies the plain gradient (not the rescale rule) to: "
                      + ", ".join(sorted(mode.unhandled)), stacklevel=3)
