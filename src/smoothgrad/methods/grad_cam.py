"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) as base methods.

Both weight the channels of a convolutional layer's output A (N, K, h, w) (or a transformer
block's tokens on the patch grid) by the gradient of
the target score, sum them, keep the positive part and upsample the (N, h, w) map to the
input's size; the map is repeated over the input's channels so that it is shaped like the
input. SmoothGrad over Grad-CAM++ is Smooth Grad-CAM++ (Omeiza et al. 2019).

Example:
    >>> import torch
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3),
    ...                       nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                       nn.Linear(4, 2))
    >>> grad_cam(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1])).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgrad.methods.base import Attributed, BaseMethod, explained_score

__all__ = ["grad_cam", "grad_cam_plus_plus", "last_conv", "token_grid"]

_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}


@BaseMethod
def grad_cam(model: nn.Module, x: Tensor, target: object, *, layer: nn.Module | None = None,
             relu: bool = True) -> Attributed:
    """Grad-CAM at `layer` (the model's last convolution by default), shaped like x.

    Channel weights are the spatial mean of the gradient; `relu=False` keeps negative
    evidence (Captum's `LayerGradCam` default), upsampled bilinearly. The activation is
    recorded where the layer returns it, so an in-place successor (`ReLU(inplace=True)`)
    cannot change it. A layer returning tokens (N, T, D) for an image x — a vision
    transformer's block — is read on the patch grid (`token_grid`). The default layer is
    refused when it is the model's input layer (a ViT's or Swin's patch embedding, its only
    convolution), with a message naming a token layer to pass instead. Targets and outputs:
    any form `smooth` takes (see `gradient`).
    """
    activation, grad, output = _activation_and_gradient(model, x, target, layer)
    weights = grad.flatten(2).mean(dim=2)
    return Attributed(_upsampled(weights, activation, x, relu), output)


@BaseMethod
def grad_cam_plus_plus(model: nn.Module, x: Tensor, target: object, *,
                       layer: nn.Module | None = None, relu: bool = True) -> Attributed:
    """Grad-CAM++ at `layer`: channel weights Σ_ij α_ij · relu(g_ij) with the closed-form α.

    α = g² / (2g² + Σ_ab A_ab · g³), with g the gradient of the score (the exponential-score
    form of the paper reduces to this when the score is a logit). Layers, targets and
    outputs as for `grad_cam`.
    """
    activation, grad, output = _activation_and_gradient(model, x, target, layer)
    total = activation.sum(dim=tuple(range(2, activation.dim())), keepdim=True)
    square = grad.pow(2)
    denominator = 2 * square + total * grad.pow(3)
    alpha = torch.where(grad != 0, square / torch.where(denominator != 0, denominator, 1.0),
                        0.0)
    weights = (alpha * grad.clamp(min=0)).flatten(2).sum(dim=2)
    return Attributed(_upsampled(weights, activation, x, relu), output)


def last_conv(model: nn.Module) -> nn.Module:
    """The model's last registered convolution (Grad-CAM's usual layer)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    if not convs:
        raise ValueError("grad_cam needs a convolutional layer: the model has none; pass "
                         "layer=a module whose output is (N, channels, ...)")
    return convs[-1]


@contextmanager
def _kept(layers: list[nn.Module]) -> Iterator[list[tuple[nn.Module, Tensor]]]:
    """Record what each of `layers` returns in the block, in the order they finish. The
    model goes on with a copy, so an in-place successor (`nn.ReLU(inplace=True)`) cannot
    overwrite the recorded activation; gradients reach it through the copy."""
    seen: list[tuple[nn.Module, Tensor]] = []

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            return None
        seen.append((module, output))
        return output.clone()

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _activation_and_gradient(model: nn.Module, x: Tensor, target: object,
                             layer: nn.Module | None) -> tuple[Tensor, Tensor, Tensor]:
    chosen = last_conv(model) if layer is None else layer
    watched = [chosen] if layer is not None else [
        chosen, *(m for m in _parametrised(model) if m is not chosen)]
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), _kept(watched) as seen:
        output, explained = explained_score(model, leaf.clone(), target)
        activations = [tensor for module, tensor in seen if module is chosen]
        if len(activations) != 1:
            raise ValueError(f"layer ({type(chosen).__name__}) must run exactly once per "
                             f"forward pass, it ran {len(activations)} times")
        if layer is None and seen and seen[0][0] is chosen:
            raise ValueError(_input_layer_message(model, chosen, x, target))
        (grad,) = torch.autograd.grad(explained.sum(), activations[0])
    activation = _spatial(activations[0].detach(), x)
    return activation, _spatial(grad, x), output.detach()


def _parametrised(model: nn.Module) -> list[nn.Module]:
    """The modules holding parameters of their own (the first to finish is the input layer)."""
    return [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]


def _spatial(activation: Tensor, x: Tensor) -> Tensor:
    """A layer output as (N, channels, ...) like x: tokens (N, T, D) of an image x become
    (N, D, h, w) on the patch grid (`token_grid`)."""
    if activation.dim() == x.dim() - 1 == 3 and activation.shape[0] == x.shape[0]:
        grid = token_grid(activation.shape[1], x.shape[2], x.shape[3])
        if grid is not None:
            extra, h, w = grid
            return activation[:, extra:].reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    if activation.dim() != x.dim() or activation.shape[0] != x.shape[0]:
        raise ValueError(f"grad_cam: the layer output {tuple(activation.shape)} must be "
                         f"shaped (N, channels, ...) like the input {tuple(x.shape)}, or "
                         "(N, tokens, features) with tokens on a patch grid")
    return activation


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int, int] | None:
    """(leading tokens, h, w): the last h·w of `tokens` form an h × w grid shaped like the
    image (h:w = height:width) after the fewest leading tokens (class, distillation or
    register tokens, at most 16 and fewer than the grid's); None if there is no such grid.

    Example:
        >>> token_grid(197, 224, 224), token_grid(49, 224, 224), token_grid(33, 64, 128)
        ((1, 14, 14), (0, 7, 7), (1, 4, 8))
    """
    for extra in range(min(tokens, 17)):
        grid = tokens - extra
        h = round(math.sqrt(grid * height / width))
        if extra < grid and h > 0 and grid % h == 0 and (grid // h) * height == h * width:
            return extra, h, grid // h
    return None


def _input_layer_message(model: nn.Module, conv: nn.Module, x: Tensor, target: object) -> str:
    names = {module: name for name, module in model.named_modules()}
    found = _token_layer(model, x, target)
    advice = ("pass layer=a later module whose output is (N, channels, h, w), or "
              "(N, tokens, features) read on the patch grid")
    if found is not None:
        module, shape, (_, h, w) = found
        advice = (f"pass layer=, e.g. layer=model.{_path(names[module])} (the last layer whose "
                  f"{shape} tokens reach the score, read on the {h}×{w} patch grid)")
    return (f"grad_cam: the model's last convolution ({_path(names[conv])}) is its input layer "
            "(for a vision transformer, the patch embedding), where Grad-CAM explains the input "
            f"rather than the model; {advice} (with smooth: method_kwargs={{'layer': ...}})")


def _token_layer(model: nn.Module, x: Tensor, target: object
                 ) -> tuple[nn.Module, tuple[int, ...], tuple[int, int, int]] | None:
    """The last module to finish whose (N, tokens, features) output lies on a patch grid and
    has a gradient on the grid's tokens (a ViT's last block output does not: only its class
    token is read), leaving out projections and dropout inside a block (a ViT's last block's
    first LayerNorm, then, as pytorch-grad-cam advises)."""
    if x.dim() != 4:
        return None
    modules = [m for m in model.modules() if not isinstance(m, nn.Linear | nn.Dropout)]
    with torch.enable_grad(), _kept(modules) as seen:
        _, explained = explained_score(model, x.detach().clone().requires_grad_(True), target)
        tokens = [(module, out) for module, out in seen
                  if out.dim() == 3 and out.shape[2] > 1 and out.requires_grad
                  and token_grid(out.shape[1], x.shape[2], x.shape[3]) is not None]
        grads = torch.autograd.grad(explained.sum(), [out for _, out in tokens],
                                    allow_unused=True) if tokens else ()
    for (module, out), grad in reversed(list(zip(tokens, grads, strict=True))):
        grid = token_grid(out.shape[1], x.shape[2], x.shape[3])
        if grid is not None and grad is not None and bool(grad[:, grid[0]:].any()):
            return module, tuple(out.shape), grid
    return None


def _path(name: str) -> str:
    """A dotted module name as Python: "encoder.layer.1.norm" -> "encoder.layer[1].norm"."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name) if name else "(the model itself)"


def _upsampled(weights: Tensor, activation: Tensor, x: Tensor, relu: bool) -> Tensor:
    cam = (weights.reshape(*weights.shape, *([1] * (activation.dim() - 2))) * activation).sum(
        dim=1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    if cam.shape[2:] != x.shape[2:]:
        cam = F.interpolate(cam, size=x.shape[2:], mode=_MODES[x.dim()], align_corners=False)
    return cam.expand_as(x).contiguous()
