"""SmoothGrad: average a base attribution over seeded noisy copies of the input.

`smooth` checks a call once (options in `config`, the inputs beyond one tensor in
`inputs.Inputs`) and hands it to an estimator (`smoothgrad.estimator`): Monte Carlo
(`smoothgrad.montecarlo`) or mean-field (`smoothgrad.meanfield`). `SmoothGrad` binds what
belongs to a model once and explains batch after batch.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> _ = model.eval()
    >>> result = sg.smooth(model, torch.randn(2, 4), samples=20, seed=0)
    >>> result.attribution.shape, result.samples
    (torch.Size([2, 4]), 20)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn
from typing_extensions import Unpack

from smoothgrad import targets
from smoothgrad.config import SmoothConfig, SmoothOptions, configured
from smoothgrad.estimator import Call, Estimator, check_input
from smoothgrad.inputs import INPUT_FIELDS, Inputs, examples
from smoothgrad.meanfield import mean_field
from smoothgrad.methods.registry import BY_NAME, resolve_method
from smoothgrad.montecarlo import AUTO_STEP, monte_carlo
from smoothgrad.outputs import OutputFn
from smoothgrad.result import SmoothResult
from smoothgrad.tuning import BatchTuner, default_batch_size

__all__ = [
    "AUTO_STEP", "ESTIMATORS", "BatchTuner", "SmoothConfig", "SmoothKeywords", "SmoothResult",
    "checked_call", "default_batch_size", "estimate", "resolve_method", "smooth",
]

X = TypeVar("X", Tensor, tuple[Tensor, ...])
"""The explained input: one tensor, or a tuple of them (then the maps are tuples too)."""

ESTIMATORS: Mapping[str, Estimator] = {"monte_carlo": monte_carlo, "mean_field": mean_field}
"""The estimators by `SmoothConfig.estimator` name."""


class SmoothKeywords(SmoothOptions, total=False):
    """`smooth`'s `**overrides`: `SmoothConfig`'s fields, and `Inputs`' fields one by one."""

    forward_kwargs: Mapping[str, Any] | None
    layer: nn.Module | None
    noise_mask: Tensor | None
    output: OutputFn | None
    noise_range: Tensor | Sequence[Tensor] | None


def smooth(
    model: nn.Module,
    x: X,
    config: SmoothConfig | None = None,
    *,
    target: targets.Requested = None,
    inputs: Inputs | None = None,
    method_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    callback: Callable[[SmoothResult], None] | None = None,
    **overrides: Unpack[SmoothKeywords],
) -> SmoothResult[X]:
    """SmoothGrad of `method` for the batch `x` (N, ...): the aggregate of M(x + ε_k) over k.

    - model: any differentiable `nn.Module`; x: a floating batch (N, ...), or a tuple of
      inputs (floating ones noised, integer ones untouched; the maps are then tuples).
    - config: the options as one `SmoothConfig` (None: its defaults).
    - target: None explains each example's clean argmax (kept for every noisy copy); an
      int, or N ints, names classes, as do class names where the model has labels (a
      `labels` list, a Hugging Face config's `id2label`); a callable `output -> (rows,)`
      gives a custom score. Every base method takes the same forms (`smoothgrad.targets`).
    - inputs: an `Inputs` — forward_kwargs (keyword inputs of the model, per example where
      their first dimension is N), layer (noise at a module's output, a transformer's
      embeddings), noise_mask (padding: no noise, zero attribution), output (picks the
      scores from the model's output) and noise_range (a per-feature range for σ).
    - method_kwargs: extra keywords of the base method (per-example baselines, Captum
      options).
    - progress: called after each pass with the number of samples it added (progress bars).
    - callback: called after each pass with the running `SmoothResult` so far; an exception
      it raises stops the call (Monte Carlo only).
    - overrides: `SmoothConfig` fields as keywords — method, samples, noise or stdev,
      aggregate, batch_size, seed, antithetic, tol, max_samples, fast, estimator (see
      `SmoothConfig` for each). Each one given replaces `config`'s field, whatever its
      value (`samples=50` beside `SmoothConfig(samples=20)` runs 50). `Inputs`' fields are
      accepted one by one too (`layer=...`), each replacing that field of `inputs`. Any
      other name is a TypeError suggesting the closest.

    The model is explained in eval mode with frozen parameters and is restored afterwards;
    the caller's tensors are never written to, and autograd is on for the passes whatever
    the caller's grad mode (which is restored). Warnings from the passes are given once per
    call, at the caller's line. A map that is not finite for a finite input is an error.
    """
    call, method = checked_call(model, x, config, target, inputs, method_kwargs, progress,
                                callback, overrides)
    return estimate(call, method)


def estimate(call: Call, method: Any) -> SmoothResult[Any]:
    """The call's result from its estimator, keeping the plain pass of `method` (the method
    as the caller gave it) for `show(model)`."""
    result = ESTIMATORS[call.options.estimator_name](call)
    return dataclasses.replace(result, plain_pass=functools.partial(_plain_map, method))


def _plain_map(method: Any, model: nn.Module, x: Tensor, target: Tensor | None,
               instead: Any = None) -> Tensor:
    """The base method's map of x (one pass, no noise): a result's `plain_pass`, with the
    call's method (or `instead`)."""
    return smooth(model, x, method=method if instead is None else instead, target=target,
                  samples=1, noise=0.0).attribution


_KEYWORDS = ("target", "inputs", "method_kwargs", "progress", "callback", *INPUT_FIELDS)
"""`smooth`'s keywords that are not options (for the unknown-keyword suggestion)."""


def checked_call(model: nn.Module, x: Any, config: SmoothConfig | None,
                 target: targets.Requested, inputs: Inputs | None,
                 method_kwargs: Mapping[str, Any] | None,
                 progress: Callable[[int], None] | None,
                 callback: Callable[[SmoothResult], None] | None,
                 overrides: Mapping[str, Any]) -> tuple[Call, Any]:
    """The call checked — options with every given override, inputs with every loose input
    keyword, x against them, the method's keyword options split into fixed and per-example
    ones — and the method as given."""
    if inputs is not None and not isinstance(inputs, Inputs):
        raise TypeError(f"inputs must be a smoothgrad.Inputs, not {type(inputs).__name__}")
    for name, hook in (("progress", progress), ("callback", callback)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be a function or None, not {type(hook).__name__}")
    loose = {key: value for key, value in overrides.items() if key in INPUT_FIELDS}
    given = (inputs or Inputs()).given(loose)
    options = configured(config, {key: value for key, value in overrides.items()
                                  if key not in loose}, caller="smooth", others=_KEYWORDS)
    if given.plain(x):
        check_input(x)
    given_method = options.method
    method, per_call = _split_method(given_method, method_kwargs, examples(x), BY_NAME)
    if method is not given_method:
        options = options.replace(method=method)
    return Call(model, x, options, target, given, per_call, progress, callback), given_method


def _split_method(method: Any, method_kwargs: Mapping[str, Any] | None, n: int,
                 by_name: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the method with its fixed options, the options to pass per call).

    A name or callable with keyword options becomes a `functools.partial` of them (so the
    engine sees e.g. integrated gradients' `steps`), except tensors whose first dimension is
    N (per-example baselines), which are passed per call for the rows of each pass. Options
    of a `functools.partial` the caller made are treated the same. A Captum object gets all
    its options per call.
    """
    options = dict(method_kwargs or {})
    if not all(isinstance(key, str) for key in options):
        raise TypeError("method_kwargs must be a dict with str keys")
    if isinstance(method, functools.partial) and not method.args:
        options = {**method.keywords, **options}
        method = method.func
    if callable(getattr(method, "attribute", None)):
        return method, options
    per_call = {key: value for key, value in options.items() if _per_example_value(value, n)}
    fixed = {key: value for key, value in options.items() if key not in per_call}
    if not fixed:
        return method, per_call
    base = by_name.get(method, method) if isinstance(method, str) else method
    if isinstance(method, str) and method not in by_name:
        return method, options  # unknown name: resolve_method names the problem
    return functools.partial(base, **fixed), per_call


def _per_example_value(value: object, n: int) -> bool:
    """Per-example options (first dimension N), and integer tensors (token-id baselines)."""
    return isinstance(value, Tensor) and value.dim() > 0 and (
        value.shape[0] == n or not value.dtype.is_floating_point)
