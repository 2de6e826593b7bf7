"""Mean-field SmoothGrad: closed-form expectations, Monte-Carlo bias, invariances, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad.methods import gradient
from smoothgrad.noise import noise_scale, standard_normal

NORMAL = torch.distributions.Normal(0.0, 1.0)


def mean_field(model: nn.Module, x: Tensor, *, gates: str = "gaussian", groups: int = 4,
               validate: int = 0, samples: int = 64, **options: object) -> sg.SmoothResult:
    """Mean-field SmoothGrad through its one entry: `smooth(..., estimator=MeanField(...))`."""
    estimator = sg.MeanField(gates, groups, validate)  # type: ignore[arg-type]
    return sg.smooth(model, x, estimator=estimator, samples=samples,
                     **options)  # type: ignore[arg-type]


def one_layer(activation: nn.Module, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), activation, nn.Linear(12, 3)).eval()


def exact_gate(name: str, mu: Tensor, s: Tensor) -> Tensor:
    """E f'(z), z ~ N(μ, s²), for piecewise-linear f, written from the definitions."""
    inside = {"relu": (0.0, math.inf), "relu6": (0.0, 6.0), "hardtanh": (-1.0, 1.0),
              "leaky": (0.0, math.inf)}[name]
    p = NORMAL.cdf((inside[1] - mu) / s) - NORMAL.cdf((inside[0] - mu) / s)
    return 0.1 + 0.9 * p if name == "leaky" else p


@pytest.mark.parametrize("name, activation", [
    ("relu", nn.ReLU()), ("relu6", nn.ReLU6()), ("hardtanh", nn.Hardtanh()),
    ("leaky", nn.LeakyReLU(0.1)),
])
def test_single_rectifier_layer_equals_closed_form_expectation(name: str,
                                                               activation: nn.Module) -> None:
    # One rectifier layer: each unit's pre-activation is exactly Gaussian, so SmoothGrad is
    # W2 diag(E gate) W1 in closed form; mean-field may differ only by its moment estimates.
    model = one_layer(activation)
    x = torch.randn(2, 5) * 2
    noise = 0.3
    sigma = noise_scale(x, noise, None)
    w1, b1, w2 = model[0].weight, model[0].bias, model[2].weight
    mu = x @ w1.T + b1
    s = sigma[:, None] * w1.norm(dim=1)[None, :]
    target = model(x).argmax(dim=1)
    expected = torch.stack([(w2[t] * exact_gate(name, mu[i], s[i])) @ w1
                            for i, t in enumerate(target)]).detach()
    result = mean_field(model, x, samples=4000, noise=noise, seed=3)
    error = (result.attribution - expected).abs()
    assert bool((error <= 5 * result.stderr + 1e-4).all()), (error, result.stderr)
    assert float((result.attribution - expected).norm() / expected.norm()) < 0.02


def test_single_layer_monte_carlo_agrees_and_validate_reports_no_bias() -> None:
    model = one_layer(nn.ReLU(), seed=1)
    x = torch.randn(3, 5)
    result = mean_field(model, x, samples=2000, validate=2000, seed=0)
    assert result.mean_field is not None
    check = result.mean_field.validation
    assert check is not None and check.samples == 2000 and check.distance.shape == (3,)
    # unbiased on one layer: the distance is the two estimates' noise, within its error
    assert bool((check.distance <= check.noise_floor + 4 * check.distance_stderr).all())
    assert float(check.distance.max()) < 0.1


def test_deeper_network_bias_against_a_huge_monte_carlo_sample() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU6(),
                          nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 6)
    reference = sg.smooth(model, x, samples=20000, noise=0.2, seed=1, batch_size=2000)
    mf = mean_field(model, x, samples=4000, noise=0.2, seed=0)
    plain = gradient(model, x, reference.target)
    bias = (mf.attribution - reference.attribution).norm(dim=1) / reference.attribution.norm(dim=1)
    off = (plain - reference.attribution).norm(dim=1) / reference.attribution.norm(dim=1)
    print(f"mean-field bias on a 3-rectifier MLP: {bias.tolist()} (plain gradient: {off.tolist()})")
    assert float(bias.max()) < 0.25  # measured 0.02: biased, far less than the gradient
    assert bool((bias < off / 2).all())


class Forms(nn.Module):
    """Every form a rectifier takes: module, reused module, in-place, functional, methods."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.d, self.out = nn.Linear(16, 16), nn.Linear(16, 3)
        self.relu = nn.ReLU(inplace=True)
        self.prelu = nn.PReLU(16, init=0.2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.a(x))
        h = self.relu(self.b(h))  # reused, in place
        h = F.relu6(self.c(h)) + torch.relu_(self.d(h)).clamp(max=2.0)
        h = F.leaky_relu(h - 1, 0.05) + self.prelu(h - 0.5) + F.hardtanh(h, -0.5, 0.5)
        return self.out(h.clamp(min=-0.1).relu())


def test_every_rectifier_form_is_gated() -> None:
    # With empirical gates and one sample the gates are those of x + σε₀, so for a
    # piecewise-linear network the map is exactly the gradient at the noisy input: a form
    # left ungated would keep the clean input's gate and differ.
    model = Forms().eval()
    x = torch.randn(3, 4)
    sigma = noise_scale(x, 0.5, None)
    noisy = x + sigma[:, None] * standard_normal(7, [0], x.shape[1:])[0]
    result = mean_field(model, x, samples=1, noise=0.5, gates="empirical", seed=7)
    expected = gradient(model, noisy, result.target)
    assert result.mean_field is not None and result.mean_field.sites == 10
    assert result.mean_field.gates == "empirical"
    torch.testing.assert_close(result.attribution, expected)
    assert not torch.allclose(gradient(model, x, result.target), expected)


def test_input_x_gradient_is_x_times_the_gradient() -> None:
    model = one_layer(nn.ReLU())
    x = torch.randn(2, 5)
    grad = mean_field(model, x, samples=64, seed=0)
    ixg = mean_field(model, x, samples=64, seed=0, method="input_x_gradient")
    torch.testing.assert_close(ixg.attribution, x * grad.attribution)


def test_seeded_and_batch_invariant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3)).eval()
    x = torch.randn(3, 5)
    a = mean_field(model, x, samples=37, seed=5, batch_size=16)
    b = mean_field(model, x, samples=37, seed=5, batch_size=16)
    assert torch.equal(a.attribution, b.attribution) and torch.equal(a.stderr, b.stderr)
    for other in (mean_field(model, x, samples=37, seed=5, batch_size=3),
                  mean_field(model, x, samples=37, seed=5, batch_size=100)):
        torch.testing.assert_close(other.attribution, a.attribution)
        torch.testing.assert_close(other.stderr, a.stderr)
    alone = mean_field(model, x[1:2], samples=37, seed=5)
    torch.testing.assert_close(alone.attribution, a.attribution[1:2])
    assert not torch.equal(mean_field(model, x, samples=37, seed=6).attribution, a.attribution)


def test_stderr_tracks_the_spread_over_seeds() -> None:
    model = one_layer(nn.ReLU(), seed=2)
    x = torch.randn(1, 5)
    runs = [mean_field(model, x, samples=32, seed=s) for s in range(30)]
    spread = torch.stack([r.attribution for r in runs]).std(dim=0).norm()
    stderr = torch.stack([r.stderr for r in runs]).square().mean(dim=0).sqrt().norm()
    assert 0.5 < float(stderr / spread) < 2.0


def test_model_left_untouched_also_on_error() -> None:
    model = one_layer(nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean_field(model, torch.randn(2, 5), samples=8)  # no warning: nothing here reads the mode
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    class Boom(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom")

    broken = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        mean_field(broken, torch.randn(1, 5), samples=4)
    assert broken.training and not any(m._forward_hooks or m._forward_pre_hooks
                                       for m in broken.modules())


@pytest.mark.parametrize("activation, name", [
    (nn.ELU(), "elu"), (nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid"), (nn.Mish(), "mish"),
])
def test_activation_without_a_rule_is_refused_naming_the_layer(activation: nn.Module,
                                                                name: str) -> None:
    with pytest.raises(ValueError, match=rf"no Gaussian rule for {name} \(at 1\)"):
        mean_field(one_layer(activation), torch.randn(1, 5), samples=4)


def test_max_pooling_softmax_and_layer_norm_are_named_in_a_warning() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.LayerNorm(36), nn.Linear(36, 3), nn.Softmax(dim=1)).eval()
    with pytest.warns(UserWarning, match="clean-input gradient") as caught:
        result = mean_field(model, torch.randn(1, 1, 8, 8), samples=8)
    message = str(caught[0].message)
    for named in ("max_pool2d (at 2)", "layer_norm (at 4)", "softmax (at 6)"):
        assert named in message
    assert result.attribution.shape == (1, 1, 8, 8)


@pytest.mark.parametrize("kind", ["gelu", "silu", "softplus"])
def test_smooth_activation_gate_matches_numeric_expectation(kind: str) -> None:
    # one smooth layer: the gate must be E f'(z) (exact for GELU, probit approximation for
    # SiLU and softplus), checked here against quadrature of the true derivative
    activation = {"gelu": nn.GELU(), "silu": nn.SiLU(), "softplus": nn.Softplus(beta=2.0)}[kind]
    model = one_layer(activation)
    x = torch.randn(1, 5)
    sigma = noise_scale(x, 0.3, None)
    w1, b1, w2 = model[0].weight, model[0].bias, model[2].weight
    mu = (x @ w1.T + b1)[0].double()
    s = (sigma[0] * w1.norm(dim=1)).double()
    t = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    z = (mu[:, None] + s[:, None] * t[None, :]).requires_grad_(True)
    (deriv,) = torch.autograd.grad(activation(z).sum(), z)
    density = torch.exp(-0.5 * t.square()) / math.sqrt(2 * math.pi)
    gate = torch.trapezoid(deriv * density, t, dim=1)
    target = int(model(x).argmax())
    expected = ((w2[target].double() * gate) @ w1.double()).float()[None].detach()
    result = mean_field(model, x, samples=4000, noise=0.3, seed=0)
    tolerance = 0.01 if kind == "gelu" else 0.03
    assert float((result.attribution - expected).norm() / expected.norm()) < tolerance


def test_bad_input_refused() -> None:
    model = one_layer(nn.ReLU())
    x = torch.randn(2, 5)
    with pytest.raises(TypeError, match="floating-point"):
        mean_field(model, x.long())
    with pytest.raises(ValueError, match="NaN"):
        mean_field(model, torch.full((1, 5), math.nan))
    with pytest.raises(ValueError, match="method"):
        mean_field(model, x, method="guided_backprop")
    with pytest.raises(ValueError, match="gates"):
        mean_field(model, x, gates="median")  # type: ignore[arg-type]
    for bad in ({"samples": 0}, {"samples": 2.5}, {"groups": 1}, {"validate": -1},
                {"seed": -1}, {"noise": -0.1}, {"noise": 0.1, "stdev": 0.2}):
        with pytest.raises(ValueError):
            mean_field(model, x, **bad)  # type: ignore[arg-type]


def test_data_dependent_control_flow_is_detected() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x)
            return torch.relu(h) if x.shape[0] == 1 else h

    with pytest.raises(RuntimeError, match="control flow"):
        mean_field(Branchy().eval(), torch.randn(1, 3), samples=4)


def test_smooth_with_the_mean_field_estimator() -> None:
    model = one_layer(nn.ReLU())
    x = torch.randn(2, 5)
    seen: list[int] = []
    result = sg.smooth(model, x, samples=40, estimator="mean_field", seed=2, noise=0.2,
                       method="input_x_gradient", progress=seen.append)
    direct = sg.smooth(model, x, sg.SmoothConfig(estimator=sg.MeanField()), samples=40, seed=2,
                       noise=0.2, method="input_x_gradient")
    assert torch.equal(result.attribution, direct.attribution)
    assert torch.equal(result.stderr, direct.stderr)
    assert result.samples == 40 and sum(seen) == 40 and result.aggregate == "mean"
    assert result.method == "input_x_gradient" and result.inputs is x
    assert float(result.relative_error().max()) < 1


@pytest.mark.parametrize("options, message", [
    ({"method": "guided_backprop"}, "method must be"),
    ({"aggregate": "var"}, "aggregate must be 'mean'"),
    ({"samples": "auto"}, "samples must be a number"),
    ({"antithetic": True}, "antithetic and fast"),
    ({"callback": print}, "without callback"),
    ({"estimator": "median"}, "estimator must be"),
])
def test_smooth_mean_field_refuses_what_it_does_not_implement(options: dict[str, object],
                                                              message: str) -> None:
    settings = {"estimator": "mean_field", **options}
    with pytest.raises(ValueError, match=message):
        sg.smooth(one_layer(nn.ReLU()), torch.randn(1, 5), **settings)  # type: ignore[arg-type]
