"""The fast path: an optimised copy of the model, checked against the original.

`optimize` deep-copies the model (the caller's stays untouched), folds every BatchNorm that
directly follows a convolution or linear layer into that layer's weights, stores 4-D weights
channels-last, and optionally casts to a lower precision and wraps the copy in
`torch.compile`. Every step is checked on an example input: the report gives the largest
logit error and the correlation of the copy's input gradient with the original's, and a
copy that falls short of `min_correlation` is refused (`FastPathError`).
`smooth(..., fast=True)` uses `cached_copy`, which keeps the copy for as long as the model's
parameters and buffers are unchanged, and runs its passes inside
`guard.reusing_freed_memory`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
    ...                       nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    >>> fast = optimize(model, torch.randn(1, 3, 8, 8))
    >>> fast.report.folded, fast.report.map_correlation > 0.999
    (1, True)
"""

from __future__ import annotations

import copy
import math
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.guard import explaining
from smoothgrad.overrides import graph_nodes
from smoothgrad.targets import Resolved, score

__all__ = [
    "FastModel", "FastPathError", "FastReport", "cached_copy", "fold_batchnorm", "optimize",
]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FastPathError(RuntimeError):
    """The optimised copy does not reproduce the model closely enough to be used."""


@dataclass(frozen=True)
class FastReport:
    """What `optimize` did and how far the copy is from the original on the checked input.

    folded: BatchNorm layers folded into the layer before them. channels_last: 4-D weights
    and inputs in NHWC. dtype: the copy's compute dtype. compiled: wrapped in torch.compile.
    logit_error: max |copy − original| over the outputs, relative to max |original|.
    map_correlation: Pearson correlation of the copy's input gradient with the original's
    (for the explained class of each example, all examples pooled).
    """

    folded: int
    channels_last: bool
    dtype: torch.dtype
    compiled: bool
    logit_error: float
    map_correlation: float


class FastModel(nn.Module):
    """The optimised copy: converts inputs to its layout and dtype, returns float outputs."""

    report: FastReport

    def __init__(self, inner: nn.Module, *, channels_last: bool, dtype: torch.dtype,
                 compiled: Callable[..., Tensor] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.channels_last = channels_last
        self.dtype = dtype
        self._compiled = compiled

    def forward(self, x: Tensor) -> Tensor:
        out_dtype = x.dtype
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(self.dtype)
        net = self.inner if self._compiled is None else self._compiled
        y: Tensor = net(x)
        return y.to(out_dtype)


def fold_batchnorm(model: nn.Module, example: Tensor) -> int:
    """Fold, in place, each eval-mode BatchNorm whose input is only a conv/linear's output.

    Pairs are found by running `model` once on `example` with forward hooks: a BatchNorm
    called once whose input is the output of a layer called once, with no other use of that
    output in the autograd graph. The layer's weight and bias absorb the normalisation and
    the BatchNorm becomes `nn.Identity`. Returns the number of folded pairs.
    """
    outputs: dict[int, tuple[nn.Module, Tensor]] = {}
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[nn.Module, nn.Module, Tensor]] = []

    def after_layer(module: nn.Module, _: Any, output: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, Tensor):
            outputs[id(output)] = (module, output)

    def before_norm(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls[module] = calls.get(module, 0) + 1
        if args and isinstance(args[0], Tensor) and id(args[0]) in outputs:
            layer, output = outputs[id(args[0])]
            if output is args[0]:
                pairs.append((layer, module, output))

    handles = []
    for module in model.modules():
        if isinstance(module, _LAYERS):
            handles.append(module.register_forward_hook(after_layer))
        elif isinstance(module, _NORMS):
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        leaf = example.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            result = model(leaf)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(result, Tensor) or result.grad_fn is None:
        return 0
    consumers = _consumer_counts(result.grad_fn)
    folded = 0
    for layer, norm, output in pairs:
        assert isinstance(norm, _NORMS)
        if (calls[layer] != 1 or calls[norm] != 1 or norm.training
                or norm.running_mean is None or norm.running_var is None
                or output.grad_fn is None or consumers.get(output.grad_fn, 0) != 1):
            continue
        _fold_into(layer, norm)
        _replace(model, norm, nn.Identity())
        folded += 1
    return folded


def _consumer_counts(root: Any) -> Counter[Any]:
    """How many nodes of the graph below `root` use each node's output."""
    return Counter(child for node in graph_nodes(root) for child, _ in node.next_functions
                   if child is not None)


@torch.no_grad()
def _fold_into(layer: nn.Module, norm: nn.Module) -> None:
    assert isinstance(norm, _NORMS) and norm.running_var is not None
    assert norm.running_mean is not None
    weight: Tensor = layer.weight  # type: ignore[assignment]
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    bias = layer.bias.double() if isinstance(layer.bias, Tensor) else torch.zeros_like(scale)
    new_bias = (bias - norm.running_mean.double()) * scale
    if norm.bias is not None:
        new_bias = new_bias + norm.bias.double()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight.copy_((weight.double() * scale.view(shape)).to(weight.dtype))
    layer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=weight.requires_grad)


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)


def optimize(
    model: nn.Module,
    example: Tensor,
    *,
    fold: bool = True,
    channels_last: bool | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    target: Resolved | None = None,
    min_correlation: float | None = None,
) -> FastModel:
    """An optimised copy of `model`, checked on `example` against the original.

    - fold: fold BatchNorm into the conv/linear layer before it (`fold_batchnorm`).
    - channels_last: NHWC weights and inputs; by default on for 4-D inputs.
    - dtype: compute dtype of the copy (float32 by default; bfloat16/float16 are lossy).
    - compile: wrap the copy in `torch.compile` (a string names its mode, such as
      "max-autotune"). The first calls are slow; the autograd graph is then
      opaque, so guided backprop and DeepLIFT see no rectifiers: use it for gradients and
      integrated gradients).
    - target: classes (or a score callable) whose input gradients are compared; the
      original's argmax by default.
    - min_correlation: the gradient correlation below which the copy is refused; 0.999 for
      float32 and 0.99 for lower precision by default.

    The copy is in eval mode with frozen parameters; `.report` says what was done and how
    closely it matches. A float copy whose logits differ by more than 1e-3 (relative) is
    refused too: a fold that changed the function, not just its rounding.
    """
    dtype = dtype or example.dtype
    channels_last = example.dim() == 4 if channels_last is None else channels_last
    inner = copy.deepcopy(model).eval()
    for param in inner.parameters():
        param.requires_grad_(False)
    folded = fold_batchnorm(inner, example) if fold else 0
    if channels_last:
        inner = inner.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    inner = inner.to(dtype)
    compiled = None
    if compile:
        compiled = torch.compile(inner, mode=compile if isinstance(compile, str) else None)
    fast = FastModel(inner, channels_last=channels_last, dtype=dtype, compiled=compiled).eval()
    with explaining(model):
        logit_error, correlation = _compare(model, fast, example, target)
    exact = dtype in (torch.float32, torch.float64)
    limit = min_correlation if min_correlation is not None else 0.999 if exact else 0.99
    fast.report = FastReport(folded=folded, channels_last=channels_last, dtype=dtype,
                             compiled=bool(compile), logit_error=logit_error,
                             map_correlation=correlation)
    if not correlation >= limit or (exact and not logit_error <= 1e-3):
        raise FastPathError(
            f"the optimised copy's gradients correlate {correlation:.4f} with the original's "
            f"(required {limit}) and its logits differ by {logit_error:.2e} (relative). "
            "Use a wider dtype or fold=False")
    return fast


def _compare(reference: nn.Module, fast: nn.Module, example: Tensor,
             target: Resolved | None) -> tuple[float, float]:
    with torch.no_grad():
        ref_out = reference(example)
        fast_out = fast(example)
    logit_error = float((fast_out - ref_out).abs().max() / ref_out.abs().max().clamp(min=1e-30))
    if target is None:
        target = ref_out.argmax(dim=1)
    grads = []
    for net in (reference, fast):
        leaf = example.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = net(leaf)
            (grad,) = torch.autograd.grad(score(out, target).sum(), leaf)
        grads.append(grad.double().flatten())
    return logit_error, _pearson(grads[0], grads[1])


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    if denominator == 0.0:
        return 1.0 if torch.equal(a, b) else 0.0
    value = float((a * b).sum()) / denominator
    return value if math.isfinite(value) else 0.0


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, FastModel]] = (
    weakref.WeakKeyDictionary())


def _fingerprint(model: nn.Module, example: Tensor) -> tuple[Any, ...]:
    tensors = [*model.parameters(), *model.buffers()]
    return (example.device, example.dtype, tuple(example.shape[1:]),
            tuple((t.data_ptr(), t._version) for t in tensors))


def cached_copy(model: nn.Module, example: Tensor,
                target: Resolved | None = None) -> FastModel:
    """`optimize(model, example, target=target)` with its device's defaults, cached per model.

    The copy is reused while the model's parameters and buffers are unchanged (same storage,
    no in-place update) and the input has the same device, dtype and example shape. On CUDA
    the copy computes in bfloat16 when its gradients correlate ≥ 0.99 with float32 ones,
    else in float32; elsewhere in float32.
    """
    key = _fingerprint(model, example)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    if example.device.type == "cuda":
        try:
            fast = optimize(model, example, dtype=torch.bfloat16, target=target)
        except FastPathError:
            fast = optimize(model, example, target=target)
    else:
        fast = optimize(model, example, target=target)
    _CACHE[model] = (key, fast)
    return fast
