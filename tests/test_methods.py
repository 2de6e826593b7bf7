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
    torch.testing.assert_close(sg.methods.gradient(model, x, target), expected)
    torch.testing.assert_close(sg.methods.input_x_gradient(model, x, target), x * expected)
    assert all(p.grad is None for p in model.parameters())


def test_input_x_gradient_equals_captum(cnn: nn.Module, x: Tensor) -> None:
    target = torch.tensor([1, 3])
    torch.testing.assert_close(sg.methods.input_x_gradient(cnn, x, target),
                               InputXGradient(cnn).attribute(x.clone(), target=target))


def test_guided_backprop_equals_captum_on_reused_inplace_relu() -> None:
    model, x, target = seeded(ReusedReluCNN()), images(3), torch.tensor([0, 2, 4])
    ours = sg.methods.guided_backprop(model, x, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about backward hooks on in-place ReLU
        theirs = GuidedBackprop(copy.deepcopy(model)).attribute(x.clone(), target=target)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, sg.methods.gradient(model, x, target))


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
    if name in ("GELU", "SiLU"):  # our extension of the rule: said at call time
        with pytest.warns(UserWarning, match=f"extended rule.*{name.capitalize()}"):
            ours = sg.methods.guided_backprop(model, x, target)
    else:
        ours = sg.methods.guided_backprop(model, x, target)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(leaf).gather(1, target[:, None]).sum(), leaf)
    torch.testing.assert_close(ours, expected, msg=name)
    assert not torch.allclose(ours, sg.methods.gradient(model, x, target)), name


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
    ours = sg.methods.integrated_gradients(model, x, target, steps=64, baseline=baseline)
    theirs = IntegratedGradients(model).attribute(x, baselines=baseline.expand_as(x),
                                                 target=target, n_steps=64)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    chunked = sg.methods.integrated_gradients(model, x, target, steps=64, baseline=baseline,
                                              batch_size=10)
    torch.testing.assert_close(chunked, ours)
    with torch.no_grad():
        delta = (model(x) - model(baseline.expand_as(x))).gather(1, target[:, None]).squeeze(1)
    gap = (ours.sum((1, 2, 3)) - delta).abs() / delta.abs()
    assert (gap < 0.01).all(), gap


def test_deeplift_equals_captum_and_sums_to_delta() -> None:
    model, x, target = seeded(SeparateReluCNN()), images(3), torch.tensor([0, 1, 3])
    ours = sg.methods.deeplift(model, x, target)
    theirs = DeepLift(copy.deepcopy(model)).attribute(x, target=target)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(ours.sum((1, 2, 3)), delta, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, sg.methods.input_x_gradient(model, x, target), atol=1e-4)


@pytest.mark.parametrize("act", [F.relu, nn.ReLU6(), lambda t: torch.relu_(t),
                                 nn.ReLU(inplace=True)])
def test_deeplift_sums_to_delta_for_every_relu_form(act) -> None:  # type: ignore[no-untyped-def]
    model, x, target = seeded(ActivationCNN(act)), images(2) * 2, torch.tensor([2, 4])
    baseline = torch.full((3, 8, 8), -0.2)
    ours = sg.methods.deeplift(model, x, target, baseline=baseline)
    with torch.no_grad():
        delta = (model(x) - model(baseline.expand_as(x))).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(ours.sum((1, 2, 3)), delta, rtol=1e-5, atol=1e-5)


def test_deeplift_warns_on_max_pooling() -> None:
    model = seeded(ActivationCNN(lambda t: F.max_pool2d(F.relu(t), 3, stride=1, padding=1)))
    with pytest.warns(UserWarning, match="does not sum.*max_pool2d"):
        sg.methods.deeplift(model, images(1), torch.tensor([0]))


def test_smoothgrad_over_every_method_runs_on_noisy_batches(x: Tensor) -> None:
    model = seeded(ReusedReluCNN())
    for name in sg.methods.registry.BY_NAME:
        result = sg.smooth(model, x, method=name, samples=4, batch_size=3)
        assert result.attribution.shape == x.shape and torch.isfinite(result.attribution).all()


# ------------------------------------------------------ DeepLIFT beyond plain CNNs (issue 10)


class BatchReshaping(nn.Module):
    """relu(linear(x.reshape(-1, 8))) on (N, T, 8): the batch dimension is folded into rows
    (an nn.ReLU module, which Captum's DeepLift needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.relu, self.head = nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.relu(self.inner(x.reshape(-1, 8)))
        return self.head(hidden).reshape(x.shape[0], -1, 3).sum(dim=1)


class BatchMoving(nn.Module):
    """Moves the batch dimension last before the nonlinearity."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.head = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.sigmoid(self.inner(x).permute(1, 2, 0))  # (T, 6, N)
        return self.head(hidden.permute(2, 0, 1)).sum(dim=1)


@pytest.mark.parametrize("model_type", [BatchReshaping, BatchMoving])
def test_deeplift_reaches_models_that_reshape_the_batch(model_type: type[nn.Module]) -> None:
    model = seeded(model_type())
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the rule is applied everywhere
        ours = sg.methods.deeplift(model, x, target)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(ours.sum((1, 2)), delta, rtol=1e-5, atol=1e-5)
    if model_type is BatchReshaping:  # Captum pairs halves of dim 0, which holds here
        theirs = DeepLift(copy.deepcopy(model)).attribute(x, target=target)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn, self.head = cell(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _traced() -> nn.Module:
    inner = seeded(nn.Sequential(nn.Flatten(), nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 3)))
    return torch.jit.trace(inner, torch.randn(1, 4, 8))


def _scripted() -> nn.Module:
    inner = seeded(nn.Sequential(nn.Flatten(), nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 3)))
    return torch.jit.script(inner)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("make", "named"), [
    (_traced, r"relu.*TopLevelTracedModule"),
    (_scripted, r"relu.*RecursiveScriptModule"),
    (lambda: seeded(Recurrent(nn.LSTM)), r"rnn \(LSTM\)"),
    (lambda: seeded(Recurrent(nn.GRU)), r"sigmoid ×\d+, tanh ×\d+, rnn \(GRU\)"),
])
def test_deeplift_names_what_it_cannot_reach(make, named: str) -> None:  # type: ignore[no-untyped-def]
    """TorchScript and recurrent layers hide their nonlinearities from the rescale rule: the
    result would silently be gradient × input, so the warning names the unmodified part."""
    model = make()
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=f"does not sum.*does not cover.*{named}"):
        sg.methods.deeplift(model, x, torch.tensor([0, 1]))


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2)),
    lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 2)),
])
def test_deeplift_in_half_precision_is_finite_and_close(make) -> None:  # type: ignore[no-untyped-def]
    model = seeded(make())
    shape = (4, 10) if isinstance(model[0], nn.Linear) else (4, 3, 8, 8)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    x[0] = 0  # an example equal to the baseline, and a region equal to it (a black border):
    x[1, ..., :4] = 0  # Δx is exactly 0 at units that only see them, where 0/0 gave NaN
    target = torch.tensor([0, 1, 1, 0])
    full = sg.methods.deeplift(model, x, target)
    half = sg.methods.deeplift(copy.deepcopy(model).half(), x.half(), target)
    assert torch.isfinite(half).all()
    scale = full.abs().max()
    assert float((half.float() - full).abs().max() / scale) < 0.05


@pytest.mark.parametrize("method", sorted(sg.methods.registry.BY_NAME))
def test_methods_return_the_output_they_computed(method: str, cnn: nn.Module, x: Tensor) -> None:
    """with_output gives (map, output): the model's output on exactly the given rows, or
    None (integrated gradients never evaluates x itself); calling gives the map."""
    target = torch.tensor([1, 3])
    chosen = sg.methods.registry.BY_NAME[method]
    attribution, output = chosen.with_output(cnn, x, target)
    torch.testing.assert_close(attribution, chosen(cnn, x, target))
    if method == "integrated_gradients":
        assert output is None
    else:
        assert output is not None
        torch.testing.assert_close(output, cnn(x))


# ------------------------------------------ every target and output form, every method (24)


class Labelled(nn.Module):
    """The shared CNN with class names, as `smoothgrad.models` gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = seeded(ReusedReluCNN())
        self.labels = ["cat", "dog", "fox", "owl", "emu"]

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)  # type: ignore[no-any-return]


def _options(method: str) -> dict[str, object]:
    return {"steps": 4} if method == "integrated_gradients" else {}


@pytest.mark.parametrize("method", sorted(sg.methods.registry.BY_NAME))
def test_every_method_takes_every_target_form(method: str) -> None:
    """Issue 23: `deeplift.with_output(model, x, 281)` raised AttributeError on an int; every
    base method takes what smooth takes, through one conversion."""
    import numpy as np

    model, x = Labelled().eval(), images(2)
    chosen, options = sg.methods.registry.BY_NAME[method], _options(method)
    expected = chosen(model, x, torch.tensor([2, 2]), **options)
    for form in (2, [2], [2, 2], np.int64(2), np.array([2, 2]), torch.tensor(2), "fox",
                 "FOX", ["fox", "fox"], lambda out: out[:, 2]):
        torch.testing.assert_close(chosen.with_output(model, x, form, **options).map,
                                   expected, msg=f"{method} {form!r}")
    argmax = model(x).argmax(dim=1)
    torch.testing.assert_close(chosen(model, x, None, **options), chosen(model, x, argmax,
                                                                         **options))
    for bad, error, says in ((2.5, TypeError, "target must be"), ("yak", ValueError,
                             "target: unknown class 'yak'"), (7, ValueError, "out of range")):
        with pytest.raises(error, match=says):
            chosen(model, x, bad, **options)
    with pytest.raises(ValueError, match="target: 'fox' is a class name, but the model has "
                                         "no labels"):
        chosen(model.inner, x, "fox", **options)


class Returns(nn.Module):
    """The shared CNN returning its logits as a tuple, a dict or a ModelOutput."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.inner, self.form = seeded(ReusedReluCNN()), form

    def forward(self, x: Tensor) -> object:
        logits = self.inner(x)
        if self.form == "tuple":
            return logits, "extra"
        if self.form == "dict":
            return {"logits": logits, "hidden": None}
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=logits)


@pytest.mark.parametrize("form", ["tuple", "dict", "ModelOutput"])
def test_every_method_reads_every_output_form(form: str) -> None:
    """Issue 24: `sg.methods.gradient(hf_model, x, t)` raised on a ModelOutput."""
    model, x, target = Returns(form).eval(), images(2), torch.tensor([1, 3])
    for method in sorted(sg.methods.registry.BY_NAME):
        chosen, options = sg.methods.registry.BY_NAME[method], _options(method)
        torch.testing.assert_close(chosen(model, x, target, **options),
                                   chosen(model.inner, x, target, **options), msg=method)


# ----------------------------------------------------- DeepLIFT's promise, measured (24)


class Block(nn.Module):
    """h = relu(W x) then one operation the rescale rule does not cover, then a head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.inner, self.gate, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.inner(x))  # (N, T, 8)
        if self.kind == "layer_norm":
            h = self.norm(h)
        elif self.kind == "gate":
            h = h * torch.sigmoid(self.gate(h))
        elif self.kind == "square":
            h = h * h
        elif self.kind == "attention":
            h = F.scaled_dot_product_attention(h, h, h)
        return self.head(h).mean(dim=1)


@pytest.mark.parametrize(("kind", "named"), [
    ("layer_norm", "layer_norm"), ("gate", "product of activations \\(mul\\)"),
    ("square", "product of activations \\(mul\\)"),
    ("attention", "scaled_dot_product_attention|product of activations \\(bmm\\)"),
])
def test_deeplift_measures_its_gap_and_names_what_broke_it(kind: str, named: str) -> None:
    """Issue 24: no warning was given on LayerNorm (gap 5.1), a gate h·σ(Wh) (1.2), h·h (2.5)
    or F.scaled_dot_product_attention (0.9); the gap is now measured on every call."""
    model = seeded(Block(kind))
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(2)) * 2
    target = torch.tensor([0, 1, 2])
    with pytest.warns(UserWarning, match=f"does not sum.*relative gap up to .*({named})"):
        explained = sg.methods.deeplift.with_output(model, x, target)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    gap = (explained.map.sum(dim=(1, 2)) - delta).abs() / delta.abs()
    torch.testing.assert_close(explained.notes["deeplift_gap"], gap, rtol=1e-4, atol=1e-6)
    assert float(gap.max()) > 0.01
    with pytest.warns(UserWarning, match="does not sum"):
        result = sg.smooth(model, x, method="deeplift", samples=6, batch_size=4, seed=1)
    assert result.diagnostics["deeplift_gap"].shape == (3,)
    assert bool((result.diagnostics["deeplift_gap"] > 1e-3).any())


def test_deeplift_without_warning_keeps_its_promise_in_smooth() -> None:
    model = seeded(Block("none"))
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(2))
    result = sg.smooth(model, x, method="deeplift", samples=6, batch_size=4)
    assert float(result.diagnostics["deeplift_gap"].max()) < 1e-4


def test_guided_backprop_says_where_it_extends_the_rule() -> None:
    """Issue 24: GELU, SiLU and Mish get our extended rule: said once per call and kept in
    the result's diagnostics."""
    model = seeded(ActivationCNN(nn.GELU()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sg.smooth(model, images(2), method="guided_backprop", samples=6, batch_size=4)
    assert [str(w.message) for w in caught] == [
        "guided_backprop applied its extended rule (zero the negative upstream gradient, then "
        "the local derivative; the original method guides rectifiers only) to: Gelu"]
    assert result.diagnostics == {"extended_rule": ("Gelu",), "unmodified": ()}
    plain = sg.smooth(seeded(ActivationCNN(nn.ReLU())), images(2), method="guided_backprop",
                      samples=2)
    assert plain.diagnostics == {"extended_rule": (), "unmodified": ()}
