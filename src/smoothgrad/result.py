"""What `smooth` returns: the aggregated map(s), their standard errors and diagnostics.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> result = sg.smooth(model.eval(), torch.randn(2, 4), samples=10,
    ...                    aggregate=("mean", "var"))
    >>> result.aggregate, result.aggregates, result.select("var").aggregate
    ('mean', ('mean', 'var'), 'var')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic

import torch
from torch import Tensor
from typing_extensions import TypeVar

M = TypeVar("M", bound="Tensor | tuple[Tensor, ...]", default=Tensor)
"""A map: one tensor, or a tuple of them (one per floating input of a tuple x)."""

if TYPE_CHECKING:
    from torch import nn

    from smoothgrad.display import Panels
    from smoothgrad.precision import Precision

__all__ = ["MeanFieldFacts", "SmoothResult", "Validation", "relative_error",
           "target_probability"]


@dataclass(frozen=True)
class Validation:
    """Mean-field against `samples` Monte-Carlo samples, per example (N,).

    distance: ‖mean-field − Monte Carlo‖ / ‖Monte Carlo‖; distance_stderr: its standard
    error; noise_floor: the distance expected from the two estimates' own sampling errors
    alone; bias: √(distance² − noise_floor²) (0 where negative), the approximation's error;
    monte_carlo: the Monte-Carlo map.
    """

    samples: int
    distance: Tensor
    distance_stderr: Tensor
    noise_floor: Tensor
    bias: Tensor
    monte_carlo: Tensor


@dataclass(frozen=True)
class MeanFieldFacts:
    """What the mean-field estimator adds to its result: the `gates` kind ("gaussian" or
    "empirical"), the number of activation calls gated (`sites`), and the `validation`
    against Monte Carlo (None unless asked for with `MeanField(validate=M)`)."""

    gates: str
    sites: int
    validation: Validation | None = None


@dataclass(frozen=True)
class SmoothResult(Generic[M]):
    """What `smooth` returns. Tensors are shaped like x unless noted.

    attribution: the aggregated map. stderr: its per-element standard error.
    samples: noisy copies used per example. target: LongTensor (N,) of the explained
    classes, or None for a callable target. sigma: (N,) absolute noise std per example.
    flip_rate: (N,) share of noisy copies whose predicted class differs from the target
    (None for a callable target). aggregate: the aggregation of `attribution`.
    inputs: the explained clean input (a reference to the caller's tensor, not a copy).
    method: the base method's name. probability: (N,) the target's softmax probability in
    the clean output (the class probability for a model that outputs logits), None for a
    callable target. aggregates: every aggregate computed in the same passes (`aggregate`
    first); `select(name)` gives the result for any of them.
    precision: with fast=True, the precision the passes ran in and the check that chose it
    (`smoothgrad.precision.Precision`); None otherwise.
    diagnostics: what the base method measured or applied (its notes), by name:
    ``deeplift_gap`` (N,), each example's largest relative summation gap of DeepLIFT over
    its noisy copies; ``extended_rule`` and ``unmodified``, the operations guided backprop
    applied its extended rule to or left alone. Empty for methods without notes.
    mean_field: the mean-field estimator's facts (`MeanFieldFacts`), None for Monte Carlo;
    its `stderr` is then the jackknife's over groups of the copies (sampling error only,
    not the approximation's bias). plain_pass: `(model, x, target, method=None) -> map`,
    the base method's map without noise, as `smooth` computes it (set by `smooth`;
    `show(model)` draws it).
    """

    attribution: M
    stderr: M
    samples: int
    target: Tensor | None
    sigma: M
    flip_rate: Tensor | None
    aggregate: str
    inputs: M | None = None
    method: str = ""
    probability: Tensor | None = None
    maps: dict[str, tuple[M, M]] = field(default_factory=dict, repr=False, compare=False)
    mean_field: MeanFieldFacts | None = field(default=None, repr=False, compare=False)
    plain_pass: Callable[..., Tensor] | None = field(default=None, repr=False, compare=False)
    diagnostics: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    precision: Precision | None = None

    @property
    def aggregates(self) -> tuple[str, ...]:
        """The aggregates computed, `aggregate` first."""
        return (self.aggregate, *(name for name in self.maps if name != self.aggregate))

    def select(self, name: str) -> SmoothResult[M]:
        """This result for aggregate `name` (one of `aggregates`), from the same passes."""
        if name == self.aggregate:
            return self
        if name not in self.maps:
            raise ValueError(f"aggregate {name!r} was not computed; this result has "
                             f"{', '.join(self.aggregates)} (ask smooth for "
                             f"aggregate=({', '.join(repr(a) for a in (*self.aggregates, name))}))")
        attribution, stderr = self.maps[name]
        return dataclasses.replace(self, attribution=attribution, stderr=stderr, aggregate=name)

    def relative_error(self) -> Tensor:
        """‖stderr‖ / ‖map‖ per example, (N,): how converged each map is (bias-corrected)."""
        return relative_error(_flat(self.stderr), _flat(self.attribution))

    def show(self, model: nn.Module | None = None, **options: Any) -> Panels:
        """Input | plain map (needs `model`) | smoothed map | standard error, for notebooks.

        See `smoothgrad.display.show` for the options. As a cell's value a result draws
        itself the same way, without the plain map.
        """
        from smoothgrad import display

        return display.show(self, model, **options)

    def _repr_html_(self) -> str | None:
        from smoothgrad import display

        return display.html(self)


def target_probability(clean_output: Tensor, target: Tensor | None) -> Tensor | None:
    """Each row's softmax probability of its `target` class, (N,); None without classes.

    >>> target_probability(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([1, 0]))
    tensor([0.5000, 0.8808])
    """
    if target is None:
        return None
    probabilities = clean_output.detach().float().softmax(dim=1)
    return probabilities.gather(1, target.reshape(-1, 1).to(probabilities.device)).squeeze(1)


def _flat(value: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A map as one (N, ...) tensor: a tuple's parts flattened side by side."""
    if isinstance(value, Tensor):
        return value
    return torch.cat([part.flatten(1) for part in value], dim=1)


def relative_error(stderr: Tensor, value: Tensor) -> Tensor:
    """‖stderr‖ / ‖noise-free map‖ per example; inf where the noise is as large as the map.

    The estimate's own noise inflates ‖value‖² by about ‖stderr‖², so the map's size is
    taken as √(‖value‖² − ‖stderr‖²); dividing by ‖value‖ itself reads low exactly when the
    error is large (0.77 where 1.18 was measured, see EVALUATION.md).
    """
    error = stderr.flatten(1).double().square().sum(dim=1)
    signal = value.flatten(1).double().square().sum(dim=1) - error
    ratio = (error / signal.clamp(min=torch.finfo(torch.float64).tiny)).sqrt()
    return torch.where(error == 0, 0.0, torch.where(signal > 0, ratio, math.inf))
