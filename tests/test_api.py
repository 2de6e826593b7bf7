"""The public surface of issue 19: `smooth`'s short signature with `sg.Inputs`, the
`sg.SmoothGrad` explainer, estimators by name or object, results that draw what they hold."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad.methods import gradient


class Keyed(nn.Module):
    """Scores that depend on a keyword input (`scale`, per example) and come in a dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: Tensor, scale: Tensor) -> dict[str, Tensor]:
        return {"scores": self.net(x) * scale[:, None]}


def pick_scores(output: dict[str, Tensor]) -> Tensor:
    return output["scores"]


def test_smooth_has_at_most_ten_named_parameters() -> None:
    named = [p for p in inspect.signature(sg.smooth).parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(named) <= 10, [p.name for p in named]


def test_inputs_object_equals_the_loose_keywords() -> None:
    model, x = Keyed().eval(), torch.randn(2, 4)
    scale = torch.tensor([1.0, 2.0])
    loose = sg.smooth(model, x, forward_kwargs={"scale": scale}, output=pick_scores,
                      samples=6, seed=1)
    bound = sg.smooth(model, x, inputs=sg.Inputs(forward_kwargs={"scale": scale},
                                                 output=pick_scores), samples=6, seed=1)
    assert torch.equal(loose.attribution, bound.attribution)
    # a loose keyword replaces that field of `inputs`
    replaced = sg.smooth(model, x, inputs=sg.Inputs(forward_kwargs={"scale": 2 * scale},
                                                    output=pick_scores),
                         forward_kwargs={"scale": scale}, samples=6, seed=1)
    assert torch.equal(replaced.attribution, loose.attribution)
    with pytest.raises(TypeError, match="did you mean 'forward_kwargs'"):
        sg.smooth(model, x, forward_kwarg={"scale": scale})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"inputs must be a smoothgrad\.Inputs"):
        sg.smooth(model, x, inputs={"layer": None})  # type: ignore[arg-type]


def test_the_explainer_binds_the_model_and_options_once() -> None:
    model, x = Keyed().eval(), torch.randn(3, 4)
    scale = torch.tensor([1.0, 0.5, 2.0])
    explain = sg.SmoothGrad(model, sg.SmoothConfig(samples=5, seed=2), output=pick_scores,
                            method="input_x_gradient")
    result = explain(x, target=1, forward_kwargs={"scale": scale})
    expected = sg.smooth(model, x, method="input_x_gradient", samples=5, seed=2, target=1,
                         forward_kwargs={"scale": scale}, output=pick_scores)
    assert torch.equal(result.attribution, expected.attribution)
    assert result.method == "input_x_gradient" and result.samples == 5
    more = explain(x, forward_kwargs={"scale": scale}, samples=7)  # this call only
    assert more.samples == 7 and explain.config.samples == 5
    with pytest.raises(TypeError, match="did you mean 'samples'"):
        sg.SmoothGrad(model, sample=5)  # type: ignore[call-arg]


def test_estimator_by_name_or_with_its_options() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(2, 5)
    by_name = sg.smooth(model, x, estimator="mean_field", samples=16)
    assert by_name.mean_field is not None and by_name.mean_field.gates == "gaussian"
    assert by_name.mean_field.validation is None
    checked = sg.smooth(model, x, estimator=sg.MeanField(validate=8), samples=16)
    assert torch.equal(checked.attribution, by_name.attribution)
    assert checked.mean_field is not None and checked.mean_field.validation is not None
    reference = sg.smooth(model, x, samples=8, seed=2**32, target=by_name.target)
    assert torch.equal(checked.mean_field.validation.monte_carlo, reference.attribution)
    assert sg.smooth(model, x, samples=4).mean_field is None
    with pytest.raises(ValueError, match="groups"):
        sg.MeanField(groups=1)


def test_a_result_draws_its_plain_map_with_the_method_it_was_made_with() -> None:
    """The plain map of `show(model)` comes from the pass the result keeps (the result never
    calls the engine); a callable method needs no `method=` any more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    doubled = functools.partial(lambda model, x, target, k: k * gradient(model, x, target), k=2)
    result = sg.smooth(model, x, method=doubled, samples=3)
    assert result.plain_pass is not None
    plain = result.plain_pass(model, x, result.target)
    torch.testing.assert_close(plain, 2 * gradient(model, x, result.target))
    panels = result.show(model)
    assert len(panels.titles) == 4
    bare = sg.SmoothResult(attribution=x, stderr=x, samples=1, target=None, sigma=x[:, 0, 0, 0],
                           flip_rate=None, aggregate="mean", inputs=x)
    with pytest.raises(ValueError, match="keeps no plain pass"):
        bare.show(model)


def test_the_methods_package_names_methods_only() -> None:
    """`sg.methods` exports the base methods; the registry (read-only) is its own module, and
    a method's `(map, output)` pair is a named tuple, the map first."""
    assert sorted(sg.methods.__all__) == sorted(sg.methods.registry.BY_NAME)
    assert all(callable(getattr(sg.methods, name)) for name in sg.methods.__all__)
    with pytest.raises(TypeError):
        sg.methods.registry.BY_NAME["mine"] = gradient  # type: ignore[index]
    model, x = nn.Linear(3, 2), torch.ones(1, 3)
    pair = gradient.with_output(model, x, torch.tensor([1]))
    assert pair._fields[:2] == ("map", "output") and pair[0] is pair.map


def test_the_explainer_keeps_its_models_pass_sizes() -> None:
    """What is learnt about the model (the tuned pass size, the fast copy) stays on the
    explainer, not in the process-wide caches; a plain `smooth` call still uses those."""
    from smoothgrad import fast, tuning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    explain = sg.SmoothGrad(model, samples=4)
    explain(torch.randn(2, 4))
    explain(torch.randn(2, 4), fast=True)
    assert len(explain.kept.tuners) == 2 and tuning._TUNERS.get(model) is None
    assert model in explain.kept.copies and fast._CACHE.get(model) is None
    sg.smooth(model, torch.randn(2, 4), samples=4, fast=True)
    assert tuning._TUNERS.get(model) and fast._CACHE.get(model) is not None
