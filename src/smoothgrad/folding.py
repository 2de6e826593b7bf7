"""Fold BatchNorm into the convolution or linear layer before it (the fast path's first step).

`fold_batchnorm` finds the pairs on one pass over an example — an eval-mode BatchNorm whose
only input is a conv/linear layer's output, each called once — and gives the layer new
weights (`torch.nn.utils.fusion.fuse_conv_bn_weights`, computed in float64); the BatchNorm
becomes `nn.Identity`. The layer's old tensors are replaced, never written, so a copy that
shares them with the caller's model leaves the model as it was.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> x = torch.randn(1, 3, 8, 8)
    >>> before = model(x)
    >>> fold_batchnorm(model, x), type(model[1]).__name__
    (1, 'Identity')
    >>> torch.allclose(model(x), before, atol=1e-6)
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from smoothgrad.outputs import pick
from smoothgrad.overrides import graph_nodes

__all__ = ["NORMS", "fold_batchnorm"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
"""The normalisation layers that fold."""


def fold_batchnorm(model: nn.Module, example: Tensor, *,
                   call: Callable[[Tensor], Any] | None = None,
                   keep: Collection[nn.Module] = ()) -> int:
    """Fold, in place, each eval-mode BatchNorm whose input is only a conv/linear's output.

    Pairs are found by running `call(example)` (by default `model(example)`) once with
    forward hooks: a BatchNorm called once whose input is the output of a layer called once,
    with no other use of that output in the autograd graph, and whose features are that
    layer's output channels. The layer gets new weight and bias tensors that absorb the
    normalisation (`torch.nn.utils.fusion.fuse_conv_bn_weights`) and the BatchNorm becomes
    `nn.Identity`. Pairs with a module in `keep` are left alone. Returns the number folded.
    """
    outputs: dict[int, tuple[nn.Module, Tensor]] = {}
    calls: Counter[nn.Module] = Counter()
    pairs: list[tuple[nn.Module, nn.Module, Tensor]] = []

    def after_layer(module: nn.Module, _: Any, output: Any) -> None:
        calls[module] += 1
        if isinstance(output, Tensor):
            outputs[id(output)] = (module, output)

    def before_norm(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls[module] += 1
        if args and isinstance(args[0], Tensor) and id(args[0]) in outputs:
            layer, output = outputs[id(args[0])]
            if output is args[0]:
                pairs.append((layer, module, output))

    handles = []
    for module in model.modules():
        if isinstance(module, _LAYERS):
            handles.append(module.register_forward_hook(after_layer))
        elif isinstance(module, NORMS):
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        leaf = example.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            result = (call or model)(leaf)
    finally:
        for handle in handles:
            handle.remove()
    result = result if isinstance(result, Tensor) else pick(result)
    if result.grad_fn is None:
        return 0
    consumers = _consumer_counts(result.grad_fn)
    folded = 0
    for layer, norm, output in pairs:
        if (calls[layer] == 1 and calls[norm] == 1 and not {layer, norm} & set(keep)
                and _foldable(layer, norm, output)
                and consumers.get(output.grad_fn, 0) == 1):
            _fold_into(layer, norm)
            _replace(model, norm, nn.Identity())
            folded += 1
    return folded


def _foldable(layer: nn.Module, norm: nn.Module, output: Tensor) -> bool:
    """An eval-mode BatchNorm with statistics over the layer's output channels (dimension 1;
    a linear layer's output only when it is (N, features))."""
    assert isinstance(norm, NORMS)
    weight = layer.weight
    return (not norm.training and norm.running_mean is not None
            and norm.running_var is not None and output.grad_fn is not None
            and isinstance(weight, Tensor) and norm.num_features == weight.shape[0]
            and (output.dim() == 2 or not isinstance(layer, nn.Linear)))


def _consumer_counts(root: Any) -> Counter[Any]:
    """How many nodes of the graph below `root` use each node's output."""
    return Counter(child for node in graph_nodes(root) for child, _ in node.next_functions
                   if child is not None)


@torch.no_grad()
def _fold_into(layer: nn.Module, norm: nn.Module) -> None:
    """Give `layer` new weight and bias tensors that include `norm` (computed in float64).

    `fuse_conv_bn_weights` scales the first dimension of the weight, which is the output
    channels of a convolution and of a linear layer alike.
    """
    assert isinstance(norm, NORMS) and norm.running_var is not None
    assert norm.running_mean is not None
    weight: Tensor = layer.weight  # type: ignore[assignment]
    bias = layer.bias if isinstance(layer.bias, Tensor) else None

    def wide(value: Tensor | None) -> Tensor | None:
        return None if value is None else value.double()

    fused_weight, fused_bias = fuse_conv_bn_weights(
        weight.double(), wide(bias), norm.running_mean.double(), norm.running_var.double(),
        norm.eps, wide(norm.weight), wide(norm.bias))
    layer.weight = nn.Parameter(fused_weight.to(weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter(fused_bias.to(weight.dtype), requires_grad=False)


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)
