"""Gradient rules that live only as long as one forward/backward pass, from one table.

`RULES` maps each autograd node kind (the name of its backward node without `Backward0`)
to what guided backpropagation and DeepLIFT do there. Guided backpropagation edits the
autograd graph of one pass (pre-hooks on its activation nodes), so it reaches every form a
rectifier takes — `nn.ReLU` (in-place or reused), `F.relu`, `torch.relu_`, `ReLU6`/`hardtanh`,
`LeakyReLU` — and nothing outlives the graph. DeepLIFT's rescale rule replaces the
elementwise functions during one forward pass, inside a `TorchFunctionMode` that is popped
on exit; afterwards one walk of the pass's graph finds every nonlinearity the rule did not
reach (TorchScript, fused recurrent layers, max pooling, normalisation, products of
activations, …) so it can be named when DeepLIFT's summation gap shows it mattered.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> y = (torch.relu(x) * torch.tensor([1.0, -3.0])).sum()
    >>> guide_rectifiers(y.grad_fn)
    {'extended_rule': (), 'unmodified': ()}
    >>> torch.autograd.grad(y, x)[0]
    tensor([0., 0.])
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "GUIDED", "MEAN_FIELD", "RESCALED", "RULES", "Rescaling", "Rule", "graph_nodes",
    "guide_rectifiers", "intercepted", "node_kind", "uncovered_by_deeplift",
]


@dataclass(frozen=True)
class Rule:
    """What the modified-gradient methods and the mean-field estimator do at one kind of
    autograd node.

    guided: "guide" (a rectifier: only the positive upstream gradient passes, times the local
    derivative), "extend" (the same rule on a smooth rectifier-like function, which is our
    extension of the method and is said so in a warning and the notes), "warn" (left
    unmodified and named in a warning), or "" for a node guided backprop ignores.
    deeplift: "rescale" (Δy/Δx, by replacing `functions` in the forward pass) or "warn" (the
    plain gradient, named in a warning). label: the name a user knows the operation by.
    mean_field: what `smoothgrad.gates` does at a call of one of `functions`: "gate" (its
    local derivative replaced by its expectation; `parameters` are the call's arguments
    after the input, with their defaults), "clean" (keeps its clean-input gradient, named
    in a warning) or "refuse" (no rule: refused, naming the layer); "" for none.
    """

    guided: str
    deeplift: str
    label: str
    functions: tuple[str, ...] = ()
    mean_field: str = ""
    parameters: tuple[tuple[str, Any], ...] = ()


def _rule(guided: str, label: str, *more: str, mean_field: str = "",
          parameters: tuple[tuple[str, Any], ...] = ()) -> Rule:
    return Rule(guided, "rescale", label, (label, *more), mean_field, parameters)


def _kept(label: str, *functions: str) -> Rule:
    """A node the gradient methods leave alone (or name) and mean-field keeps clean."""
    return Rule("", "warn", label, functions or (label,), "clean")


def _only(mean_field: str, label: str, *functions: str) -> Rule:
    """A function with a mean-field rule only (the gradient methods pass it by)."""
    return Rule("", "", label, functions or (label,), mean_field)


_RANGE = (("min", None), ("max", None))

RULES: dict[str, Rule] = {
    "Relu": _rule("guide", "relu", "relu_", mean_field="gate"),
    "Hardtanh": _rule("guide", "hardtanh", "hardtanh_", mean_field="gate",
                      parameters=(("min_val", -1.0), ("max_val", 1.0))),
    "LeakyRelu": _rule("guide", "leaky_relu", "leaky_relu_", mean_field="gate",
                       parameters=(("negative_slope", 0.01),)),
    "Threshold": _rule("guide", "threshold", "threshold_", mean_field="gate",
                       parameters=(("threshold", None),)),
    "PreluKernel": Rule("guide", "warn", "prelu", ("prelu",), "gate", (("weight", None),)),
    "Elu": _rule("extend", "elu", "elu_", "selu", "selu_", mean_field="refuse"),
    "Celu": _rule("extend", "celu", "celu_", mean_field="refuse"),
    "Gelu": _rule("extend", "gelu", mean_field="gate", parameters=(("approximate", "none"),)),
    "Silu": _rule("extend", "silu", mean_field="gate"),
    "Mish": _rule("extend", "mish", mean_field="refuse"),
    "Softplus": _rule("extend", "softplus", mean_field="gate",
                      parameters=(("beta", 1.0), ("threshold", 20.0))),
    "Hardswish": _rule("extend", "hardswish", mean_field="refuse"),
    "Sigmoid": _rule("warn", "sigmoid", "sigmoid_", mean_field="refuse"),
    "Tanh": _rule("warn", "tanh", "tanh_", mean_field="refuse"),
    "Hardsigmoid": _rule("warn", "hardsigmoid", mean_field="refuse"),
    "Clamp": Rule("warn", "warn", "clamp", ("clamp", "clamp_", "clip", "clip_"), "gate",
                  _RANGE),
    "ClampMin": Rule("warn", "warn", "clamp_min", ("clamp_min", "clamp_min_"), "gate",
                     _RANGE[:1]),
    "ClampMax": Rule("warn", "warn", "clamp_max", ("clamp_max", "clamp_max_"), "gate",
                     _RANGE[1:]),
    "MaxPool2DWithIndices": _kept("max_pool2d", "max_pool2d", "max_pool1d"),
    "MaxPool3DWithIndices": _kept("max_pool3d"),
    "AdaptiveMaxPool2D": _kept("adaptive_max_pool2d", "adaptive_max_pool2d",
                               "adaptive_max_pool1d"),
    "AdaptiveMaxPool3D": _kept("adaptive_max_pool3d"),
    "Softmax": _kept("softmax", "softmax", "softmin"),
    "LogSoftmax": _kept("log_softmax"),
    **{f"{name}RnnLayer": Rule("", "warn", "a fused recurrent layer (LSTM/GRU/RNN)")
       for name in ("Mkldnn",)},
    **{f"{name}Rnn": Rule("", "warn", "a fused recurrent layer (LSTM/GRU/RNN)")
       for name in ("Cudnn", "Miopen")},
    # Kinds below have a mean-field rule only. Functions torch composes from others have no
    # node of their own and are keyed by their name (no node matches such a key).
    "Relu6": Rule("", "rescale", "relu6", ("relu6",), "gate"),
    "LogSigmoid": _only("refuse", "log_sigmoid", "logsigmoid"),
    "Softsign": _only("refuse", "softsign"),
    "RreluWithNoise": _only("refuse", "rrelu_with_noise", "rrelu", "rrelu_"),
    "Glu": _only("refuse", "glu"),
    "Tanhshrink": _only("refuse", "tanhshrink"),
    "Softshrink": _only("refuse", "softshrink"),
    "Hardshrink": _only("refuse", "hardshrink"),
    "FractionalMaxPool2D": _only("clean", "fractional_max_pool2d"),
    "FractionalMaxPool3D": _only("clean", "fractional_max_pool3d"),
    "NativeLayerNorm": _only("clean", "layer_norm"),
    "NativeGroupNorm": _only("clean", "group_norm"),
    "InstanceNorm": _only("clean", "instance_norm"),
    "RmsNorm": _only("clean", "rms_norm"),
    "ScaledDotProductAttention": _only("clean", "scaled_dot_product_attention"),
    "MultiHeadAttention": _only("clean", "multi_head_attention_forward"),
}
"""Autograd node kind -> the guided-backprop, DeepLIFT and mean-field rules at that node."""

GUIDED = frozenset(kind for kind, rule in RULES.items() if rule.guided in ("guide", "extend"))
"""Autograd node kinds whose negative upstream gradient guided backprop zeroes."""

RESCALED = frozenset(name for rule in RULES.values() if rule.deeplift == "rescale"
                     for name in rule.functions)
"""Elementwise functions that DeepLIFT's rescale rule replaces, by name."""

MEAN_FIELD = {name: rule for rule in RULES.values() if rule.mean_field for name in rule.functions}
"""Function name -> its rule, for every function the mean-field estimator gates, keeps clean
or refuses."""

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


def node_kind(node: Any) -> str:
    """The kind of an autograd node: `ReluBackward0` -> `Relu`."""
    return _SUFFIX.sub("", node.name())


def _positive_part(grad_outputs: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    return tuple(None if g is None else g.clamp(min=0) for g in grad_outputs)


def guide_rectifiers(root: Any) -> dict[str, tuple[str, ...]]:
    """Apply the guided rule at every activation node of the graph below `root`; return notes.

    Rectifier nodes (ReLU, ReLU6/hardtanh, LeakyReLU, PReLU, threshold) pass on only the
    positive part of their upstream gradient times their local derivative. The rectifier-like
    ELU, CELU, SELU, GELU, SiLU, Mish, Softplus and Hardswish get the same rule, which is our
    extension of the method (Springenberg et al. define it for ReLU): a warning says so, and
    the notes list them as ``extended_rule``. Sigmoid, tanh, hard-sigmoid and clamp nodes are
    left unmodified, with a warning naming them (``unmodified``); a graph without any
    rectifier (a compiled model, say) warns that the result is the plain gradient.
    """
    guided, extended, left = 0, set(), set()
    for node in graph_nodes(root):
        kind = node_kind(node)
        rule = RULES.get(kind)
        if rule is not None and rule.guided in ("guide", "extend"):
            node.register_prehook(_positive_part)
            guided += 1
            if rule.guided == "extend":
                extended.add(kind)
        elif rule is not None and rule.guided == "warn":
            left.add(kind)
    if not guided:
        warnings.warn("guided_backprop found no rectifier in the model's autograd graph: "
                      "the result is the plain gradient", stacklevel=3)
    if extended:
        warnings.warn("guided_backprop applied its extended rule (zero the negative upstream "
                      "gradient, then the local derivative; the original method guides "
                      "rectifiers only) to: " + ", ".join(sorted(extended)), stacklevel=3)
    if left:
        warnings.warn("guided_backprop left these nonlinearities unmodified: "
                      + ", ".join(sorted(left)), stacklevel=3)
    return {"extended_rule": tuple(sorted(extended)), "unmodified": tuple(sorted(left))}


def _flat_below(dtype: torch.dtype) -> float:
    """|Δx| under which DeepLIFT uses the local derivative instead of Δy/Δx.

    1e-10 (Captum's) in float32 and wider; in float16/bfloat16, where 1e-10 rounds to 0 and
    0/0 gave NaN, the dtype's resolution at 1 (its `eps`).
    """
    return 1e-10 if torch.finfo(dtype).bits >= 32 else float(torch.finfo(dtype).eps)


class _Rescale(torch.autograd.Function):
    """y = f(x); backward multiplies by Δy/Δx against the baseline pass's (x₀, y₀)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], x0: Tensor, y0: Tensor,
                inplace: bool) -> Tensor:
        y = fn(x.clone())
        ctx.fn = fn
        ctx.save_for_backward(x.clone() if inplace else x, y, x0, y0)  # x overwritten if inplace
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y, x0, y0 = ctx.saved_tensors
        wide = torch.promote_types(grad.dtype, torch.float32)  # no overflow/underflow in half
        delta_x, delta_y = (x - x0).to(wide), (y - y0).to(wide)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(ctx.fn(leaf.clone()), leaf, grad)
        flat = delta_x.abs() < _flat_below(x.dtype)
        multiplier = grad.to(wide) * delta_y / torch.where(flat, 1.0, delta_x)
        return torch.where(flat, local.to(wide), multiplier).to(grad.dtype), None, None, None, None


def intercepted(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None
) -> tuple[str, Any, dict[str, Any]]:
    """A call a `TorchFunctionMode` intercepted: the function's name, its first argument
    (the tensor an activation acts on) and its keyword arguments."""
    return getattr(func, "__name__", ""), (args[0] if args else None), kwargs or {}


class _RescaleMode(TorchFunctionMode):
    """Records the baseline pass's nonlinearities, then rescales the input pass's in order."""

    def __init__(self, recorded: list[tuple[str, Tensor, Tensor]] | None = None) -> None:
        super().__init__()
        self.recording = recorded is None
        self.calls: list[tuple[str, Tensor, Tensor]] = [] if recorded is None else recorded
        self.index = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name, first, kwargs = intercepted(func, args, kwargs)
        if name not in RESCALED or not isinstance(first, Tensor):
            return func(*args, **kwargs)
        inplace = name.endswith("_") or kwargs.get("inplace") is True or (
            len(args) > 1 and args[-1] is True)
        if self.recording:
            given = first.detach().clone()
            output = func(*args, **kwargs)
            self.calls.append((name, given, output.detach().clone()))
            return output
        call = self.calls[self.index] if self.index < len(self.calls) else None
        self.index += 1
        if (call is None or call[0] != name or call[1].shape != first.shape
                or not first.requires_grad):
            return func(*args, **kwargs)  # left unmodified: the graph walk names it
        y = _Rescale.apply(  # type: ignore[no-untyped-call]
            first, lambda t: func(t, *args[1:], **kwargs), call[1], call[2], inplace)
        return first.copy_(y) if inplace else y


class Rescaling:
    """DeepLIFT's two passes: `baseline()` records, `inputs()` applies the rescale rule.

    Every elementwise nonlinearity of `RESCALED` (module, functional or in-place) that the
    input pass calls is paired, in call order, with the same call of the baseline pass (same
    function, same shape) and its backward uses Δy/Δx, so models that reshape or move the
    batch dimension are covered. Anything the rule cannot reach keeps its plain gradient, and
    `uncovered_by_deeplift` names it from the input pass's graph.

    Example:
        >>> x, base = torch.tensor([[2.0]], requires_grad=True), torch.zeros(1, 1)
        >>> passes = Rescaling()
        >>> with passes.baseline():
        ...     y0 = torch.sigmoid(base)
        >>> with passes.inputs():
        ...     y = torch.sigmoid(x)
        >>> torch.autograd.grad(y.sum(), x)[0]  # (sigmoid(2) - sigmoid(0)) / 2
        tensor([[0.1904]])
    """

    def __init__(self) -> None:
        self._recorded = _RescaleMode()

    @contextmanager
    def baseline(self) -> Iterator[None]:
        """Run the baseline pass in this block (no gradients needed)."""
        with self._recorded:
            yield

    @contextmanager
    def inputs(self) -> Iterator[None]:
        """Run the input pass in this block, after the baseline pass."""
        with _RescaleMode(self._recorded.calls):
            yield


_LINEAR = frozenset({
    "Add", "Sub", "Neg", "View", "UnsafeView", "Reshape", "ReshapeAlias", "Permute",
    "Transpose", "T", "Expand", "Squeeze", "Unsqueeze", "Clone", "Cat", "Stack", "Split",
    "SplitWithSizes", "UnsafeSplit", "UnsafeSplitWithSizes", "Chunk", "Unbind", "Unfold",
    "Select", "Slice", "Index", "IndexSelect", "Gather", "Narrow",
    "Sum", "Mean", "AvgPool2D", "AvgPool3D", "AdaptiveAvgPool2D", "AdaptiveAvgPool3D",
    "ConstantPadNd", "ReflectionPad1D", "ReflectionPad2D", "ReplicationPad2D",
    "UpsampleNearest2D", "UpsampleBilinear2D", "UpsampleBicubic2D", "Roll", "Repeat", "Flip",
    "ToCopy", "Alias", "AsStrided", "PixelShuffle", "PixelUnshuffle", "Im2Col", "Col2Im",
    "Cumsum", "Diagonal", "Tril", "Triu", "Where", "MaskedFill", "Embedding", "_Rescale",
    "torch::autograd::AccumulateGrad", "torch::autograd::CopySlices",
    "torch::autograd::CopyBackwards", "torch::autograd::GraphRoot",
})
"""Node kinds linear in the input (the rescale rule is exact through them)."""

_FACTORS = {"Mul": (0, 1), "Mm": (0, 1), "Bmm": (0, 1), "Addmm": (1, 2), "Baddbmm": (1, 2),
            "Addbmm": (1, 2), "Addmv": (1, 2), "Mv": (0, 1), "Dot": (0, 1),
            "Convolution": (0, 1), "NativeBatchNorm": (0, 1), "Div": (1,)}
"""Node kinds linear in the input unless these operands all depend on it (a product of two
activations, or Div's denominator); BatchNorm only in eval mode."""

_NAMES = {"NativeLayerNorm": "layer_norm", "NativeGroupNorm": "group_norm",
          "SafeSoftmax": "softmax", "Div": "division by an activation (div)"}


def uncovered_by_deeplift(root: Any, leaf: Tensor, model: nn.Module) -> list[str]:
    """The operations on the path from `leaf` to `root` (a `grad_fn`) that the rescale rule
    does not cover, named ("label ×count"): the nonlinearities it did not replace (max
    pooling, softmax, normalisation layers, fused attention, any function it has no rule
    for) and products of two activations (gates h·σ(Wh), h·h, attention's q·kᵀ). Recurrent and
    TorchScript modules of `model` are named too, since the rule cannot reach inside them.
    """
    depends = _depending(root, leaf)
    counts: Counter[str] = Counter()
    for node in graph_nodes(root):
        kind = node_kind(node)
        if id(node) not in depends or kind in _LINEAR:
            continue
        if kind in _FACTORS:
            inputs = [child for child, _ in node.next_functions]
            factors = [i for i in _FACTORS[kind] if i < len(inputs)]
            if not all(id(inputs[i]) in depends for i in factors) and not (
                    kind == "NativeBatchNorm" and node._saved_training):
                continue
        counts[_label(kind)] += 1
    found = [f"{label} ×{n}" if n > 1 else label for label, n in sorted(counts.items())]
    return found + _opaque(model) if found else found


def _opaque(model: nn.Module) -> list[str]:
    """Recurrent and TorchScript modules of `model` (outermost only), named."""
    named: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") or not outer for outer in named)
        if isinstance(module, nn.RNNBase | torch.jit.ScriptModule) and not inside:
            named[name] = module
    return [f"{name or 'the model'} ({type(module).__name__})" for name, module in named.items()]


def _label(kind: str) -> str:
    if kind in RULES:
        return RULES[kind].label
    if kind.startswith("ScaledDotProduct"):
        return "scaled_dot_product_attention"
    if kind in _FACTORS and kind != "Div":
        return f"product of activations ({kind.lower()})"
    return _NAMES.get(kind, re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower())


def _depending(root: Any, leaf: Tensor) -> set[int]:
    """Ids of the nodes below `root` whose value depends on `leaf` (iteratively, children
    first, so deep graphs do not recurse)."""
    depends: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node is None or (id(node) in done and not expanded):
            continue
        children = [child for child, _ in node.next_functions if child is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in done)
            continue
        done.add(id(node))
        if getattr(node, "variable", None) is leaf or any(id(c) in depends for c in children):
            depends.add(id(node))
    return depends
