"""Base methods against analytic gradients, Captum and independent reference rules."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients
from torch import Tensor, nn

import smoothgrad as sg
from conftest import ActivationCNN, ReusedReluCNN, SeparateReluCNN, images, seeded


def test_gradient_equals_analytic_gradient() -> None:
    """f(x) = W2 relu(W1 x): the gradient is W2[c] diag(W1 x > 0) W1."""
    model = seeded(nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(),
                                 nn.Linear(7, 3, bias=False)))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 2, 1])
    w1, w2 = model[0].weight, model[2].weight
    active = (x @ w1.T > 0).float()
    expected = torch.stack([(w2[c] * active[i]) @ w1 for i, c in enumerate(target)])
    torch.testing.assert_close(sg.methods.gradient(model, x, target).map, expected)
    torch.testing.assert_close(sg.methods.input_x_gradient(model, x, target).map, x * expected)
    assert all(p.grad is None for p in model.parameters())


def test_input_x_gradient_equals_captum(cnn: nn.Module, x: Tensor) -> None:
    target = torch.tensor([1, 3])
    torch.testing.assert_close(sg.methods.input_x_gradient(cnn, x, target).map,
                               InputXGradient(cnn).attribute(x.clone(), target=target))


def test_guided_backprop_equals_captum_on_reused_inplace_relu() -> None:
    model, x, target = seeded(ReusedReluCNN()), images(3), torch.tensor([0, 2, 4])
    ours = sg.methods.guided_backprop(model, x, target).map
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about backward hooks on in-place ReLU
        theirs = GuidedBackprop(copy.deepcopy(model)).attribute(x.clone(), target=target)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, sg.methods.gradient(model, x, target).map)


class GuidedFunction(torch.autograd.Function):
    """Reference guided rule for one activation: positive upstream gradient × local slope."""

    @staticmethod
    def forward(ctx, x, fn):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        ctx.fn = fn
        return fn(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(ctx.fn(leaf), leaf, grad.clamp(min=0))
        return local, None


class Guided(nn.Module):
    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return GuidedFunction.apply(x, self.fn)  # type: ignore[no-any-return]


def twin(act, reference_act) -> tuple[nn.Module, nn.Module]:  # type: ignore[no-untyped-def]
    """The model with `act`, and a copy with the same weights using the reference rule."""
    model = seeded(ActivationCNN(act))
    reference = copy.deepcopy(model)
    if isinstance(act, nn.Module):
        del reference.act
    reference.act = Guided(reference_act)
    return model, reference


@pytest.mark.parametrize(("name", "act", "fn"), [
    ("ReLU6 module", nn.ReLU6(), F.relu6),
    ("functional relu", F.relu, F.relu),
    ("torch.relu_ in place", lambda t: torch.relu_(t), F.relu),
    ("hardtanh as ReLU6", lambda t: F.hardtanh(t, 0.0, 6.0), F.relu6),
    ("LeakyReLU", nn.LeakyReLU(0.1), lambda t: F.leaky_relu(t, 0.1)),
    ("GELU", nn.GELU(), F.gelu),
    ("SiLU", nn.SiLU(), F.silu),
])
def test_guided_backprop_reaches_every_rectifier_form(name: str, act, fn) -> None:  # type: ignore[no-untyped-def]
    model, reference = twin(act, fn)
    x, target = images(3) * 3, torch.tensor([0, 1, 2])
    ours = sg.methods.guided_backprop(model, x, target).map
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(leaf).gather(1, target[:, None]).sum(), leaf)
    torch.testing.assert_close(ours, expected, msg=name)
    assert not torch.allclose(ours, sg.methods.gradient(model, x, target).map), name


def test_guided_backprop_warns_about_what_it_leaves_alone() -> None:
    gated = seeded(ActivationCNN(lambda t: torch.relu(t) * torch.sigmoid(t)))
    with pytest.warns(UserWarning, match="unmodified: Sigmoid"):
        sg.methods.guided_backprop(gated, images(1), torch.tensor([0]))
    linear = seeded(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)))
    with pytest.warns(UserWarning, match="no rectifier"):
        sg.methods.guided_backprop(linear, images(1), torch.tensor([0]))


def test_integrated_gradients_equals_captum_and_is_complete() -> None:
    model, x, target = seeded(SeparateReluCNN()), images(2), torch.tensor([1, 3])
    baseline = torch.full((1, 3, 8, 8), 0.1)
    ours = sg.methods.integrated_gradients(model, x, target, steps=64, baseline=baseline).map
    theirs = IntegratedGradients(model).attribute(x, baselines=baseline.expand_as(x),
                                                 target=target, n_steps=64)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    chunked = sg.methods.integrated_gradients(model, x, target, steps=64, baseline=baseline,
                                              batch_size=10).map
    torch.testing.assert_close(chunked, ours)
    with torch.no_grad():
        delta = (model(x) - model(baseline.expand_as(x))).gather(1, target[:, None]).squeeze(1)
    gap = (ours.sum((1, 2, 3)) - delta).abs() / delta.abs()
    assert (gap < 0.01).all(), gap


def test_deeplift_equals_captum_and_sums_to_delta() -> None:
    model, x, target = seeded(SeparateReluCNN()), images(3), torch.tensor([0, 1, 3])
    ours = sg.methods.deeplift(model, x, target).map
    theirs = DeepLift(copy.deepcopy(model)).attribute(x, target=target)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(ours.sum((1, 2, 3)), delta, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, sg.methods.input_x_gradient(model, x, target).map, atol=1e-4)


@pytest.mark.parametrize("act", [F.relu, nn.ReLU6(), lambda t: torch.relu_(t),
                                 nn.ReLU(inplace=True)])
def test_deeplift_sums_to_delta_for_every_relu_form(act) -> None:  # type: ignore[no-untyped-def]
    model, x, target = seeded(ActivationCNN(act)), images(2) * 2, torch.tensor([2, 4])
    baseline = torch.full((3, 8, 8), -0.2)
    ours = sg.methods.deeplift(model, x, target, baseline=baseline).map
    with torch.no_grad():
        delta = (model(x) - model(baseline.expand_as(x))).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(ours.sum((1, 2, 3)), delta, rtol=1e-5, atol=1e-5)


def test_deeplift_warns_on_max_pooling() -> None:
    model = seeded(ActivationCNN(lambda t: F.max_pool2d(F.relu(t), 1)))
    with pytest.warns(UserWarning, match="max_pool2d"):
        sg.methods.deeplift(model, images(1), torch.tensor([0]))


def test_smoothgrad_over_every_method_runs_on_noisy_batches(x: Tensor) -> None:
    model = seeded(ReusedReluCNN())
    for name in sg.methods.BY_NAME:
        result = sg.smooth(model, x, method=name, samples=4, batch_size=3)
        assert result.attribution.shape == x.shape and torch.isfinite(result.attribution).all()
