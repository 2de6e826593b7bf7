"""Every smoothing option is the option used (issue 18): each `SmoothConfig` field, given as
a keyword, in a config, in a config with the same keyword beside it at its default value,
and in a config with another keyword beside it, observed through what the call computed.

The model scores class 0 as ½‖x‖², so its gradient is x itself and a SmoothGrad map is
x + σ·mean(ε_k): σ, the noise draws, the sample count and the aggregate can all be read
back from the result. It also records which module ran each pass and how many rows it had.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad.config import FIELDS, SmoothOptions
from smoothgrad.noise import standard_normal

SEEN: list[tuple[int, int]] = []
"""(id of the module that ran, rows) of every forward pass; a list outside the module, so
a copy of the model (the fast path) writes here too."""


class Quadratic(nn.Module):
    """Class 0 scores ½‖x‖² (input gradient: x), class 1 scores −Σx."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)  # a parameter, so the fast path has something to copy

    def forward(self, x: Tensor) -> Tensor:
        SEEN.append((id(self), x.shape[0]))
        flat = x.flatten(1)
        return torch.stack([0.5 * flat.square().sum(1), -flat.sum(1)], dim=1)


MODEL = Quadratic().eval()
X = torch.linspace(0.0, 1.0, 6)[None]  # range 1: σ = noise


@dataclass(frozen=True)
class Seen:
    """What a call computed and how it ran."""

    result: sg.SmoothResult
    rows: int  # the most rows of any pass
    on_copy: bool  # some pass ran on another module than the caller's


def noise_mean(seed: int, samples: int) -> Tensor:
    """mean_k ε_k of the documented noise of samples 0..n-1 (a plain reference)."""
    return standard_normal(seed, range(samples), X.shape[1:]).mean(dim=0, keepdim=True)


def which_seed(seen: Seen) -> int | None:
    result = seen.result
    for seed in (0, 3):
        expected = X + result.sigma[:, None] * noise_mean(seed, result.samples)
        if torch.allclose(result.attribution, expected, atol=1e-6):
            return seed
    return None


def exact(seen: Seen) -> bool:
    """The map is x itself: antithetic pairs cancel, or mean-field's single backward."""
    return bool(torch.allclose(seen.result.attribution, X, atol=1e-6))


@dataclass(frozen=True)
class Option:
    """One SmoothConfig field: a non-default value, how its use is observed, what is observed
    when the value is used and (if known) when the default is; `context`: options it needs."""

    name: str
    value: Any
    observe: Callable[[Seen], Any]
    used: Any
    default: Any = None
    context: dict[str, Any] = field(default_factory=dict)


AUTO = {"samples": "auto", "noise": 0.5}
OPTIONS = [
    Option("method", "input_x_gradient", lambda s: s.result.method, "input_x_gradient",
           "gradient"),
    Option("samples", 7, lambda s: s.result.samples, 7, 50),
    Option("noise", 0.3, lambda s: round(float(s.result.sigma[0]), 6), 0.3, 0.15),
    Option("stdev", 0.25, lambda s: round(float(s.result.sigma[0]), 6), 0.25, 0.15),
    Option("aggregate", "square", lambda s: s.result.aggregate, "square", "mean"),
    Option("batch_size", 3, lambda s: s.rows, 3),
    Option("seed", 3, which_seed, 3, 0, {"samples": 6}),
    Option("antithetic", True, exact, True, False, {"samples": 6}),
    Option("tol", 0.9, lambda s: s.result.samples, 10, context=AUTO),  # stops at once
    Option("max_samples", 20, lambda s: s.result.samples, 20, context=AUTO),  # 280 to converge
    Option("fast", True, lambda s: s.on_copy, True, False),
    Option("estimator", "mean_field", exact, True, False),
]
BESIDE = Option("batch_size", 3, lambda s: s.rows, 3)
"""The other keyword of case (d); the batch_size row gets `samples` instead."""


def run(config: sg.SmoothConfig | None = None, **keywords: Any) -> Seen:
    SEEN.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_samples=20 has not converged, and says so
        result = sg.smooth(MODEL, X, config, target=0, **keywords)
    return Seen(result, max(rows for _, rows in SEEN[1:]),
                any(module != id(MODEL) for module, _ in SEEN))


def test_every_option_has_a_row() -> None:
    assert [option.name for option in OPTIONS] == list(FIELDS)
    assert tuple(f.name for f in dataclasses.fields(sg.SmoothConfig)) == FIELDS


def test_the_keyword_types_are_the_config_fields() -> None:
    """`smooth`'s **overrides is typed with SmoothOptions: same names, same types."""
    def text(annotation: Any) -> str:
        return getattr(annotation, "__forward_arg__", annotation)

    keywords = {name: text(hint) for name, hint in SmoothOptions.__annotations__.items()}
    assert keywords == {f.name: text(f.type) for f in dataclasses.fields(sg.SmoothConfig)}
    assert SmoothOptions.__total__ is False


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_an_option_given_is_the_option_used(option: Option) -> None:
    name, value, context = option.name, option.value, option.context
    default = next(f.default for f in dataclasses.fields(sg.SmoothConfig) if f.name == name)
    assert option.observe(run(**context)) != option.used  # the probe tells them apart

    as_keyword = run(**context, **{name: value})
    assert option.observe(as_keyword) == option.used, "(a) keyword"

    config = sg.SmoothConfig(**context, **{name: value})
    assert option.observe(run(config)) == option.used, "(b) config"

    at_default = run(config, **{name: default})
    observed = option.observe(at_default)
    assert observed != option.used, "(c) a keyword at its default still replaces the config"
    if option.default is not None:
        assert observed == option.default

    beside = BESIDE if name != "batch_size" else Option("samples", 7, lambda s: s.result.samples,
                                                        7)
    both = run(config, **{beside.name: beside.value})
    assert option.observe(both) == option.used, "(d) another keyword beside the config"
    assert beside.observe(both) == beside.used


def test_issue_examples() -> None:
    """The figures of issue 18: each ran 500 or the config's samples."""
    capped = sg.SmoothConfig(samples="auto", tol=1e-9, max_samples=30)
    with pytest.warns(UserWarning, match="max_samples=30 .* tol=1e-09"):
        assert sg.smooth(MODEL, X, capped, target=0).samples == 30
    loose = sg.SmoothConfig(samples="auto", tol=0.9)
    assert sg.smooth(MODEL, X, loose, target=0).samples == 10
    assert sg.smooth(MODEL, X, sg.SmoothConfig(samples=20), samples=50).samples == 50
    seeded = sg.smooth(MODEL, X, sg.SmoothConfig(seed=3, samples=4), seed=0, target=0)
    assert torch.equal(seeded.attribution, sg.smooth(MODEL, X, samples=4, target=0).attribution)


@pytest.mark.parametrize(("keyword", "suggestion"), [
    ("sample", "did you mean 'samples'"), ("targets", "did you mean 'target'"),
    ("forward_kwarg", "did you mean 'forward_kwargs'"), ("aggregates", "'aggregate'"),
    ("colour", "the options are method, samples"),
])
def test_an_unknown_keyword_is_a_type_error_with_a_suggestion(keyword: str,
                                                              suggestion: str) -> None:
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'.*{suggestion}"):
        sg.smooth(MODEL, X, **{keyword: 1})


def test_config_must_be_a_smooth_config() -> None:
    with pytest.raises(TypeError, match="config must be a SmoothConfig, not dict"):
        sg.smooth(MODEL, X, {"samples": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["progress", "callback"])
def test_progress_and_callback_must_be_functions(name: str) -> None:
    """`progress=False` (as tqdm-style APIs take it) failed after the first pass with
    "'bool' object is not callable" from inside the loop."""
    with pytest.raises(TypeError, match=f"{name} must be a function or None, not bool"):
        sg.smooth(MODEL, X, samples=3, **{name: False})


def test_noise_and_stdev_are_one_choice_when_replaced() -> None:
    """stdev= beside a config with a noise (or the default) is the σ used, and back."""
    relative = sg.SmoothConfig(noise=0.3, samples=2)
    assert float(sg.smooth(MODEL, X, relative, stdev=0.5).sigma[0]) == 0.5
    absolute = sg.SmoothConfig(stdev=0.5, samples=2)
    assert float(sg.smooth(MODEL, X, absolute, noise=0.3).sigma[0]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="not both"):
        relative.replace(noise=0.1, stdev=0.2)


# ------------------------------------------------------------- issue 23: every field checked

INVALID = {
    "method": "smoothgradcam", "samples": 0, "noise": -0.1, "stdev": float("nan"),
    "aggregate": "median", "batch_size": 0, "seed": -1, "antithetic": "yes", "tol": -1,
    "max_samples": 0, "fast": 1, "estimator": "mc",
}


def test_every_field_has_an_invalid_value() -> None:
    assert set(INVALID) == set(FIELDS)


@pytest.mark.parametrize("name", list(INVALID))
def test_every_field_is_validated_whatever_the_others(name: str) -> None:
    """tol and max_samples were checked only with samples="auto", antithetic and fast never."""
    with pytest.raises(ValueError, match=name):
        sg.SmoothConfig(**{name: INVALID[name]})
    with pytest.raises(ValueError, match=name):
        sg.SmoothConfig(samples=5).replace(**{name: INVALID[name]})


def test_issue_23_tol_and_max_samples() -> None:
    with pytest.raises(ValueError, match="tol must be a finite number > 0, got -1"):
        sg.SmoothConfig(tol=-1, max_samples=0)
    with pytest.raises(ValueError, match="max_samples must be a positive int, got 0"):
        sg.SmoothConfig(max_samples=0)
