"""Grad-CAM and Grad-CAM++ as base methods, against Captum and a hand formula."""

from __future__ import annotations

import copy

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


def inplace_net(inplace: bool) -> nn.Module:
    """The issue's net: Grad-CAM's layer (the last convolution) feeds an in-place ReLU."""
    return seeded(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace),
                                nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace),
                                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 5)))


class ReusedInplace(nn.Module):
    """One nn.ReLU(inplace=True) object after both convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.relu, self.head = nn.ReLU(inplace=True), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", [grad_cam, grad_cam_plus_plus])
def test_grad_cam_is_not_changed_by_an_inplace_successor(method) -> None:  # type: ignore[no-untyped-def]
    """Issue 24: the recorded activation was overwritten by the in-place ReLU after the
    layer, so the map was Grad-CAM at the ReLU's output (1.65 apart)."""
    from captum.attr import LayerAttribution, LayerGradCam

    x, target = images(3) * 2, torch.tensor([0, 2, 4])
    plain, inplace = inplace_net(False), inplace_net(True)
    expected = method(plain, x, target)
    torch.testing.assert_close(method(inplace, x, target), expected)
    if method is grad_cam:
        theirs = LayerGradCam(plain, plain[2]).attribute(x, target=target, relu_attributions=True)
        theirs = LayerAttribution.interpolate(theirs, (8, 8), interpolate_mode="bilinear")
        torch.testing.assert_close(expected, theirs.expand_as(x), rtol=1e-5, atol=1e-7)
    reused = seeded(ReusedInplace())
    separate = copy.deepcopy(reused)
    separate.relu = nn.ReLU()
    torch.testing.assert_close(method(reused, x, target), method(separate, x, target))


class PatchNet(nn.Module):
    """A vision-transformer-like net: one patchifying convolution, then token mixing."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.mix(self.patch(x).flatten(2).transpose(1, 2))  # (N, 4, 8)
        return self.head(tokens.mean(dim=1))


def test_grad_cam_refuses_the_input_layer_and_reads_tokens_on_the_grid() -> None:
    """Issue 24: the default layer of a ViT is its patch embedding, the input layer: refused
    with a message naming a token layer, which is then read on the patch grid."""
    model, x, target = seeded(PatchNet()), images(2), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"\(patch\) is its input layer.*layer=model\.mix"):
        grad_cam(model, x, target)
    seen = []
    handle = model.mix.register_forward_hook(lambda m, i, o: seen.append(o))
    score = model(x).gather(1, target[:, None]).sum()
    handle.remove()
    (g,) = torch.autograd.grad(score, seen[0])
    a, g = (t.detach().reshape(2, 2, 2, 8).permute(0, 3, 1, 2) for t in (seen[0], g))
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True).clamp(min=0)
    expected = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grad_cam(model, x, target, layer=model.mix),
                               expected.expand_as(x))
