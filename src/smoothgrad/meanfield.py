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

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 3)).eval()
    >>> result = mean_field(model, torch.randn(2, 4), samples=64, seed=0)
    >>> result.attribution.shape, result.samples
    (torch.Size([2, 4]), 64)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.gates import GATED, GateMode, module_names
from smoothgrad.guard import explaining
from smoothgrad.noise import noise_scale, standard_normal
from smoothgrad.result import SmoothResult, relative_error, target_probability

if TYPE_CHECKING:
    from smoothgrad.config import SmoothConfig

__all__ = ["GATED", "MeanFieldResult", "Validation", "check_options", "mean_field",
           "smooth_mean_field"]

@dataclass(frozen=True)
class Validation:
    """Mean-field against `samples` Monte-Carlo samples (`smooth`), per example (N,).

    distance: ‖mean-field − Monte Carlo‖ / ‖Monte Carlo‖; distance_stderr: its standard
    error; noise_floor: the distance expected from the two estimates' own sampling errors
    alone; bias: √(distance² − noise_floor²) (0 where negative), the approximation's error.
    """

    samples: int
    distance: Tensor
    distance_stderr: Tensor
    noise_floor: Tensor
    bias: Tensor
    monte_carlo: Tensor


@dataclass(frozen=True)
class MeanFieldResult:
    """What `mean_field` returns; tensors shaped like x unless noted.

    attribution: the mean-field map. stderr: its per-element standard error from the
    jackknife over `groups` groups of the noisy copies (sampling error only, not the
    mean-field bias). samples: noisy forward copies per example. target, sigma, flip_rate,
    probability: as in `smooth`. sites: activation calls gated. validation: see
    `Validation`, or None.
    """

    attribution: Tensor
    stderr: Tensor
    samples: int
    target: Tensor | None
    sigma: Tensor
    flip_rate: Tensor | None
    gates: str
    sites: int
    validation: Validation | None
    probability: Tensor | None = None

    def relative_error(self) -> Tensor:
        """‖stderr‖ / ‖map‖ per example (sampling error only; see `validation` for bias)."""
        return relative_error(self.stderr, self.attribution)


def mean_field(
    model: nn.Module,
    x: Tensor,
    *,
    method: str = "gradient",
    target: int | Tensor | Any | None = None,
    samples: int = 64,
    noise: float | None = None,
    stdev: float | None = None,
    gates: Literal["gaussian", "empirical"] = "gaussian",
    batch_size: int = 16,
    seed: int = 0,
    groups: int = 4,
    validate: int = 0,
    progress: Callable[[int], None] | None = None,
) -> MeanFieldResult:
    """Mean-field SmoothGrad of `method` ("gradient" or "input_x_gradient") for the batch x.

    noise, stdev, target and seed mean what they mean in `smooth`: sample k's noise is
    `smooth`'s sample k. `samples` noisy forward passes (K) are run in chunks of
    `batch_size` copies, without autograd; then one clean forward and 1 + `groups`
    backward passes (the map and its jackknife). input_x_gradient is x times the mean-field
    gradient (Monte-Carlo SmoothGrad of it averages (x + ε)·∇f(x + ε), which differs by
    E[ε·∇f(x + ε)]). `validate=M` also runs `smooth` with M samples (seed + 2**32) and
    reports the distance between the two (`Validation`). progress: called after each noisy
    pass with the number of samples it added.

    Max pooling, softmax, layer/group normalisation and attention keep their clean-input
    gradient, with a warning naming them; activations without a rule (ELU, tanh, sigmoid,
    ...) are refused with an error naming the layer. Products of two activations (gating)
    are not detected: check such models with `validate`.
    """
    from smoothgrad.engine import smooth

    _check_arguments(x, method, gates, noise, stdev, samples=samples, batch_size=batch_size,
                     groups=groups, validate=validate, seed=seed)
    x = x.detach()
    n = x.shape[0]
    with explaining(model):
        mode = GateMode(n, groups, gates == "empirical", [])
        leaf = x.clone().requires_grad_(True)
        with torch.enable_grad(), module_names(model) as names:
            mode.names = names
            with mode:
                clean_output = model(leaf).detach()  # its graph is freed here
        resolved = targets.resolve(target, clean_output)
        if mode.clean_kept:
            warnings.warn("mean_field keeps the clean-input gradient (no expectation) of: "
                          + ", ".join(sorted(mode.clean_kept))
                          + "; check the estimate with validate=M", stacklevel=2)
        if not mode.sites:
            warnings.warn("mean_field found no activation to gate: the result is the plain "
                          "gradient", stacklevel=2)
        sigma = noise_scale(x, noise, stdev)
        flips = _collect(model, mode, x, sigma, resolved, samples, batch_size, seed, progress)
        grads = _backward(model, mode, x, resolved, samples)
    attribution, stderr = grads[0], _jackknife(grads[1:])
    if samples < groups:
        stderr = torch.full_like(stderr, math.inf)
    if method == "input_x_gradient":
        attribution, stderr = x * attribution, x.abs() * stderr
    validation = None
    if validate:
        mc = smooth(model, x, method=method, target=resolved, samples=validate, noise=noise,
                    stdev=stdev, seed=seed + 2**32)
        validation = _validation(validate, attribution, stderr, mc.attribution, mc.stderr)
    return MeanFieldResult(
        attribution=attribution.to(x.dtype), stderr=stderr.to(x.dtype), samples=samples,
        target=None if callable(resolved) else resolved, sigma=sigma,
        flip_rate=None if flips is None else flips / samples, gates=gates,
        sites=len(mode.sites), validation=validation,
        probability=target_probability(clean_output, None if callable(resolved) else resolved))


def _check_arguments(x: object, method: str, gates: str, noise: object, stdev: object,
                     **counts: object) -> None:
    from smoothgrad.engine import _check_input

    _check_input(x)
    if method not in ("gradient", "input_x_gradient"):
        raise ValueError(f"mean_field supports method 'gradient' or 'input_x_gradient', "
                         f"got {method!r}")
    if gates not in ("gaussian", "empirical"):
        raise ValueError(f"gates must be 'gaussian' or 'empirical', got {gates!r}")
    least = {"samples": 1, "batch_size": 1, "groups": 2}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least.get(name, 0):
            raise ValueError(f"{name} must be an int >= {least.get(name, 0)}, got {value!r}")
    if noise is not None and stdev is not None:
        raise ValueError("give either noise (relative) or stdev (absolute), not both")
    for name, level in (("noise", noise), ("stdev", stdev)):
        if level is not None and not (isinstance(level, int | float) and 0 <= level < math.inf):
            raise ValueError(f"{name} must be a finite number >= 0, got {level!r}")


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


def check_options(options: SmoothConfig) -> None:
    """Refuse `smooth` options that the mean-field estimator does not implement."""
    if options.estimator != "mean_field":
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


def smooth_mean_field(model: nn.Module, x: object, options: SmoothConfig, target: Any,
                      progress: Callable[[int], None] | None = None) -> SmoothResult:
    """`smooth(..., estimator="mean_field")`: `mean_field` with the call's options."""
    if not isinstance(x, Tensor):
        raise TypeError(f"estimator='mean_field' explains one tensor x, not {type(x).__name__}")
    result = mean_field(
        model, x, method=str(options.method), target=target, samples=int(options.samples),
        noise=None if options.stdev is not None else options.noise,
        stdev=options.stdev if isinstance(options.stdev, float) else None,
        batch_size=16 if options.batch_size == "auto" else int(options.batch_size),
        seed=options.seed, progress=progress)
    return SmoothResult(
        attribution=result.attribution, stderr=result.stderr, samples=result.samples,
        target=result.target, sigma=result.sigma, flip_rate=result.flip_rate, aggregate="mean",
        inputs=x, method=options.method_name, probability=result.probability)
