"""SmoothGrad engine against the tutorial's plain loop, and its contracts."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from captum.attr import Saliency
from torch import Tensor, nn

import smoothgrad as sg
from conftest import ReusedReluCNN, images, seeded
from smoothgrad.noise import noise_scale, standard_normal


def tutorial_maps(model: nn.Module, x: Tensor, target: Tensor, samples: int, sigma: Tensor,
                  seed: int = 0) -> Tensor:
    """The tutorial's loop: one noisy copy per pass, `.backward()`; returns (samples, *x.shape)."""
    model = copy.deepcopy(model)
    maps = []
    for k in range(samples):
        eps = standard_normal(seed, [k], x.shape[1:])[0]
        per_example = []
        for i in range(x.shape[0]):
            noisy = (x[i] + sigma[i] * eps).unsqueeze(0).requires_grad_(True)
            model.zero_grad()
            model(noisy)[0, target[i]].backward()
            per_example.append(noisy.grad[0])
        maps.append(torch.stack(per_example))
    return torch.stack(maps)


def test_equals_tutorial_loop(cnn: nn.Module, x: Tensor) -> None:
    result = sg.smooth(cnn, x, samples=12, noise=0.15, seed=3)
    expected_target = cnn(x).argmax(1)
    maps = tutorial_maps(cnn, x, expected_target, 12, noise_scale(x, 0.15, None), seed=3)
    assert torch.equal(result.target, expected_target)
    torch.testing.assert_close(result.attribution, maps.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.stderr, maps.std(0) / 12**0.5, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("aggregate", ["abs", "square", "var"])
def test_aggregates_match_direct_statistics(cnn: nn.Module, x: Tensor, aggregate: str) -> None:
    n = 15
    result = sg.smooth(cnn, x, samples=n, aggregate=aggregate, batch_size=4)
    maps = tutorial_maps(cnn, x, result.target, n, result.sigma).double()
    values = {"abs": maps.abs(), "square": maps.square(), "var": None}[aggregate]
    if values is None:
        expected = maps.var(0)  # unbiased
        centred = maps - maps.mean(0)
        mu4, var = centred.pow(4).mean(0), maps.var(0)
        expected_err = ((mu4 - var.square() * (n - 3) / (n - 1)) / n).clamp(min=0).sqrt()
    else:
        expected, expected_err = values.mean(0), values.std(0) / n**0.5
    torch.testing.assert_close(result.attribution.double(), expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(result.stderr.double(), expected_err, rtol=1e-3, atol=1e-8)


def test_batch_size_and_example_by_example_invariance(cnn: nn.Module) -> None:
    x = images(5)
    whole = sg.smooth(cnn, x, samples=11, batch_size=64).attribution
    for batch_size in (1, 3, 7):
        torch.testing.assert_close(sg.smooth(cnn, x, samples=11, batch_size=batch_size)
                                   .attribution, whole, rtol=1e-5, atol=1e-7)
    one_by_one = torch.cat([sg.smooth(cnn, x[i:i + 1], samples=11).attribution for i in range(5)])
    torch.testing.assert_close(one_by_one, whole, rtol=1e-5, atol=1e-7)


def test_seeded_and_global_rng_untouched(cnn: nn.Module, x: Tensor) -> None:
    state = torch.random.get_rng_state()
    a = sg.smooth(cnn, x, samples=5, seed=7).attribution
    b = sg.smooth(cnn, x, samples=5, seed=7).attribution
    c = sg.smooth(cnn, x, samples=5, seed=8).attribution
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_zero_noise_is_exactly_the_base_method(cnn: nn.Module, x: Tensor) -> None:
    target = cnn(x).argmax(1)
    for noise in ({"noise": 0.0}, {"stdev": 0.0}):
        result = sg.smooth(cnn, x, method="guided_backprop", samples=30, **noise)
        assert torch.equal(result.attribution, sg.methods.guided_backprop(cnn, x, target).map)
        assert result.samples == 1
        assert not result.stderr.any()


def test_absolute_stdev_and_relative_noise(cnn: nn.Module, x: Tensor) -> None:
    assert torch.equal(sg.smooth(cnn, x, samples=2, stdev=0.3).sigma, torch.full((2,), 0.3))
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    torch.testing.assert_close(sg.smooth(cnn, x, samples=2, noise=0.2).sigma, 0.2 * spread)
    torch.testing.assert_close(sg.smooth(cnn, x, samples=2).sigma, 0.15 * spread)


def test_stderr_is_calibrated() -> None:
    """Across seeds, the spread of the SmoothGrad mean matches the reported standard error."""
    model = seeded(nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)))
    x = torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
    runs = [sg.smooth(model, x, samples=20, noise=0.3, seed=s, batch_size=20)
            for s in range(300)]
    for aggregate in ("mean", "square"):
        runs = runs if aggregate == "mean" else [
            sg.smooth(model, x, samples=20, noise=0.3, seed=s, aggregate="square",
                      batch_size=20) for s in range(300)]
        spread = torch.stack([r.attribution for r in runs]).std(0)
        reported = torch.stack([r.stderr for r in runs]).square().mean(0).sqrt()
        ratio = (spread / reported)[reported > 1e-6]
        assert 0.8 < ratio.median() < 1.2, (aggregate, ratio)


def test_relative_error_matches_the_measured_error() -> None:
    """Reported ‖stderr‖/‖map‖ tracks the real error against a high-n reference, also when
    that error is large (the noise inflates ‖map‖, which a plain ratio ignores)."""
    model = seeded(nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3)))
    x = torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
    reference = sg.smooth(model, x, samples=20000, noise=1.0, seed=999, batch_size=5000)
    for samples in (10, 40):
        runs = [sg.smooth(model, x, samples=samples, noise=1.0, seed=s) for s in range(60)]
        measured = torch.stack([(r.attribution - reference.attribution).norm()
                                / reference.attribution.norm() for r in runs])
        reported = torch.stack([r.relative_error()[0] for r in runs])
        ratio = float(reported.median() / measured.square().mean().sqrt())
        assert 0.8 < ratio < 1.25, (samples, ratio)


def test_flip_rate_counts_predictions_that_change(cnn: nn.Module, x: Tensor) -> None:
    result = sg.smooth(cnn, x, samples=20, noise=0.5, batch_size=6)
    flips = torch.zeros(2)
    for k in range(20):
        noisy = x + result.sigma.view(-1, 1, 1, 1) * standard_normal(0, [k], x.shape[1:])
        flips += (cnn(noisy).argmax(1) != result.target).float()
    torch.testing.assert_close(result.flip_rate, flips / 20)
    # methods whose passes are not on the noisy batch itself get a separate forward pass,
    # even when their batch has the same number of rows (one IG step)
    for steps in (1, 50):
        ig = partial(sg.methods.integrated_gradients, steps=steps)
        result = sg.smooth(cnn, x, method=ig, samples=20, noise=0.5, batch_size=6)
        torch.testing.assert_close(result.flip_rate, flips / 20)


def test_auto_samples_stop_earlier_on_easy_inputs() -> None:
    model = seeded(nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2)))
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(2))
    easy = sg.smooth(model, x, samples="auto", noise=0.01, tol=0.05)
    hard = sg.smooth(model, x, samples="auto", noise=0.1, tol=0.05)
    with pytest.warns(UserWarning, match="max_samples=37 .* not converged"):
        capped = sg.smooth(model, x, samples="auto", noise=1.0, tol=1e-6, max_samples=37)
    assert easy.samples < hard.samples < 500
    assert float(hard.relative_error().max()) <= 0.05
    assert capped.samples == 37
    again = sg.smooth(model, x, samples="auto", noise=0.1, tol=0.05, batch_size=3)
    assert again.samples == hard.samples
    torch.testing.assert_close(again.attribution, hard.attribution)


def test_targets_int_sequence_tensor_and_callable(cnn: nn.Module, x: Tensor) -> None:
    by_int = sg.smooth(cnn, x, target=2, samples=3)
    by_list = sg.smooth(cnn, x, target=[2, 2], samples=3)
    assert torch.equal(by_int.target, torch.tensor([2, 2]))
    assert torch.equal(by_int.attribution, by_list.attribution)
    custom = sg.smooth(cnn, x, target=lambda out: out[:, 2], samples=3)
    torch.testing.assert_close(custom.attribution, by_int.attribution)
    assert custom.target is None and custom.flip_rate is None
    regression = seeded(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1)))
    result = sg.smooth(regression, x, target=lambda out: out[:, 0], samples=3)
    torch.testing.assert_close(result.attribution, regression[1].weight.view(1, 3, 8, 8)
                               .expand(2, -1, -1, -1))


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captum_attribution_object_as_method(cnn: nn.Module, x: Tensor) -> None:
    ours = sg.smooth(cnn, x, samples=6)
    theirs = sg.smooth(cnn, x, samples=6, method=Saliency(cnn))
    # Captum's Saliency returns |gradient| by default
    torch.testing.assert_close(theirs.attribution, sg.smooth(cnn, x, samples=6, aggregate="abs")
                               .attribution)
    assert not torch.allclose(ours.attribution, theirs.attribution)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"samples": 0}, ValueError, "samples"),
    ({"samples": -3}, ValueError, "samples"),
    ({"samples": 2.5}, ValueError, "samples"),
    ({"noise": -0.1}, ValueError, "noise"),
    ({"noise": float("nan")}, ValueError, "noise"),
    ({"noise": 0.1, "stdev": 0.2}, ValueError, "not both"),
    ({"stdev": -1.0}, ValueError, "stdev"),
    ({"target": 5}, ValueError, "out of range"),
    ({"target": -1}, ValueError, "out of range"),
    ({"target": [1, 2, 3]}, ValueError, "1 or 2 class indices"),
    ({"target": [0.5, 1.0]}, TypeError, "integer"),
    ({"method": "smoothgradcam"}, ValueError, "gradient, input_x_gradient, guided_backprop"),
    ({"method": 42}, TypeError, "method"),
    ({"aggregate": "median"}, ValueError, "mean, abs, square, var"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"seed": -1}, ValueError, "seed"),
    ({"samples": 1, "aggregate": "var"}, ValueError, "var"),
    ({"samples": "auto", "tol": 0}, ValueError, "tol"),
])
def test_bad_arguments_name_the_argument(cnn: nn.Module, x: Tensor, kwargs: dict[str, object],
                                         error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        sg.smooth(cnn, x, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("x", "error", "message"), [
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.full((1, 3, 8, 8), float("inf")), ValueError, "infinite"),
    (torch.ones(1, 3, 8, 8, dtype=torch.uint8), TypeError, "floating-point"),
    (torch.ones(8), ValueError, r"x\[None\]"),
    ([[1.0, 2.0]], TypeError, "torch.Tensor"),
])
def test_bad_inputs(cnn: nn.Module, x: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        sg.smooth(cnn, x, samples=2)  # type: ignore[arg-type]


def test_non_classifier_output_needs_a_callable_target() -> None:
    model = nn.Conv2d(3, 2, 3).eval()
    with pytest.raises(ValueError, match="callable target"):
        sg.smooth(model, images(1), samples=2)
    result = sg.smooth(model, images(1), samples=2, target=lambda out: out.sum((1, 2, 3)))
    assert result.attribution.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="one score per example"):
        sg.smooth(model, images(1), samples=2, target=lambda out: out.sum())


def test_method_returning_wrong_shape_is_refused(cnn: nn.Module, x: Tensor) -> None:
    with pytest.raises(ValueError, match="shaped like its input"):
        sg.smooth(cnn, x, samples=2, method=lambda model, batch, target: batch[:, :1])


class Snapshot:
    """Everything about a model that explaining it must leave as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.training = [m.training for m in model.modules()]
        self.requires_grad = [p.requires_grad for p in model.parameters()]
        self.grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.hooks = [(len(m._forward_hooks), len(m._backward_hooks),
                       len(m._forward_pre_hooks)) for m in model.modules()]

    def assert_same(self, model: nn.Module) -> None:
        assert self.training == [m.training for m in model.modules()]
        assert self.requires_grad == [p.requires_grad for p in model.parameters()]
        for before, param in zip(self.grads, model.parameters(), strict=True):
            assert (before is None and param.grad is None) or torch.equal(before, param.grad)
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in self.state.items())
        assert self.hooks == [(len(m._forward_hooks), len(m._backward_hooks),
                               len(m._forward_pre_hooks)) for m in model.modules()]


def training_model() -> nn.Module:
    model = seeded(ReusedReluCNN())
    model.train()
    model.fc1.weight.requires_grad_(False)  # a user's own freezing must survive
    model.fc2.bias.grad = torch.ones_like(model.fc2.bias)  # and so must an existing .grad
    model.conv2.eval()  # mixed modes too
    return model


@pytest.mark.parametrize("method", sorted(sg.methods.BY_NAME))
def test_model_left_unchanged(method: str, x: Tensor) -> None:
    model = training_model()
    before = Snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        sg.smooth(model, x, method=method, samples=4, batch_size=3)
    before.assert_same(model)


def test_model_left_unchanged_when_the_method_raises(x: Tensor) -> None:
    model = training_model()
    before = Snapshot(model)
    calls = []

    def failing(model: nn.Module, batch: Tensor, target: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return sg.methods.guided_backprop(model, batch, target)

    with pytest.warns(UserWarning, match="training"), pytest.raises(RuntimeError, match="boom"):
        sg.smooth(model, x, method=failing, samples=6, batch_size=2)
    before.assert_same(model)


def test_model_left_unchanged_when_the_model_raises(x: Tensor) -> None:
    model = training_model()
    model.fc2.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("model")))
    before = Snapshot(model)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="model"):
        sg.smooth(model, x, samples=3)
    before.assert_same(model)
