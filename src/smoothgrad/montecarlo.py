"""The Monte-Carlo estimator: the average of the base method over seeded noisy copies.

`monte_carlo(call)` is what `smooth` runs by default: passes of noisy copies, sized and
retried by `tuning.Passes`, their maps folded into running statistics (`stats.SampleStats`)
by one `_Run`, which also assembles the `SmoothResult`.

Example:
    >>> import torch
    >>> from smoothgrad.config import SmoothConfig
    >>> from smoothgrad.estimator import Call, Kept
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    >>> monte_carlo(Call(model, torch.randn(2, 4), SmoothConfig(samples=20, seed=0))).samples
    20
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.config import SmoothConfig
from smoothgrad.estimator import Call, Kept
from smoothgrad.guard import explaining, gradients_on
from smoothgrad.inputs import Inputs, bind, repeat_rows
from smoothgrad.methods.base import MeasuredWarning
from smoothgrad.methods.registry import attributed, bounded, resolve_method, rows_per_input
from smoothgrad.noise import standard_normal
from smoothgrad.outputs import pick
from smoothgrad.precision import Precision
from smoothgrad.result import SmoothResult, relative_error, target_probability
from smoothgrad.stats import SampleStats
from smoothgrad.tuning import Passes

__all__ = ["AUTO_STEP", "monte_carlo"]

AUTO_STEP = 10
"""With `samples="auto"`, convergence is checked after every AUTO_STEP samples."""


def monte_carlo(call: Call) -> SmoothResult[Any]:
    """SmoothGrad of the call by Monte Carlo: the aggregates of M(x + ε_k) over k.

    The model is explained in eval mode with frozen parameters and is restored afterwards;
    autograd is on for the passes whatever the caller's grad mode (which is restored).
    Warnings from the passes are given once per call, at the caller's line.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with (explaining(call.model), gradients_on(),
              warnings.catch_warnings(record=True) as caught):
            warnings.simplefilter("always")
            run = _Run(call.model, call.x, call.options, call.target, call.inputs,
                       call.per_call, call.kept)
            _loop(run, call.progress, call.callback)
            result = run.result(final=True)
    finally:
        _report(caught)
    return result


def _loop(run: _Run, progress: Callable[[int], None] | None,
          callback: Callable[[SmoothResult], None] | None) -> None:
    """Passes until `run` has its samples (or has converged with samples="auto")."""
    auto = run.options.samples == "auto"
    if progress is not None and run.done:
        progress(run.done)  # samples the fast path's precision check already made
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
    """Give each distinct warning of the call once, pointing at the caller of `smooth`
    (`smooth` -> `engine.estimate` -> `monte_carlo` -> here)."""
    seen: set[tuple[type[Warning], str]] = set()
    for message in _largest_measured(caught):
        key = (message.category, str(message.message))
        if key not in seen:
            seen.add(key)
            warnings.warn(message.message, stacklevel=5)  # the instance: its category


def _largest_measured(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    """`caught` with each `MeasuredWarning` key (one per pass) kept once: its largest value."""
    largest: dict[str, MeasuredWarning] = {}
    for message in caught:
        measured = message.message
        if isinstance(measured, MeasuredWarning):
            kept = largest.get(measured.key)
            if kept is None or measured.value > kept.value:
                largest[measured.key] = measured
    return [message for message in caught if not isinstance(message.message, MeasuredWarning)
            or largest[message.message.key] is message.message]


class _Run:
    """One call's state: the clean target, σ, the pass policy and the running statistics.

    What is noised and explained comes from `smoothgrad.inputs`: x itself for one floating
    tensor, else the floating inputs side by side, or a layer's output.
    """

    def __init__(self, model: nn.Module, x: Any, options: SmoothConfig,
                 target: targets.Requested, extras: Inputs, per_call: Mapping[str, Any],
                 kept: Kept | None = None) -> None:
        self.options, self.copies = options, None if kept is None else kept.copies
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
        self.target = targets.resolve(target, clean, targets.labels_of(model))
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
        self.explain = resolve_method(options.method)
        self.passes = Passes(model, self.x, method=options.method,
                             batch_size=options.batch_size, fast=options.fast,
                             limit=self.limit, stops_early=options.samples == "auto",
                             unit=rows_per_input(options.method),
                             kept=None if kept is None else kept.tuners)
        self.stats = [SampleStats(self.x[part].shape, options.aggregates,
                                  antithetic=options.antithetic, device=self.x.device)
                      for part in self.passes.parts]
        self.flips = torch.zeros(self.x.shape[0], device=self.x.device)
        self.notes: dict[str, Any] = {}
        self.done = 0
        self.precision: Precision | None = None
        if options.fast:
            self.precision = self._go_fast(model)

    def _go_fast(self, model: nn.Module) -> Precision:
        """Explain optimised copies of the model (`smoothgrad.fast`): float32, or a reduced
        precision where the device has one and `smoothgrad.precision`'s check on the call's
        first noisy copies accepts it (those copies then count as the call's first samples)."""
        from smoothgrad import fast, precision

        auto = self.options.samples == "auto"
        check = precision.check_samples(min(self.limit, 100) if auto else self.limit,
                                        antithetic=self.options.antithetic)
        dtype, why = precision.candidate(self.x.device, self.limit, check)
        copies = fast.fast_subjects(model, self.subject, self.target, dtype, kept=self.copies)
        self.subject, self.runner = copies.full, copies.full.model
        if dtype is None or copies.reduced is None:
            return copies.refused or precision.Precision("float32", why)
        kept: dict[torch.dtype | None, list[Tensor]] = {}
        first = min(max(check, self.passes.copies()), AUTO_STEP if auto else self.limit)

        def attribute(reduced: torch.dtype | None) -> Tensor:
            """The check's maps; in the reduced precision, from a whole first pass (small
            passes cost up to 2× per row: weights are read once per pass)."""
            chosen = copies.full if reduced is None else copies.reduced
            assert chosen is not None
            self.subject, self.runner = chosen, chosen.model
            self.flips.zero_()
            self.notes.clear()
            self.done = 0
            kept[reduced] = self._sampled(check if reduced is None else first)
            return torch.cat(kept[reduced], dim=1)[:check]

        decision = precision.decide(attribute, self.x.device, samples=self.limit,
                                    paired=self.options.antithetic, candidate=(dtype, why),
                                    tol=self.options.tol if auto else None)
        if decision.reduced:
            for stats, maps in zip(self.stats, kept[dtype], strict=True):
                stats.update(maps)
        else:
            fast.remember(model, dtype, decision, self.copies)
            self.subject, self.runner = copies.full, copies.full.model
            self.flips.zero_()
            self.notes.clear()
            self.done = 0
        return decision

    def _sampled(self, count: int) -> list[Tensor]:
        """The maps of the first `count` noisy copies, (count, len(part), ...) per part, kept
        apart from the running statistics."""
        stats, self.stats = self.stats, [_Kept() for _ in self.passes.parts]  # type: ignore[misc]
        try:
            while self.done < count:
                self.add(min(self.passes.copies(), count - self.done))
            return [torch.cat(kept.maps) for kept in self.stats]  # type: ignore[attr-defined]
        finally:
            self.stats = stats

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
        batch = torch.addcmul(x.unsqueeze(0), scale.unsqueeze(0), noise).reshape(-1, *shape)
        target = self.target if callable(self.target) else self.target[part].repeat(count)
        runner = self.runner if self.subject.direct else self.subject.runner(part)
        rows = self.passes.rows if self.subject.direct else max(
            x.shape[0], self.passes.rows // x.shape[0] * x.shape[0])  # whole groups of copies
        explain = bind(bounded(self.explain, self.options.method, rows), self.per_call,
                       self.subject.n, part, count)
        with self.passes.measuring(batch.shape[0]):
            returned = attributed(explain(runner, batch, target), batch.shape[0])
        attribution, output = returned
        self._note(returned.notes, part, count)
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

    def _note(self, notes: Mapping[str, Any], part: slice, count: int) -> None:
        """Keep a pass's notes: per-row values as each example's largest over its copies
        (DeepLIFT's gap), names as the union over the passes."""
        for key, value in notes.items():
            if isinstance(value, Tensor):
                largest = value.detach().reshape(count, -1).amax(dim=0).to(self.flips)
                kept = self.notes.setdefault(key, torch.zeros_like(self.flips))
                kept[part] = torch.maximum(kept[part], largest)
            else:
                self.notes[key] = tuple(sorted({*self.notes.get(key, ()), *value}))

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
            maps=maps, diagnostics=dict(self.notes), precision=self.precision)


class _Kept:
    """Stands in for a part's `SampleStats` while the fast path checks a precision: keeps
    each pass's maps."""

    def __init__(self) -> None:
        self.maps: list[Tensor] = []

    def update(self, maps: Tensor) -> None:
        self.maps.append(maps)


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
