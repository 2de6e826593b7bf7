"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) as base methods.

Both weight the channels of a convolutional layer's output A (N, K, h, w) by the gradient of
the target score, sum them, keep the positive part and upsample the (N, h, w) map to the
input's size; the map is repeated over the input's channels so that it is shaped like the
input. SmoothGrad over Grad-CAM++ is Smooth Grad-CAM++ (Omeiza et al. 2019).

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
    ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ...                             torch.nn.Linear(4, 2))
    >>> grad_cam(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1])).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgrad.layers import captured
from smoothgrad.methods.base import Attributed, BaseMethod
from smoothgrad.targets import Resolved, score

__all__ = ["grad_cam", "grad_cam_plus_plus", "last_conv"]

_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}


@BaseMethod
def grad_cam(model: nn.Module, x: Tensor, target: Resolved, *, layer: nn.Module | None = None,
             relu: bool = True) -> Attributed:
    """Grad-CAM at `layer` (the model's last convolution by default), shaped like x.

    Channel weights are the spatial mean of the gradient; `relu=False` keeps negative
    evidence (Captum's `LayerGradCam` default), upsampled bilinearly.
    """
    activation, grad, output = _activation_and_gradient(model, x, target, layer)
    weights = grad.flatten(2).mean(dim=2)
    return Attributed(_upsampled(weights, activation, x, relu), output)


@BaseMethod
def grad_cam_plus_plus(model: nn.Module, x: Tensor, target: Resolved, *,
                       layer: nn.Module | None = None, relu: bool = True) -> Attributed:
    """Grad-CAM++ at `layer`: channel weights Σ_ij α_ij · relu(g_ij) with the closed-form α.

    α = g² / (2g² + Σ_ab A_ab · g³), with g the gradient of the score (the exponential-score
    form of the paper reduces to this when the score is a logit).
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


def _activation_and_gradient(model: nn.Module, x: Tensor, target: Resolved,
                             layer: nn.Module | None) -> tuple[Tensor, Tensor, Tensor]:
    layer = last_conv(model) if layer is None else layer
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), captured(layer) as seen:
        output = model(leaf.clone())  # a copy: the model may edit its input in place
        total = score(output, target).sum()
        if len(seen) != 1:
            raise ValueError(f"layer ({type(layer).__name__}) must run exactly once per "
                             f"forward pass, it ran {len(seen)} times")
        activation = seen[0]
        if activation.dim() != x.dim() or activation.shape[0] != x.shape[0]:
            raise ValueError(f"grad_cam: the layer output {tuple(activation.shape)} must be "
                             f"shaped (N, channels, ...) like the input {tuple(x.shape)}")
        (grad,) = torch.autograd.grad(total, activation)
    return activation.detach(), grad, output.detach()


def _upsampled(weights: Tensor, activation: Tensor, x: Tensor, relu: bool) -> Tensor:
    cam = (weights.reshape(*weights.shape, *([1] * (activation.dim() - 2))) * activation).sum(
        dim=1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    if cam.shape[2:] != x.shape[2:]:
        cam = F.interpolate(cam, size=x.shape[2:], mode=_MODES[x.dim()], align_corners=False)
    return cam.expand_as(x).contiguous()
