"""Grad-CAM and Grad-CAM++ as base methods, against Captum and a hand formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SeparateReluCNN, images, seeded
from smoothgrad.methods.grad_cam import grad_cam, grad_cam_plus_plus, last_conv
from smoothgrad.methods.registry import attributed


def test_grad_cam_equals_captum_layer_grad_cam_upsampled() -> None:
    from captum.attr import LayerAttribution, LayerGradCam

    model = seeded(SeparateReluCNN())
    x, target = images(3), torch.tensor([0, 1, 2])
    layer = model.features[3]
    ours = attributed(grad_cam(model, x, target, layer=layer), 3).map
    theirs = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    theirs = LayerAttribution.interpolate(theirs, x.shape[2:], interpolate_mode="bilinear")
    torch.testing.assert_close(ours, theirs.expand_as(x), rtol=1e-5, atol=1e-7)
    assert last_conv(model) is layer


def test_grad_cam_plus_plus_hand_formula() -> None:
    model = seeded(SeparateReluCNN())
    x, target = images(2), torch.tensor([1, 3])
    layer = model.features[3]
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    out = model(x.requires_grad_(True))
    handle.remove()
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), seen[0])
    a = seen[0].detach()
    alpha = g**2 / (2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    cam = (weights[:, :, None, None] * a).sum(dim=1, keepdim=True).clamp(min=0)
    expected = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)
    ours = attributed(grad_cam_plus_plus(model, x.detach(), target, layer=layer), 2).map
    torch.testing.assert_close(ours, expected.expand_as(ours), rtol=1e-5, atol=1e-7)


def test_grad_cam_needs_a_convolution() -> None:
    with pytest.raises(ValueError, match="convolutional layer"):
        grad_cam(nn.Linear(3, 2), torch.randn(1, 3), torch.tensor([0]))
