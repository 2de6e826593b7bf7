"""Mean-field SmoothGrad: noisy forward passes only, then one backward with expected gates.

For a network whose nonlinearities are elementwise (ReLU, ReLU6, LeakyReLU, ...), the
gradient at x + ε is the chain of linear maps with each activation's local derivative taken
at the noisy pre-activation. SmoothGrad averages that chain over ε. The mean-field estimate
replaces every local derivative by its expectation and backpropagates once:

1. K noisy forward passes without autograd keep, for every activation unit, running sums
   of its pre-activation (memory independent of K);
2. each unit's expected gate: under a Gaussian fit N(μ, s²) of its pre-activation (ReLU:
   Φ(μ/s); ReLU6: Φ((6 − μ)/s) − Φ(−μ/s); LeakyReLU(a): a + (1 − a)Φ(μ/s); GELU exactly,
   SiLU and softplus through the probit approximation σ(t) ≈ Φ(t/1.702)), or the empirical
   mean of the local derivative over the K copies (`gates="empirical"`);
3. one backward pass through the clean forward graph with those gates.

It is biased: gates of successive layers are correlated and the product of expectations is
not the expectation of the product. EVALUATION.md measures the bias and the compute saved;
`validate=M` measures it on your model against M ordinary Monte-Carlo samples.

It is an estimator (`smoothgrad.estimator`): `smooth(..., estimator="mean_field")` runs
it, with its options in `config.MeanField` (gates, groups, validate) and its facts in
`SmoothResult.mean_field`.

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 3)).eval()
    >>> result = sg.smooth(model, torch.randn(2, 4), estimator="mean_field", samples=64)
    >>> result.attribution.shape, result.samples, result.mean_field.sites
    (torch.Size([2, 4]), 64, 1)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.config import SmoothConfig
from smoothgrad.estimator import Call, check_input
from smoothgrad.gates import GateMode, module_names
from smoothgrad.guard import explaining
from smoothgrad.inputs import INPUT_FIELDS
from smoothgrad.montecarlo import monte_carlo
from smoothgrad.noise import noise_scale, standard_normal
from smoothgrad.result import MeanFieldFacts, SmoothResult, Validation, target_probability

__all__ = ["mean_field"]


def mean_field(call: Call) -> SmoothResult[Any]:
    """Mean-field SmoothGrad of the call's method ("gradient" or "input_x_gradient").

    noise, stdev, target and seed mean what they mean for Monte Carlo: sample k's noise is
    its sample k. `samples` noisy forward passes (K) run in chunks of `batch_size` copies
    (16 with "auto"), without autograd; then one clean forward and 1 + `groups` backward
    passes (the map and its jackknife). input_x_gradient is x times the mean-field
    gradient (Monte-Carlo SmoothGrad of it averages (x + ε)·∇f(x + ε), which differs by
    E[ε·∇f(x + ε)]). `validate=M` also runs Monte Carlo with M samples (seed + 2**32) and
    reports the distance between the two (`Validation`). progress: called after each noisy
    pass with the number of samples it added.

    Max pooling, softmax, layer/group normalisation and attention keep their clean-input
    gradient, with a warning naming them; activations without a rule (ELU, tanh, sigmoid,
    ...) are refused with an error naming the layer. Products of two activations (gating)
    are not detected: check such models with `validate`.
    """
    x, options = call.x, call.options
    if call.callback is not None or any(getattr(call.inputs, name) is not None
                                        for name in INPUT_FIELDS):
        raise ValueError("estimator='mean_field' explains one floating tensor, without "
                         "callback, forward_kwargs, layer, noise_mask or output")
    check_input(x)
    settings = options.mean_field
    x = x.detach()
    samples, groups = int(options.samples), settings.groups
    with explaining(call.model):
        mode, clean_output, resolved = _survey(call.model, x, groups,
                                               settings.gates == "empirical", call.target)
        sigma = noise_scale(x, _noise(options), _stdev(options))
        batch_size = 16 if options.batch_size == "auto" else int(options.batch_size)
        flips = _collect(call.model, mode, x, sigma, resolved, samples, batch_size,
                         options.seed, call.progress)
        grads = _backward(call.model, mode, x, resolved, samples)
    attribution, stderr = grads[0], _jackknife(grads[1:])
    if samples < groups:
        stderr = torch.full_like(stderr, math.inf)
    if options.method == "input_x_gradient":
        attribution, stderr = x * attribution, x.abs() * stderr
    validation = None
    if settings.validate:
        validation = _validate(call, options, resolved, attribution, stderr)
    target = None if callable(resolved) else resolved
    return SmoothResult(
        attribution=attribution.to(x.dtype), stderr=stderr.to(x.dtype), samples=samples,
        target=target, sigma=sigma, flip_rate=None if flips is None else flips / samples,
        aggregate="mean", inputs=call.x, method=options.method_name,
        probability=target_probability(clean_output, target),
        mean_field=MeanFieldFacts(settings.gates, len(mode.sites), validation))


def _noise(options: SmoothConfig) -> float | None:
    return None if options.stdev is not None else options.noise


def _stdev(options: SmoothConfig) -> float | None:
    return options.stdev if isinstance(options.stdev, float) else None


def _survey(model: nn.Module, x: Tensor, groups: int, empirical: bool,
            target: targets.Requested) -> tuple[GateMode, Tensor, targets.Resolved]:
    """The clean pass: every activation site recorded, the target resolved; warnings for
    what keeps its clean gradient, or when nothing is gated."""
    mode = GateMode(x.shape[0], groups, empirical, [])
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad(), module_names(model) as names:
        mode.names = names
        with mode:
            clean_output = model(leaf).detach()  # its graph is freed here
    resolved = targets.resolve(target, clean_output)
    if mode.clean_kept:
        warnings.warn("mean_field keeps the clean-input gradient (no expectation) of: "
                      + ", ".join(sorted(mode.clean_kept))
                      + "; check the estimate with validate=M", stacklevel=5)
    if not mode.sites:
        warnings.warn("mean_field found no activation to gate: the result is the plain "
                      "gradient", stacklevel=5)
    return mode, clean_output, resolved


def _validate(call: Call, options: SmoothConfig, target: targets.Resolved, estimate: Tensor,
              stderr: Tensor) -> Validation:
    """Monte Carlo with `validate` samples (seed + 2**32) against the mean-field estimate."""
    samples = options.mean_field.validate
    checking = SmoothConfig(method=options.method, samples=samples, noise=_noise(options),
                            stdev=_stdev(options), seed=options.seed + 2**32,
                            batch_size=options.batch_size)
    mc = monte_carlo(Call(call.model, call.x.detach(), checking, target))
    return _validation(samples, estimate, stderr, mc.attribution, mc.stderr)


def _collect(model: nn.Module, mode: GateMode, x: Tensor, sigma: Tensor, target: targets.Resolved,
             samples: int, batch_size: int, seed: int,
             progress: Callable[[int], None] | None) -> Tensor | None:
    """Run the noisy forward passes, adding to every site's sums; return flips per example."""
    n, shape = x.shape[0], x.shape[1:]
    scale = sigma.view(1, -1, *([1] * len(shape)))
    flips = None if callable(target) else torch.zeros(n, device=x.device)
    step = max(1, batch_size // n)
    step = step // mode.groups * mode.groups or step  # whole groups per pass where possible
    mode.phase = "collect"
    for start in range(0, samples, step):
        indices = range(start, min(start + step, samples))
        noise = standard_normal(seed, indices, shape, device=x.device, dtype=x.dtype)
        batch = (x.unsqueeze(0) + scale * noise.unsqueeze(1)).reshape(-1, *shape)
        mode.indices = indices
        mode.call = 0
        with torch.no_grad(), mode:
            output = model(batch)
        if mode.call != len(mode.calls):
            raise RuntimeError("mean_field: the model ran different activations on the noisy "
                               "copies than on the clean input (data-dependent control flow?)")
        if flips is not None and isinstance(target, Tensor):
            wrong = output.argmax(dim=1).view(len(indices), n) != target.view(1, n)
            flips += wrong.sum(dim=0).to(flips.device)
        if progress is not None:
            progress(len(indices))
    return flips


def _gates(mode: GateMode, drop: int | None, samples: int) -> None:
    """Set every site's gate from its sums, leaving out group `drop` (the jackknife)."""
    for site in mode.sites:
        if site.sums is None:
            raise RuntimeError("mean_field: an activation saw no noisy copy")
        keep = [g for g in range(mode.groups) if g != drop]
        count = sum(len(range(g, samples, mode.groups)) for g in keep)
        total = site.sums[:, keep].sum(dim=1) / max(count, 1)
        if mode.empirical:
            site.gate = total[0]
            continue
        mean, mean_square = total[0], total[1]
        # float32 E[z²] − E[z]² loses precision only where |μ| ≫ s, where the gate is 0 or 1
        variance = (mean_square - mean.square()) * (count / (count - 1)) if count > 1 \
            else torch.zeros_like(mean)
        site.gate = site.rule.expected(mean, variance.clamp(min=0).sqrt())


def _backward(model: nn.Module, mode: GateMode, x: Tensor, target: targets.Resolved,
              samples: int) -> list[Tensor]:
    """The gated gradient for all groups, then leaving out each group in turn."""
    leaf = x.clone().requires_grad_(True)
    mode.phase, mode.call = "gate", 0
    with torch.enable_grad():
        with mode:
            total = targets.score(model(leaf), target).sum()
        grads = []
        for drop in (None, *range(mode.groups)):
            _gates(mode, drop, samples)
            (grad,) = torch.autograd.grad(total, leaf, retain_graph=drop != mode.groups - 1)
            grads.append(grad.detach())
    for site in mode.sites:
        site.gate = site.sums = None
    return grads


def _jackknife(estimates: list[Tensor]) -> Tensor:
    """Standard error of the full estimate from its leave-one-group-out estimates."""
    g = len(estimates)
    stacked = torch.stack(estimates).double()
    spread = (stacked - stacked.mean(dim=0)).square().sum(dim=0) * ((g - 1) / g)
    return spread.sqrt().float()


def _validation(samples: int, estimate: Tensor, stderr: Tensor, mc: Tensor,
                mc_stderr: Tensor) -> Validation:
    """Distance between the estimates, per example, with its standard error."""
    diff = (estimate - mc).flatten(1).double()
    noise_var = (stderr.square() + mc_stderr.square()).flatten(1).double()
    norm = mc.flatten(1).double().norm(dim=1).clamp(min=torch.finfo(torch.float64).tiny)
    squared = diff.square().sum(dim=1)
    bias_sq = (diff.square() - noise_var).clamp(min=0)
    squared_se = (4 * bias_sq * noise_var + 2 * noise_var.square()).sum(dim=1).sqrt()
    distance = squared.sqrt() / norm
    floor = noise_var.sum(dim=1).sqrt() / norm
    return Validation(
        samples=samples, distance=distance.float(),
        distance_stderr=(squared_se / (2 * squared.sqrt().clamp(min=1e-300)) / norm).float(),
        noise_floor=floor.float(),
        bias=(distance.square() - floor.square()).clamp(min=0).sqrt().float(),
        monte_carlo=mc)
