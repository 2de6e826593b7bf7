"""The smoothing options as one frozen object, validated once when it is made.

`smooth(model, x, **options)` builds a `SmoothConfig` from its keywords; a config can also be
made once and passed to many calls (`smooth(model, x, config)`), and `as_dict()` is what a
batch run records in its manifest. NumPy scalars and 0-d tensors are accepted wherever a
number is (they are stored as plain Python numbers).

Example:
    >>> config = SmoothConfig(samples=20, aggregate=("mean", "var"), noise=np.float32(0.1))
    >>> config.aggregates, config.noise, config.limit
    (('mean', 'var'), 0.1, 20)
    >>> SmoothConfig(noise=0.1, stdev=0.2)
    Traceback (most recent call last):
    ...
    smoothgrad.errors.OptionError: give either noise (relative) or stdev (absolute), not both
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import Tensor
from typing_extensions import TypedDict

from smoothgrad.errors import OptionError
from smoothgrad.methods.registry import Method, resolve_method
from smoothgrad.noise import DEFAULT_NOISE
from smoothgrad.stats import AGGREGATES

__all__ = [
    "DEFAULT_NOISE", "MeanField", "SmoothConfig", "SmoothOptions", "as_flag", "as_integer",
    "as_real", "configured",
]

def _scalar(value: object) -> object:
    """A 0-d tensor or array, or a NumPy scalar, as the Python number it holds.

    A float32/float16 value is read as the shortest decimal that gives it back
    (np.float32(0.1) -> 0.1), which is what its writer meant.
    """
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.floating):
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def as_real(name: str, value: object, *, low: float = 0.0, strict: bool = False) -> float:
    """`value` as a finite float ≥ `low` (> `low` when strict), or an OptionError (a
    ValueError) naming `name`."""
    number = _scalar(value)
    if (not isinstance(number, bool) and isinstance(number, numbers.Real)
            and math.isfinite(float(number))
            and (float(number) > low if strict else float(number) >= low)):
        return float(number)
    relation = ">" if strict else ">="
    raise OptionError(f"{name} must be a finite number {relation} {low:g}, got {value!r}")


def as_integer(name: str, value: object, *, low: int = 0) -> int:
    """`value` as an int ≥ `low`, or an OptionError (a ValueError) naming `name`."""
    number = _scalar(value)
    if not isinstance(number, bool) and isinstance(number, numbers.Integral) and int(number) >= low:
        return int(number)
    raise OptionError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class MeanField:
    """The mean-field estimator and its options: `smooth(..., estimator=MeanField(...))`;
    the name "mean_field" is `MeanField()`.

    - gates: "gaussian" (each activation's expected gate under a Gaussian fit of its
      pre-activation) or "empirical" (the mean of its local derivative over the copies).
    - groups: the noisy copies are split into this many groups (≥ 2) for the jackknife
      standard error of the map.
    - validate: M > 0 also runs M ordinary Monte-Carlo samples (seed + 2**32) and reports
      the distance between the two (`SmoothResult.mean_field.validation`).

    Example:
        >>> SmoothConfig(estimator=MeanField(gates="empirical")).estimator_name
        'mean_field'
    """

    gates: Literal["gaussian", "empirical"] = "gaussian"
    groups: int = 4
    validate: int = 0

    def __post_init__(self) -> None:
        if self.gates not in ("gaussian", "empirical"):
            raise OptionError(f"gates must be 'gaussian' or 'empirical', got {self.gates!r}")
        object.__setattr__(self, "groups", as_integer("groups", self.groups, low=2))
        object.__setattr__(self, "validate", as_integer("validate", self.validate))


Estimator = Literal["monte_carlo", "mean_field"] | MeanField
"""An estimator by name, or the mean-field estimator with its options."""


@dataclass(frozen=True)
class SmoothConfig:
    """How `smooth` averages.

    - noise: σ relative to each example's range, σ = noise · (max − min); 0.15 by default.
      stdev: an absolute σ instead (Captum's `stdevs`). Not both. σ = 0 gives exactly
      the base method's attribution (one pass, `samples` = 1); a σ that is not finite is
      refused. An example with no range (a constant input) gets σ = 0, with a warning.
    - method: a name in `sg.methods.registry.BY_NAME`, a callable `(model, x, target)` returning the
      map or `(map, output)` (`functools.partial` for options; it runs with autograd on,
      whatever the caller's grad mode), or a Captum `Attribution` object.
    - aggregate: "mean" (SmoothGrad), "abs" (mean |M|), "square" (SmoothGrad², mean M²) or
      "var" (VarGrad, the unbiased variance over the noisy copies), or a tuple of them: all
      come from the same passes, the first is `attribution`, `select(name)` gives any one.
    - samples: noisy copies per example, or "auto": stop once the relative error
      (`SmoothResult.relative_error`) is ≤ tol for every example of x (checked every
      AUTO_STEP samples); at most `max_samples`, with a warning if it had not converged.
    - seed: noise of sample k depends only on (seed, k) and the example's shape, so results
      are the same for any `batch_size`, alone or in a batch, run after run.
    - batch_size: rows per forward/backward pass (for integrated gradients each noisy copy
      is `steps` rows, cut into passes of this size); memory grows with it, never with
      `samples` or `steps`. "auto" starts from `default_batch_size(device)` and times the
      call's own passes to find the fastest size (see `smoothgrad.tuning`).
    - antithetic: noise pairs ε, −ε; standard errors are then taken over pair averages.
    - fast: explain an optimised copy of the model (see `smoothgrad.fast`). The clean
      prediction uses the model itself. (`guard.reusing_freed_memory` is a further opt-in
      for CPUs: process-wide, see its docstring.)
    - estimator: "monte_carlo" (the average over noisy copies) or "mean_field": `samples`
      noisy forward passes, then one backward with every rectifier's gate replaced by its
      expectation (gradient and input_x_gradient, aggregate "mean"; biased, see
      `smoothgrad.meanfield` and EVALUATION.md); `MeanField(gates=..., groups=...,
      validate=...)` is "mean_field" with its options.

    Validated and normalised on creation: `noise` is DEFAULT_NOISE when neither noise nor
    stdev is given, numbers are Python numbers (NumPy and 0-d tensor scalars accepted), and
    `aggregate` is a name or a tuple of names (`aggregates` is always the tuple).
    """

    method: str | Method | Any = "gradient"
    samples: int | Literal["auto"] = 50
    noise: float | None = None
    stdev: float | Tensor | tuple[float | Tensor, ...] | None = None
    aggregate: str | tuple[str, ...] = "mean"
    batch_size: int | Literal["auto"] = "auto"
    seed: int = 0
    antithetic: bool = False
    tol: float = 0.05
    max_samples: int = 500
    fast: bool = False
    estimator: Estimator = "monte_carlo"

    def __post_init__(self) -> None:
        resolve_method(self.method)  # raises for an unknown name or a non-callable
        if self.noise is not None and self.stdev is not None:
            raise OptionError("give either noise (relative) or stdev (absolute), not both")
        fixed: dict[str, Any] = {"aggregate": _aggregates(self.aggregate)}
        if isinstance(self.stdev, tuple | list) or (
                isinstance(self.stdev, Tensor) and self.stdev.dim() > 0):
            fixed["stdev"] = self.stdev  # per input or per feature: checked against x by smooth
        elif self.stdev is not None:
            fixed["stdev"] = as_real("stdev", self.stdev)
        else:
            fixed["noise"] = as_real("noise", DEFAULT_NOISE if self.noise is None else self.noise)
        fixed["seed"] = as_integer("seed", self.seed)
        if self.batch_size != "auto":
            fixed["batch_size"] = _positive("batch_size", self.batch_size,
                                            "a positive int or 'auto'")
        if self.samples != "auto":
            fixed["samples"] = _positive("samples", self.samples, "a positive int or 'auto'")
        fixed["tol"] = as_real("tol", self.tol, strict=True)  # checked even without "auto"
        fixed["max_samples"] = _positive("max_samples", self.max_samples, "a positive int")
        fixed["antithetic"] = as_flag("antithetic", self.antithetic)
        fixed["fast"] = as_flag("fast", self.fast)
        for name, value in fixed.items():
            object.__setattr__(self, name, value)
        if "var" in self.aggregates and self.limit < 2:
            raise OptionError("aggregate 'var' needs samples >= 2")
        if self.estimator != "monte_carlo":
            _check_mean_field(self)

    @property
    def aggregates(self) -> tuple[str, ...]:
        """Every aggregate computed, the main one first."""
        return (self.aggregate,) if isinstance(self.aggregate, str) else self.aggregate

    @property
    def limit(self) -> int:
        """The most noisy copies per example: `samples`, or `max_samples` with "auto"."""
        return self.max_samples if self.samples == "auto" else int(self.samples)

    @property
    def estimator_name(self) -> str:
        """The estimator's name: "monte_carlo" or "mean_field"."""
        return "mean_field" if isinstance(self.estimator, MeanField) else str(self.estimator)

    @property
    def mean_field(self) -> MeanField:
        """The mean-field options (their defaults unless `estimator` is a `MeanField`)."""
        return self.estimator if isinstance(self.estimator, MeanField) else MeanField()

    @property
    def method_name(self) -> str:
        """The method's name: a built-in's name, else the callable's or object's type name."""
        if isinstance(self.method, str):
            return self.method
        inner = getattr(self.method, "func", self.method)  # functools.partial
        return str(getattr(inner, "__name__", type(inner).__name__))

    def replace(self, **changes: Any) -> SmoothConfig:
        """A copy with the options in `changes` set, whatever their values (validated again).

        noise and stdev are two spellings of σ: setting one to a number clears the other
        (unless both are given), so `replace(stdev=0.1)` works on a config with a noise.

        Example:
            >>> SmoothConfig(noise=0.3).replace(stdev=0.1).noise is None
            True
        """
        for given, other in (("noise", "stdev"), ("stdev", "noise")):
            if changes.get(given) is not None and other not in changes:
                changes = {**changes, other: None}
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as plain values (a method other than a name by its `method_name`)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["method"] = self.method_name
        if isinstance(self.estimator, MeanField):
            values["estimator"] = {"name": "mean_field", **dataclasses.asdict(self.estimator)}
        values["aggregate"] = list(self.aggregates) if len(self.aggregates) > 1 else (
            self.aggregates[0])
        return values


class SmoothOptions(TypedDict, total=False):
    """`SmoothConfig`'s fields as keywords (`smooth(model, x, samples=20, seed=1)`): the
    type of `smooth`'s `**overrides`, so type checkers and IDEs know each name and type."""

    method: str | Method | Any
    samples: int | Literal["auto"]
    noise: float | None
    stdev: float | Tensor | tuple[float | Tensor, ...] | None
    aggregate: str | tuple[str, ...]
    batch_size: int | Literal["auto"]
    seed: int
    antithetic: bool
    tol: float
    max_samples: int
    fast: bool
    estimator: Estimator


FIELDS = tuple(field.name for field in dataclasses.fields(SmoothConfig))
"""The option names, in `SmoothConfig`'s order."""


def configured(config: SmoothConfig | None, overrides: Mapping[str, Any], *,
               caller: str = "smooth", others: Iterable[str] = ()) -> SmoothConfig:
    """`config` (None: the defaults) with every option in `overrides` set, whatever its value.

    An option given is an option used: `samples=50` beside `SmoothConfig(samples=20)` gives
    50, even though 50 is the default. A name that is not an option is a TypeError that
    suggests the closest option (or one of `others`, the caller's other keywords).

    Example:
        >>> configured(SmoothConfig(samples=20, seed=3), {"samples": 50}).samples
        50
        >>> configured(None, {"sample": 5})
        Traceback (most recent call last):
        ...
        TypeError: smooth() got an unexpected keyword argument 'sample'; did you mean 'samples'?
    """
    for name in overrides:
        if name not in FIELDS:
            raise TypeError(_unexpected(caller, name, (*FIELDS, *others)))
    if config is None:
        return SmoothConfig(**overrides)
    if not isinstance(config, SmoothConfig):
        raise TypeError(f"config must be a SmoothConfig, not {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def _unexpected(caller: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else (
        f"; the options are {', '.join(FIELDS)}")
    return f"{caller}() got an unexpected keyword argument {name!r}{hint}"


def as_flag(name: str, value: object) -> bool:
    """`value` if it is a bool (or a 0-d bool array), else an OptionError naming `name`."""
    flag = _scalar(value)
    if isinstance(flag, bool):
        return flag
    raise OptionError(f"{name} must be True or False, got {value!r}")


def _positive(name: str, value: object, kind: str) -> int:
    number = _scalar(value)
    if not isinstance(number, bool) and isinstance(number, numbers.Integral) and int(number) >= 1:
        return int(number)
    raise OptionError(f"{name} must be {kind}, got {value!r}")


def _aggregates(value: object) -> str | tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(
        value, tuple | list) else (value,)
    bad = [name for name in names if name not in AGGREGATES]
    if bad or not names or len(set(names)) != len(names):
        raise OptionError(f"aggregate must be one of {', '.join(AGGREGATES)} (or a tuple of "
                         f"distinct ones), got {value!r}")
    return names[0] if len(names) == 1 else names


def _check_mean_field(options: SmoothConfig) -> None:
    """Refuse options that the mean-field estimator does not implement."""
    if options.estimator_name != "mean_field":
        raise ValueError(f"estimator must be 'monte_carlo' or 'mean_field', "
                         f"got {options.estimator!r}")
    problems = []
    if options.method not in ("gradient", "input_x_gradient"):
        problems.append(f"method must be 'gradient' or 'input_x_gradient' "
                        f"(got {options.method_name!r})")
    if options.samples == "auto":
        problems.append("samples must be a number")
    if options.aggregates != ("mean",):
        problems.append("aggregate must be 'mean'")
    if options.antithetic or options.fast:
        problems.append("antithetic and fast are not supported")
    if options.stdev is not None and not isinstance(options.stdev, float):
        problems.append("stdev must be one number")
    if problems:
        raise ValueError("estimator='mean_field': " + "; ".join(problems))
