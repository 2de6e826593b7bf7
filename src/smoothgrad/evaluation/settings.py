"""What `evaluate` and `sweep` compute: metric names, table columns and frozen settings."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from smoothgrad.config import SmoothConfig, configured
from smoothgrad.engine import default_batch_size
from smoothgrad.metrics import SCORES, Score
from smoothgrad.metrics.faithfulness import (
    CURVE_KINDS,
    SUBSTRATES,
    CurveKind,
    Substrate,
    default_substrate,
)
from smoothgrad.noise import DEFAULT_NOISE
from smoothgrad.stats import AGGREGATE_TITLES

__all__ = [
    "COLUMNS", "DEFAULT_METRICS", "METRICS", "METRIC_SCORES", "SMOOTHING_NAMES", "SUBSTRATES",
    "SWEEP_COLUMNS", "Evaluation", "MetricOptions", "Progress", "SweepSettings",
]

METRICS = ("total_variation", "gini", "deletion", "insertion", "infidelity", "sensitivity",
           "randomization")
"""Metric names for `evaluate(metrics=...)`; `sensitivity` adds max-sensitivity and, for
SmoothGrad, its noise floor; `randomization` is the Spearman correlation between the map and
the map of the fully re-initialised model."""

DEFAULT_METRICS = METRICS[:5]
"""The metrics that cost at most a few forward passes per map (sensitivity and
randomization cost 20 and 1 extra maps per method)."""

METRIC_SCORES = {"total_variation": ("total_variation",), "gini": ("gini",),
                 "deletion": ("deletion_auc",), "insertion": ("insertion_auc",),
                 "infidelity": ("infidelity",),
                 "sensitivity": ("sensitivity_max", "sensitivity_floor"),
                 "randomization": ("randomization_spearman",)}
"""Metric name -> the keys of the scores it adds to a row."""

SMOOTHING_NAMES = {"none": "plain", **AGGREGATE_TITLES}

_INFO = {"image": ("image", "s"), "method": ("method", "s"), "smoothing": ("smoothing", "s"),
         "samples": ("n", "d"), "relative_error": ("rel.err", ".3f"), "flip_rate": ("flip", ".2f")}


def _columns(scores: Sequence[Score]) -> dict[str, tuple[str, str]]:
    return {score.key: (score.header, score.fmt) for score in scores}


COLUMNS = {**_INFO, **_columns([SCORES[key] for keys in METRIC_SCORES.values() for key in keys])}
"""Column key -> (terminal header, number format) of `evaluate` rows, in table order; the
arrows (↑ higher is better, ↓ lower) come from `smoothgrad.metrics.SCORES`."""

SWEEP_COLUMNS = {
    "row": ("row", "s"), "noise": ("noise", ".2f"), "samples": ("n", "d"),
    "relative_error": ("rel.err", ".3f"), "flip_rate": ("flip", ".2f"),
    **_columns([SCORES["relative_l2"], Score("processed_l2", "shown L2", ".3f", "lower"),
                SCORES["spearman"]]),
    **_columns([SCORES[key] for key in ("total_variation", "gini", "deletion_auc",
                                        "insertion_auc")]),
}
"""Column key -> (header, format) of `sweep` rows."""

Progress = Callable[[str, int, int], None]
"""`progress(task, done, total)`: called as each metric's work advances (for progress bars)."""


@dataclass(frozen=True)
class MetricOptions:
    """How the metrics are computed (defaults in brackets).

    steps: deletion and insertion curve steps [50]. substrate: what deleted pixels become and
    insertion starts from, "zeros", "mean" or "blur" (`metrics.faithfulness.substrate_image`)
    [deletion "mean", insertion "blur"]. rise: RISE's protocol for both curves (deletion to
    zeros, insertion from RISE's blur, steps of 224 pixels; leave steps and substrate out)
    [False]. infidelity_perturbations: Gaussian perturbations of infidelity [50], of std
    `infidelity_std` [0.1], β-rescaled when `infidelity_normalize` [True] (Captum: 10 and
    False). sensitivity_perturbations: inputs of max-sensitivity [10], uniform in the L-inf
    ball of `sensitivity_radius` [0.02] (Captum's defaults; Quantus: 200 and 0.2).
    floor_seeds: other seeds of the noise floor [10]. Every forward pass of a metric has at
    most the smoothing `batch_size` rows (with "auto", the engine's starting size for the
    device), so memory is bounded whatever the step or perturbation count.
    """

    steps: int | None = None
    substrate: Substrate | None = None
    rise: bool = False
    infidelity_perturbations: int = 50
    infidelity_std: float = 0.1
    infidelity_normalize: bool = True
    sensitivity_perturbations: int = 10
    sensitivity_radius: float = 0.02
    floor_seeds: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "infidelity_perturbations", "sensitivity_perturbations",
                     "floor_seeds"):
            value = getattr(self, name)
            if value is None and name == "steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("infidelity_std", "sensitivity_radius"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if self.substrate is not None and self.substrate not in SUBSTRATES:
            raise ValueError(f"substrate must be one of {', '.join(SUBSTRATES)}, "
                             f"got {self.substrate!r}")
        if self.rise and (self.steps is not None or self.substrate is not None):
            raise ValueError("rise is RISE's protocol: leave steps and substrate out")

    @property
    def curve_steps(self) -> int | None:
        """Steps of the deletion/insertion curves, None for RISE's (224 pixels a step)."""
        return None if self.rise else self.steps or 50

    def substrates(self) -> dict[CurveKind, Substrate]:
        """The substrate of each curve kind under these options."""
        return {kind: self.substrate or default_substrate(kind, self.rise)
                for kind in CURVE_KINDS}

    @staticmethod
    def pass_size(smoothing: SmoothConfig, device: torch.device) -> int:
        """Rows per forward pass of the metrics: the smoothing `batch_size`."""
        size = smoothing.batch_size
        return size if isinstance(size, int) else default_batch_size(device)


class _Settings:
    """`of(**keywords)`: the settings object from flat keywords (see `settings_from`)."""

    SET_BY_CALL: ClassVar[tuple[str, ...]] = ()
    """Smoothing options the call sets itself (refused as keywords)."""

    @classmethod
    def of(cls, **settings: Any) -> Any:
        """Built from flat keywords: its fields, `MetricOptions` fields, and smoothing options."""
        return settings_from(cls, settings)


@dataclass(frozen=True)
class Evaluation(_Settings):
    """What `evaluate` computes: methods, SmoothGrad aggregates, metrics and their options.

    `smoothing` is the `SmoothConfig` of every `smooth` call (`samples`, `noise`, `seed`,
    `batch_size`, ...); its `method` and `aggregate` are replaced by each row's, and the
    target is `evaluate`'s.
    """

    SET_BY_CALL = ("aggregate", "method", "target")

    methods: tuple[str, ...] = ("gradient", "guided_backprop")
    aggregates: tuple[str, ...] = ("mean", "square", "var")
    metrics: tuple[str, ...] = DEFAULT_METRICS
    options: MetricOptions = MetricOptions()
    smoothing: SmoothConfig = field(default_factory=SmoothConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRICS)}")
        _check_smoothing(self.smoothing)


@dataclass(frozen=True)
class SweepSettings(_Settings):
    """What `sweep` computes: the noise row (σ in `noises` at `at_samples` samples), the
    samples row (n in `samples` at `at_noise`), the `reference_samples`-sample reference,
    the maps' `seed` (the reference uses `seed + 1`), metric options and the other smoothing
    options as a `SmoothConfig` (`aggregate`, `batch_size`, `antithetic`, ...; its method,
    samples, noise and seed are replaced by the sweep's own)."""

    SET_BY_CALL = ("noise", "stdev", "target")

    method: str | Callable[..., Tensor] = "gradient"
    noises: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
    samples: tuple[int, ...] = (2, 5, 20, 50, 100)
    at_noise: float = DEFAULT_NOISE
    at_samples: int = 50
    reference_samples: int = 500
    seed: int = 0
    options: MetricOptions = MetricOptions()
    smoothing: SmoothConfig = field(default_factory=SmoothConfig)

    def __post_init__(self) -> None:
        if self.reference_samples <= max(self.samples):
            raise ValueError(f"reference_samples ({self.reference_samples}) must exceed the "
                             f"largest samples ({max(self.samples)})")
        _check_smoothing(self.smoothing)
        if self.smoothing.stdev is not None:
            raise TypeError("smoothing options cannot set 'stdev': sweep sets the noise")


def _check_smoothing(smoothing: object) -> None:
    if not isinstance(smoothing, SmoothConfig):
        raise TypeError(f"smoothing must be a SmoothConfig, not {type(smoothing).__name__}")


def settings_from(cls: Any, settings: dict[str, Any], base: Any = None) -> Any:
    """`cls` (or `base` with fields replaced) from flat keywords: `cls`'s fields, the fields
    of `MetricOptions` and, for the rest, `SmoothConfig` fields (set on `smoothing`; an
    unknown name is a TypeError suggesting the closest, one the call sets is refused)."""
    if base is None and not settings:
        return cls()
    base = cls() if base is None else base
    own = {f.name for f in dataclasses.fields(cls)}
    metric = {f.name for f in dataclasses.fields(MetricOptions)}
    fields = {key: _tupled(value) for key, value in settings.items() if key in own}
    options = {key: value for key, value in settings.items() if key in metric}
    smoothing = {key: value for key, value in settings.items()
                 if key not in own and key not in metric}
    caller = "evaluate" if cls is Evaluation else "sweep"
    for name in smoothing:
        if name in cls.SET_BY_CALL:
            raise TypeError(f"smoothing options cannot set {name!r}: {caller} sets it")
    if options:
        fields["options"] = dataclasses.replace(fields.get("options", base.options), **options)
    if smoothing:
        fields["smoothing"] = configured(fields.get("smoothing", base.smoothing), smoothing,
                                         caller=caller, others=(*own, *metric))
    return dataclasses.replace(base, **fields)


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
