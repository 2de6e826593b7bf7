"""SmoothGrad: average a base attribution over seeded noisy copies of the input.

`smooth` is the loop only: options are validated in `config`, the pass size and its
out-of-memory retry are `tuning.Passes`, and one `_Run` holds the running statistics of a
call and assembles its `SmoothResult`.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> _ = model.eval()
    >>> result = sg.smooth(model, torch.randn(2, 4), samples=20, seed=0)
    >>> result.attribution.shape, result.samples
    (torch.Size([2, 4]), 20)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from smoothgrad import targets
from smoothgrad.config import SmoothConfig, SmoothOptions, configured
from smoothgrad.guard import explaining, gradients_on
from smoothgrad.inputs import Extras, bind, examples, repeat_rows, split_method
from smoothgrad.methods import BY_NAME, attributed, bounded, resolve_method, rows_per_input
from smoothgrad.noise import standard_normal
from smoothgrad.outputs import pick
from smoothgrad.result import SmoothResult, relative_error, target_probability
from smoothgrad.stats import SampleStats
from smoothgrad.tuning import BatchTuner, Passes, default_batch_size

__all__ = [
    "AUTO_STEP", "BatchTuner", "SmoothConfig", "SmoothResult", "default_batch_size",
    "resolve_method", "smooth",
]

X = TypeVar("X", Tensor, tuple[Tensor, ...])
"""The explained input: one tensor, or a tuple of them (then the maps are tuples too)."""

AUTO_STEP = 10
"""With `samples="auto"`, convergence is checked after every AUTO_STEP samples."""


def smooth(
    model: nn.Module,
    x: X,
    config: SmoothConfig | None = None,
    *,
    target: targets.Requested = None,
    method_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    callback: Callable[[SmoothResult], None] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    layer: nn.Module | None = None,
    noise_mask: Tensor | None = None,
    output: Callable[[Any], Tensor] | None = None,
    noise_range: Tensor | tuple[Tensor, ...] | None = None,
    **overrides: Unpack[SmoothOptions],
) -> SmoothResult[X]:
    """SmoothGrad of `method` for the batch `x` (N, ...): the aggregate of M(x + ε_k) over k.

    - config: the options as one `SmoothConfig` (None: its defaults).
    - overrides: `SmoothConfig` fields as keywords — method, samples, noise or stdev,
      aggregate, batch_size, seed, antithetic, tol, max_samples, fast, estimator (see
      `SmoothConfig` for each). Each one given replaces `config`'s field, whatever its
      value (`samples=50` beside `SmoothConfig(samples=20)` runs 50); any other name is a
      TypeError suggesting the closest.
    - target: None explains each example's clean argmax (kept for every noisy copy); an
      int, or N ints, names classes; a callable `output -> (rows,)` gives a custom score.
    - method_kwargs: extra keywords of the base method (per-example baselines, Captum
      options).
    - progress: called after each pass with the number of samples it added (progress bars).
    - callback: called after each pass with the running `SmoothResult` so far; an exception
      it raises stops the call.
    - forward_kwargs, layer, noise_mask, output, noise_range: inputs beyond one floating
      tensor — x a tuple (integer inputs untouched), keyword inputs of the model, noise at
      a `layer` with padding masked, `output` picking, a per-feature range — described in
      `smoothgrad.inputs.Extras`; with a tuple x the maps come back as tuples.

    The model is explained in eval mode with frozen parameters and is restored afterwards;
    the caller's tensors are never written to, and autograd is on for the passes whatever
    the caller's grad mode (which is restored). Warnings from the passes are given once per
    call, at the caller's line. A map that is not finite for a finite input is an error.
    """
    extras = Extras(forward_kwargs, layer, noise_mask, output, noise_range)
    options = _options(config, x, extras, overrides)
    method, per_call = split_method(options.method, method_kwargs, examples(x), BY_NAME)
    if method is not options.method:
        options = options.replace(method=method)
    if options.estimator == "mean_field":
        from smoothgrad.meanfield import smooth_mean_field
        if not extras.plain(x) or callback is not None:
            raise ValueError("estimator='mean_field' explains one floating tensor, without "
                             "callback, forward_kwargs, layer, noise_mask or output")
        return smooth_mean_field(model, x, options, target, progress)  # type: ignore[return-value]
    caught: list[warnings.WarningMessage] = []
    try:
        with explaining(model), gradients_on(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = _Run(model, x, options, target, extras, per_call)
            _loop(run, progress, callback)
            result = run.result(final=True)
    finally:
        _report(caught)
    return result


_KEYWORDS = ("target", "method_kwargs", "progress", "callback", "forward_kwargs", "layer",
             "noise_mask", "output", "noise_range")
"""`smooth`'s keywords that are not options (for the unknown-keyword suggestion)."""


def _options(config: SmoothConfig | None, x: Any, extras: Extras,
             overrides: Mapping[str, Any]) -> SmoothConfig:
    """The call's options (`config` with every given override applied), and x checked
    against them."""
    options = configured(config, overrides, caller="smooth", others=_KEYWORDS)
    if extras.plain(x):
        _check_input(x)
    elif options.fast:
        raise ValueError("fast=True explains one floating tensor; it cannot be combined with "
                         "several inputs, forward_kwargs, layer, noise_mask or output")
    return options


def _loop(run: _Run, progress: Callable[[int], None] | None,
          callback: Callable[[SmoothResult], None] | None) -> None:
    """Passes until `run` has its samples (or has converged with samples="auto")."""
    auto = run.options.samples == "auto"
    while run.done < run.limit:
        copies = run.passes.copies()
        boundary = (run.done // AUTO_STEP + 1) * AUTO_STEP if auto else run.limit
        count = min(copies, boundary - run.done, run.limit - run.done)
        run.passes.start()
        try:
            run.add(count)
        except torch.cuda.OutOfMemoryError:
            if run.passes.out_of_memory(count):
                continue
            raise
        run.passes.done(copies, count)
        if progress is not None:
            progress(count)
        if callback is not None:
            callback(run.result())
        if auto and run.done % AUTO_STEP == 0 and run.worst_error() <= run.options.tol:
            return
    if auto and run.limit > 1:
        worst = run.worst_error()
        if worst > run.options.tol:
            warnings.warn(f"samples='auto' stopped at max_samples={run.limit} with relative "
                          f"error {worst:.3g} > tol={run.options.tol}: the map has not "
                          "converged", stacklevel=2)


def _report(caught: list[warnings.WarningMessage]) -> None:
    """Give each distinct warning of the call once, pointing at the caller of `smooth`."""
    seen: set[tuple[type[Warning], str]] = set()
    for message in caught:
        key = (message.category, str(message.message))
        if key not in seen:
            seen.add(key)
            warnings.warn(str(message.message), message.category, stacklevel=3)


class _Run:
    """One call's state: the clean target, σ, the pass policy and the running statistics.

    What is noised and explained comes from `smoothgrad.inputs`: x itself for one floating
    tensor, else the floating inputs side by side, or a layer's output.
    """

    def __init__(self, model: nn.Module, x: Any, options: SmoothConfig,
                 target: targets.Requested, extras: Extras,
                 per_call: dict[str, Any]) -> None:
        self.options = options
        subject = extras.prepare(model, x)
        explained = subject.explained
        self.x = explained.detach().clone() if explained.is_inference() else explained.detach()
        clean = subject.clean
        if clean is None:
            with torch.no_grad():
                clean = subject.runner()(self.x.clone())  # a copy: the model may edit x
        if subject.direct and not isinstance(clean, Tensor):
            subject, clean = subject.wrapped(), pick(clean)
        self.subject, self.per_call = subject, subject.at_layer(per_call)
        self.target = targets.resolve(target, clean)
        self.probability = target_probability(clean, None if callable(self.target)
                                              else self.target)
        self.sigma = extras.sigma(subject, self.x, options)
        self.inputs, self.shown_sigma = subject.shown(self.sigma)
        if subject.direct and subject.layer is None and not subject.several:
            self.inputs = x
        self.limit = options.limit if self.sigma.any() else 1
        _warn_without_range(self.sigma.flatten(1).amax(dim=1) if self.sigma.dim() > 1
                            else self.sigma, options)
        self.runner = model
        if options.fast:
            from smoothgrad.fast import cached_copy
            self.runner = cached_copy(model, self.x.clone(), self.target)
        self.explain = resolve_method(options.method)
        self.passes = Passes(model, self.x, method=options.method,
                             batch_size=options.batch_size, fast=options.fast,
                             limit=self.limit, stops_early=options.samples == "auto",
                             unit=rows_per_input(options.method))
        self.stats = [SampleStats(self.x[part].shape, options.aggregates,
                                  antithetic=options.antithetic, device=self.x.device)
                      for part in self.passes.parts]
        self.flips = torch.zeros(self.x.shape[0], device=self.x.device)
        self.done = 0

    def add(self, count: int) -> None:
        """Explain the next `count` noisy copies of every example."""
        seed, antithetic, indices = (self.options.seed, self.options.antithetic,
                                     range(self.done, self.done + count))
        shared = None
        if self.subject.mask is None:  # the same standard-normal draw for every example
            shared = standard_normal(seed, indices, self.x.shape[1:], antithetic=antithetic,
                                     device=self.x.device, dtype=self.x.dtype).unsqueeze(1)
        for part, stats in zip(self.passes.parts, self.stats, strict=True):
            noise = shared if shared is not None else self.subject.noise(
                seed, indices, part, antithetic=antithetic)
            assert noise is not None
            self.flips[part] += self._pass(part, noise, stats)
        self.done += count

    def _pass(self, part: slice, noise: Tensor, stats: SampleStats) -> Tensor:
        """One pass over the noisy copies x[part] + σ·noise[k]; returns flips per example."""
        x, count, shape = self.x[part], noise.shape[0], self.x.shape[1:]
        sigma = self.sigma[part]
        scale = sigma.reshape(*sigma.shape, *([1] * (x.dim() - sigma.dim())))
        batch = (x.unsqueeze(0) + scale.unsqueeze(0) * noise).reshape(-1, *shape)
        target = self.target if callable(self.target) else self.target[part].repeat(count)
        runner = self.runner if self.subject.direct else self.subject.runner(part)
        rows = self.passes.rows if self.subject.direct else max(
            x.shape[0], self.passes.rows // x.shape[0] * x.shape[0])  # whole groups of copies
        explain = bind(bounded(self.explain, self.options.method, rows), self.per_call,
                       self.subject.n, part, count)
        attribution, output = attributed(explain(runner, batch, target), batch.shape[0])
        if attribution.shape != batch.shape:
            raise ValueError(f"method must return a tensor shaped like its input "
                             f"{tuple(batch.shape)}, got {tuple(attribution.shape)}")
        keep = self.subject.keep(part)
        if keep is not None:  # padding: zero attribution
            attribution = attribution * repeat_rows(keep, count)
        flipped = torch.zeros(x.shape[0], device=x.device)
        if not callable(target):
            if output is None:  # the method never evaluated the noisy batch itself (IG)
                with torch.no_grad():
                    output = runner(batch)
            targets.check_logits(output)
            flipped = (output.argmax(dim=1) != target).view(count, -1).sum(dim=0).float()
        stats.update(attribution.detach().reshape(count, *x.shape))
        return flipped.to(x.device)

    def worst_error(self) -> float:
        """The largest relative error of the main aggregate over the examples."""
        name = self.options.aggregates[0]
        return max(float(relative_error(s.stderr(name), s.aggregate(name)).max())
                   for s in self.stats)

    def result(self, *, final: bool = False) -> SmoothResult[Any]:
        """The result so far (`final`: the call's, checked to be finite)."""
        dtype, noisy = self.x.dtype, bool(self.sigma.any())
        maps = {}
        for name in self.options.aggregates:
            value = torch.cat([s.aggregate(name) for s in self.stats]).to(dtype)
            stderr = torch.cat([s.stderr(name) for s in self.stats]).to(dtype)
            if final and not bool(torch.isfinite(value).all()):
                raise FloatingPointError(
                    f"{self.options.method_name} gave a non-finite {name} map for a finite "
                    f"input (in {dtype}); compute in float32 or check the model for overflow")
            maps[name] = (self.subject.unpack(value),
                          self.subject.unpack(stderr if noisy else torch.zeros_like(stderr)))
        main = self.options.aggregates[0]
        resolved = None if callable(self.target) else self.target
        return SmoothResult(
            attribution=maps[main][0], stderr=maps[main][1], samples=self.done,
            target=resolved, sigma=self.shown_sigma, aggregate=main,
            flip_rate=None if resolved is None else self.flips / max(self.done, 1),
            inputs=self.inputs, method=self.options.method_name, probability=self.probability,
            maps=maps)


def _warn_without_range(sigma: Tensor, options: SmoothConfig) -> None:
    """Policy: warn (not refuse) when relative noise meets an example with no range.

    A constant input (a black image) is legitimate and its map is well defined — the base
    method's — but SmoothGrad was asked for and none happens, which the caller should know.
    """
    if options.stdev is None and options.noise and not bool(sigma.all()):
        flat = [int(i) for i in (sigma == 0).nonzero().flatten()]
        which = "the input has" if sigma.shape[0] == 1 else f"examples {flat} have"
        warnings.warn(f"{which} no range (max = min), so σ = noise × range = 0: the map is "
                      "the base method's, without smoothing; pass stdev= for an absolute σ",
                      stacklevel=2)


def _check_input(x: object) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
    if x.is_meta:
        raise ValueError("x is on the meta device, which holds no values: create it (and the "
                         "model) on a real device, e.g. x.to_empty(device='cpu') then fill "
                         "it, or model.to_empty(device=...) and load the weights")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype} "
                        "(convert images with x.float() and the model's preprocessing)")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch shaped (N, ...), got {tuple(x.shape)}; "
                         "add a batch dimension with x[None]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
