"""SmoothGrad engine against the tutorial's plain loop, and its contracts."""

from __future__ import annotations

import copy
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from torch import Tensor, nn

import smoothgrad as sg
from conftest import ActivationCNN, ReusedReluCNN, images, seeded
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
        assert torch.equal(result.attribution, sg.methods.guided_backprop(cnn, x, target))
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
@pytest.mark.filterwarnings("ignore:Captum's Saliency returns")
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


@pytest.mark.parametrize("method", sorted(sg.methods.registry.BY_NAME))
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


# --------------------------------------------------------- options, results, callbacks (issue 9)


def test_config_object_and_keywords_give_the_same_result(cnn: nn.Module, x: Tensor) -> None:
    # a fixed pass size: bit-equality needs passes of the same rows (the tuner moves them)
    config = sg.SmoothConfig(samples=6, noise=0.2, seed=4, aggregate="square", batch_size=4)
    by_config = sg.smooth(cnn, x, config)
    by_keywords = sg.smooth(cnn, x, samples=6, noise=0.2, seed=4, aggregate="square",
                            batch_size=4)
    assert torch.equal(by_config.attribution, by_keywords.attribution)
    changed = sg.smooth(cnn, x, config, seed=5)  # a keyword beside the config replaces it
    assert torch.equal(changed.attribution,
                       sg.smooth(cnn, x, samples=6, noise=0.2, seed=5,
                                 aggregate="square", batch_size=4).attribution)
    assert sg.SmoothConfig().noise == sg.DEFAULT_NOISE == 0.15
    assert config.as_dict()["aggregate"] == "square"


def test_every_aggregate_from_the_same_passes(cnn: nn.Module, x: Tensor) -> None:
    names = ("mean", "abs", "square", "var")
    result = sg.smooth(cnn, x, samples=9, aggregate=names, batch_size=4)
    assert result.aggregate == "mean" and result.aggregates == names
    assert result.inputs is x and result.method == "gradient"
    for name in names:
        alone = sg.smooth(cnn, x, samples=9, aggregate=name, batch_size=4)
        selected = result.select(name)
        assert selected.aggregate == name
        torch.testing.assert_close(selected.attribution, alone.attribution)
        torch.testing.assert_close(selected.stderr, alone.stderr)
    with pytest.raises(ValueError, match="was not computed"):
        sg.smooth(cnn, x, samples=2).select("var")


def test_callback_sees_every_pass_and_can_stop_the_call(x: Tensor) -> None:
    model = training_model()
    seen: list[int] = []
    with pytest.warns(UserWarning, match="training"):
        result = sg.smooth(model, x, samples=7, batch_size=6,
                           callback=lambda partial: seen.append(partial.samples))
    assert seen == [3, 6, 7] and result.samples == 7
    before = Snapshot(model)

    def stop(partial: sg.SmoothResult) -> None:
        raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="training"), pytest.raises(KeyboardInterrupt):
        sg.smooth(model, x, samples=7, batch_size=6, callback=stop)
    before.assert_same(model)


def _counting(model: nn.Module) -> list[int]:
    rows: list[int] = []
    model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    return rows


def test_rows_forwarded_per_method(x: Tensor) -> None:
    """DeepLIFT's two passes already evaluate the noisy input (no extra forward); integrated
    gradients pays exactly one forward of the noisy copies for its flip rate."""
    expected = {"gradient": 2 + 20, "guided_backprop": 2 + 20, "input_x_gradient": 2 + 20,
                "deeplift": 2 + 2 * 20, "integrated_gradients": 2 + 8 * 20 + 20}
    for name, count in expected.items():
        model = seeded(ReusedReluCNN())
        rows = _counting(model)
        method = partial(sg.methods.integrated_gradients, steps=8) if name.startswith(
            "integrated") else name
        sg.smooth(model, x, method=method, samples=10, batch_size=4)
        assert sum(rows) == count, name


# ------------------------------------------------------------ correctness and robustness (issue 10)


def test_antithetic_stderr_is_calibrated_for_every_aggregate() -> None:
    """ε/−ε pairs are not independent samples: the reported error must match the spread."""
    model = seeded(nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)))
    x = torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
    names = ("mean", "abs", "square", "var")
    runs = [sg.smooth(model, x, samples=20, noise=0.3, seed=s, batch_size=6, antithetic=True,
                      aggregate=names) for s in range(300)]
    for name in names:
        chosen = [r.select(name) for r in runs]
        spread = torch.stack([r.attribution for r in chosen]).std(0)
        reported = torch.stack([r.stderr for r in chosen]).square().mean(0).sqrt()
        ratio = (spread / reported)[reported > 1e-6]
        assert 0.75 < ratio.median() < 1.25, (name, ratio)


def _own_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """A user-written method that runs autograd itself, as the README invites."""
    x = x.clone().requires_grad_(True)
    score = model(x).gather(1, target[:, None]).sum()
    return torch.autograd.grad(score, x)[0]


def test_user_methods_and_callers_grad_mode(cnn: nn.Module, x: Tensor) -> None:
    expected = sg.smooth(cnn, x, samples=4).attribution
    torch.testing.assert_close(sg.smooth(cnn, x, samples=4, method=_own_gradient).attribution,
                               expected)
    with torch.no_grad():
        inside = sg.smooth(cnn, x, samples=4).attribution
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(inside, expected)
    with torch.inference_mode():
        made_inside = x.clone()
        inside = sg.smooth(cnn, made_inside, samples=4, method=_own_gradient).attribution
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(inside, expected)


class EditsItsInput(nn.Module):
    def __init__(self, first: str) -> None:
        super().__init__()
        self.first = first
        self.net = ReusedReluCNN()

    def forward(self, x: Tensor) -> Tensor:
        if self.first == "sub_":
            x.sub_(0.5)
        else:
            x = nn.functional.relu(x, inplace=True)
        return self.net(x)


@pytest.mark.parametrize("first", ["sub_", "relu_"])
@pytest.mark.parametrize("method", sorted(sg.methods.registry.BY_NAME))
def test_in_place_first_operation_leaves_the_callers_input(first: str, method: str) -> None:
    model = seeded(EditsItsInput(first))
    x = images(2)
    kept = x.clone()
    result = sg.smooth(model, x, method=method, samples=3, batch_size=2)
    assert torch.equal(x, kept)
    plain = seeded(EditsItsInput(first))
    reference = sg.smooth(plain, x.clone(), method=method, samples=3, batch_size=2)
    torch.testing.assert_close(result.attribution, reference.attribution)
    assert torch.isfinite(result.attribution).all()


def test_integrated_gradients_passes_are_bounded_whatever_the_steps(cnn: nn.Module) -> None:
    x = images(3)
    for steps in (8, 200):
        rows = _counting(cnn)
        method = partial(sg.methods.integrated_gradients, steps=steps)
        sg.smooth(cnn, x, method=method, samples=2, batch_size=8)
        assert max(rows) <= 8, (steps, max(rows))
        cnn._forward_pre_hooks.clear()


_PEAK = """
import resource, sys, functools, torch, smoothgrad as sg
from torch import nn
torch.set_num_threads(1)
model = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(64, 4)).eval()  # cheap, with large activations (1 MiB a row)
x = torch.randn(1, 3, 64, 64)
ig = functools.partial(sg.methods.integrated_gradients, steps=int(sys.argv[1]))
sg.smooth(model, x, method=ig, samples=1, batch_size=8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def test_integrated_gradients_peak_memory_does_not_grow_with_steps() -> None:
    """Peak RSS of a fresh process at steps=200 is close to steps=8 (one pass of all the
    path's rows took ~400 MiB more here)."""
    import subprocess
    import sys
    peaks = [float(subprocess.run([sys.executable, "-c", _PEAK, str(steps)], check=True,
                                  capture_output=True, text=True).stdout.split()[-1])
             for steps in (8, 200)]
    assert peaks[1] < peaks[0] + 100, peaks  # MiB


def test_auto_samples_on_an_input_without_range_warns_once() -> None:
    model = seeded(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    constant = torch.full((1, 4), 0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sg.smooth(model, constant, samples="auto")
        quiet = sg.smooth(model, torch.randn(1, 4), samples="auto", noise=0.0)
    assert [str(w.message)[:30] for w in caught] == ["the input has no range (max = "]
    assert caught[0].filename == __file__
    assert result.samples == 1 and not result.stderr.any()
    assert quiet.samples == 1 and float(quiet.relative_error().max()) == 0


def test_numpy_and_zero_dim_tensor_scalars_are_accepted(cnn: nn.Module, x: Tensor) -> None:
    expected = sg.smooth(cnn, x, samples=4, noise=0.1, seed=3, target=[2, 2], batch_size=3)
    given = sg.smooth(cnn, x, samples=np.int64(4), noise=np.float32(0.1), seed=np.int64(3),
                      target=np.array([2, 2]), batch_size=torch.tensor(3))
    torch.testing.assert_close(given.attribution, expected.attribution)
    assert torch.equal(sg.smooth(cnn, x, samples=2, target=np.int64(2)).target,
                       torch.tensor([2, 2]))
    absolute = sg.smooth(cnn, x, samples=2, stdev=torch.tensor(0.1))
    torch.testing.assert_close(absolute.sigma, torch.full((2,), 0.1))


def test_noise_that_overflows_is_refused(cnn: nn.Module, x: Tensor) -> None:
    with pytest.raises(ValueError, match="not finite"):
        sg.smooth(cnn, x, samples=2, noise=1e308)


def test_noise_that_overflows_is_refused_for_every_input_kind() -> None:
    """The non-finite σ check holds for several inputs and a per-feature range too."""
    linear = seeded(nn.Linear(4, 3)).eval()
    with pytest.raises(ValueError, match="not finite"):
        sg.smooth(linear, torch.randn(1, 4), samples=2, noise=1e300,
                  noise_range=torch.full((4,), 1e30))

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image, self.table = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, image: Tensor, table: Tensor) -> Tensor:
            return self.image(image) + self.table(table)

    with pytest.raises(ValueError, match="not finite"):
        sg.smooth(seeded(TwoInputs()).eval(), (torch.randn(1, 4) * 1e30, torch.randn(1, 2)),
                  samples=2, noise=1e300)


def test_a_method_returning_nan_is_an_error(cnn: nn.Module, x: Tensor) -> None:
    with pytest.raises(FloatingPointError, match="non-finite"):
        sg.smooth(cnn, x, samples=2, method=lambda m, batch, t: batch * float("nan"))


def test_meta_input_gets_a_hint(cnn: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"meta device.*real device"):
        sg.smooth(cnn, torch.empty(1, 3, 8, 8, device="meta"), samples=2)


def test_method_warnings_come_once_per_call_at_the_callers_line() -> None:
    """DeepLIFT's gap differs from pass to pass: one warning, with the largest gap."""
    model = seeded(ActivationCNN(lambda t: F.max_pool2d(F.relu(t), 3, stride=1, padding=1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sg.smooth(model, images(2), method="deeplift", samples=6, batch_size=2)
    assert len(caught) == 1 and "max_pool2d" in str(caught[0].message)
    largest = float(result.diagnostics["deeplift_gap"].max())
    assert f"up to {largest:.2g} " in str(caught[0].message)
    assert caught[0].filename == __file__


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captum_saliency_says_it_is_absolute(cnn: nn.Module, x: Tensor) -> None:
    with pytest.warns(UserWarning, match=r"\|gradient\|.*method='gradient'"):
        sg.smooth(cnn, x, samples=2, method=Saliency(cnn))


def test_out_of_memory_pass_is_retried_smaller_with_the_same_map(cnn: nn.Module) -> None:
    """The tuner grows the pass; a pass that runs out of memory is cut and run again."""
    x = images(1)
    sizes: list[int] = []

    def limited(model: nn.Module, batch: Tensor, target: Tensor) -> Tensor:
        sizes.append(batch.shape[0])
        if batch.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("simulated")
        return sg.methods.gradient(model, batch, target)

    sg.tuning.forget(cnn)
    result = sg.smooth(cnn, x, samples=60, method=limited)
    assert max(sizes) > 8 and sizes[-1] <= 8
    fixed = sg.smooth(cnn, x, samples=60, batch_size=3)
    torch.testing.assert_close(result.attribution, fixed.attribution, rtol=1e-5, atol=1e-7)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sg.smooth(cnn, x, samples=60, method=limited, batch_size=16)  # a fixed size: no retry
