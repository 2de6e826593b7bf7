"""Quantitative checks for saliency maps: convergence, faithfulness, robustness, sanity, noise.

Every function is batch-first: inputs are ``(N, ...)`` tensors and per-example scores come back
as tensors of shape ``(N,)``. Randomness comes from explicit seeds or ``torch.Generator``
objects, never from the global RNG, and the caller's model is never modified (the
randomisation check works on a deep copy). Models are evaluated under ``torch.no_grad()``
wherever no gradient is needed; they are used in whatever train/eval mode the caller left them.

An *explainer* is any callable ``explain(model, x, target) -> Tensor`` shaped like ``x``, with
``target`` a ``LongTensor`` of shape ``(N,)``: a base method such as ``smoothgrad.methods.gradient``
or a wrapped ``smoothgrad.smooth``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgrad import targets

__all__ = [
    "ConvergenceRow",
    "Curve",
    "Explainer",
    "RandomizationRow",
    "convergence",
    "deletion_auc",
    "deletion_curve",
    "gini",
    "infidelity",
    "insertion_auc",
    "insertion_curve",
    "randomization_check",
    "relative_l2",
    "sensitivity_floor",
    "sensitivity_max",
    "spearman",
    "ssim",
    "total_variation",
]

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain(model, x, target) -> Tensor`` shaped like ``x``; ``target`` is ``(N,)`` long."""

Reduce = Literal["sum", "abs"]
Target = Tensor | int | None


# --------------------------------------------------------------------------- building blocks


def relative_l2(a: Tensor, reference: Tensor) -> Tensor:
    """Relative L2 error ``||a - reference|| / ||reference||`` per example.

    All dimensions but the first are flattened. A zero reference gives ``inf`` (or ``nan``).

    Example:
        >>> a = torch.ones(2, 3, 4, 4)
        >>> relative_l2(a, a)
        tensor([0., 0.])
    """
    n = a.shape[0]
    error: Tensor = torch.linalg.vector_norm((a - reference).reshape(n, -1), dim=1)
    size: Tensor = torch.linalg.vector_norm(reference.reshape(n, -1), dim=1)
    return error / size


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per example, flattening all dimensions but the first.

    Ties get their average rank (as ``scipy.stats.spearmanr``); a constant map gives ``nan``.
    Computed in float64, returned in ``a``'s floating dtype (float32 for integer input).

    Example:
        >>> a = torch.arange(12.0).reshape(2, 6)
        >>> spearman(a, -a)
        tensor([-1., -1.])
    """
    ra = _ranks(a.reshape(a.shape[0], -1))
    rb = _ranks(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    rho = (ra * rb).sum(dim=1) / (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    return rho.to(_float_dtype(a))


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of 2-D maps ``(N, H, W)``, per example.

    Gaussian window (``sigma`` 1.5, radius ``int(3.5 sigma + 0.5)``, i.e. 11x11), population
    covariances, ``K1 = 0.01``, ``K2 = 0.03``, averaged over the positions where the window fits
    inside the map. This is ``skimage.metrics.structural_similarity(a, b, data_range=...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. Needs ``H, W >= 11``.

    Example:
        >>> m = torch.rand(2, 16, 16)
        >>> ssim(m, m)
        tensor([1., 1.])
    """
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"ssim needs two (N, H, W) maps of one shape, got {a.shape}, {b.shape}")
    radius = int(3.5 * sigma + 0.5)
    if min(a.shape[1:]) < 2 * radius + 1:
        raise ValueError(f"ssim needs maps of at least {2 * radius + 1} pixels per side")
    kernel = _gaussian_kernel(sigma, radius, a.device)

    def local_mean(t: Tensor) -> Tensor:  # 'valid' separable Gaussian filter
        t = F.conv2d(t.unsqueeze(1), kernel.view(1, 1, -1, 1))
        return F.conv2d(t, kernel.view(1, 1, 1, -1)).squeeze(1)

    x, y = a.double(), b.double()
    mx, my = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - mx * mx
    vy = local_mean(y * y) - my * my
    cxy = local_mean(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2)).to(_float_dtype(a))


# --------------------------------------------------------------------------- 1. convergence


@dataclass(frozen=True)
class ConvergenceRow:
    """How close ``samples``-sample SmoothGrad maps are to a high-n reference.

    Each field is a tensor of shape ``(N,)``: ``relative_l2`` and ``spearman`` compare each
    seed's map with the reference (averaged over seeds); ``seed_agreement`` is the Spearman
    correlation between maps from different seeds (averaged over seed pairs).
    """

    samples: int
    relative_l2: Tensor
    spearman: Tensor
    seed_agreement: Tensor


def convergence(
    model: nn.Module,
    x: Tensor,
    *,
    method: str | Callable[..., Tensor],
    samples: Sequence[int] = (2, 5, 20, 50, 100),
    reference_samples: int = 1000,
    seeds: Sequence[int] = (0, 1, 2),
    reference_seed: int | None = None,
    **smooth_kwargs: Any,
) -> list[ConvergenceRow]:
    """Convergence of ``smoothgrad.smooth`` in the number of samples, one row per ``samples``.

    The reference is a ``reference_samples``-sample map drawn with ``reference_seed`` (default
    ``max(seeds) + 1``), which must differ from ``seeds`` so that no noise is shared with the
    maps under test. The target is resolved once by the reference call (``target=`` in
    ``smooth_kwargs`` is honoured) and reused for every map. Other ``smooth_kwargs`` (``noise``,
    ``aggregate``, ``batch_size`` ...) go to every call.

    Example:
        >>> from torch.nn import Linear, ReLU, Sequential
        >>> model = Sequential(Linear(4, 16), ReLU(), Linear(16, 3)).eval()
        >>> x = torch.rand(2, 4)
        >>> rows = convergence(model, x, method="gradient", samples=(2, 50))
        >>> [(row.samples, row.relative_l2.shape) for row in rows]  # error falls ~ 1/sqrt(n)
        [(2, torch.Size([2])), (50, torch.Size([2]))]
    """
    from smoothgrad import smooth

    if "seed" in smooth_kwargs:
        raise TypeError("convergence takes seeds=... and reference_seed=..., not seed=...")
    if len(set(seeds)) < 2:
        raise ValueError("seed agreement needs at least two distinct seeds")
    if reference_seed is None:
        reference_seed = max(seeds) + 1
    if reference_seed in seeds:
        raise ValueError("reference_seed must differ from seeds (shared noise biases the error)")
    kwargs = dict(smooth_kwargs)
    target = kwargs.pop("target", None)
    reference = smooth(
        model,
        x,
        method=method,
        samples=reference_samples,
        seed=reference_seed,
        target=target,
        **kwargs,
    )
    ref = reference.attribution.detach()
    rows = []
    for n in samples:
        maps = [
            smooth(
                model, x, method=method, samples=n, seed=s, target=reference.target, **kwargs
            ).attribution.detach()
            for s in seeds
        ]
        pairs = itertools.combinations(maps, 2)
        rows.append(
            ConvergenceRow(
                samples=n,
                relative_l2=torch.stack([relative_l2(m, ref) for m in maps]).mean(dim=0),
                spearman=torch.stack([spearman(m, ref) for m in maps]).mean(dim=0),
                seed_agreement=torch.stack([spearman(p, q) for p, q in pairs]).mean(dim=0),
            )
        )
    return rows


# ------------------------------------------------------------------------ 2. deletion / insertion


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve (RISE, Petsiuk et al. 2018).

    ``fractions`` ``(steps + 1,)``: share of pixels deleted/inserted, from 0 to 1.
    ``scores`` ``(N, steps + 1)``: softmax probability of the target class at each fraction.
    ``auc`` ``(N,)``: trapezoid area under ``scores`` over ``fractions`` (in [0, 1]).
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor


def deletion_curve(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target = None,
    *,
    steps: int = 100,
    reduce: Reduce = "sum",
    batch_size: int = 64,
) -> Curve:
    """Deletion curve: delete pixels, most important first, and track the class probability.

    ``x`` is ``(N, C, H, W)``; ``attribution`` is shaped like ``x`` (reduced over channels by
    ``reduce``: ``"sum"`` ranks by the signed channel sum, ``"abs"`` by the sum of absolute
    values, the choice for sign-agnostic maps such as plain gradients) or is already a 2-D map
    ``(N, H, W)``. A deleted pixel takes the image's mean colour (per channel), so after all
    steps the image is flat. At step ``k`` the top ``round(k H W / steps)`` pixels are deleted.
    The score is the softmax probability of ``target`` (default: the clean prediction). Lower
    AUC is better. Forward passes run under ``torch.no_grad()``, ``batch_size`` images at a time.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
        >>> x = torch.rand(2, 3, 4, 4)
        >>> curve = deletion_curve(model, x, torch.rand(2, 3, 4, 4), steps=8)
        >>> curve.scores.shape, curve.auc.shape
        (torch.Size([2, 9]), torch.Size([2]))
    """
    target_t = _resolve_target(model, x, target)
    fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return _perturbation_curve(
        model, x, fill, _to_map(attribution, reduce), target_t, steps, batch_size
    )


def insertion_curve(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target = None,
    *,
    steps: int = 100,
    reduce: Reduce = "sum",
    batch_size: int = 64,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> Curve:
    """Insertion curve: start from a blurred image, insert original pixels most important first.

    The blur is Gaussian with RISE's kernel size 11 and sigma 5, with reflect padding (RISE pads
    with zeros, which darkens the border). Everything else as in :func:`deletion_curve`; higher
    AUC is better.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3))
        >>> x = torch.rand(2, 3, 16, 16)
        >>> insertion_curve(model, x, torch.rand(2, 16, 16), steps=8).auc.shape
        torch.Size([2])
    """
    target_t = _resolve_target(model, x, target)
    start = _blur(x, blur_kernel, blur_sigma)
    return _perturbation_curve(
        model, start, x, _to_map(attribution, reduce), target_t, steps, batch_size
    )


def deletion_auc(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target = None,
    *,
    steps: int = 100,
    reduce: Reduce = "sum",
    batch_size: int = 64,
) -> Tensor:
    """Deletion AUC per example, ``(N,)``; see :func:`deletion_curve`. Lower is better.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
        >>> x = torch.rand(2, 3, 4, 4)
        >>> deletion_auc(model, x, torch.randn(2, 3, 4, 4), reduce="abs").shape
        torch.Size([2])
    """
    return deletion_curve(
        model, x, attribution, target, steps=steps, reduce=reduce, batch_size=batch_size
    ).auc


def insertion_auc(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target = None,
    *,
    steps: int = 100,
    reduce: Reduce = "sum",
    batch_size: int = 64,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> Tensor:
    """Insertion AUC per example, ``(N,)``; see :func:`insertion_curve`. Higher is better.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3))
        >>> x = torch.rand(2, 3, 16, 16)
        >>> insertion_auc(model, x, torch.randn(2, 3, 16, 16), reduce="abs").shape
        torch.Size([2])
    """
    return insertion_curve(
        model,
        x,
        attribution,
        target,
        steps=steps,
        reduce=reduce,
        batch_size=batch_size,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
    ).auc


# --------------------------------------------------------------------------- 3. infidelity


def infidelity(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target = None,
    *,
    n_perturb: int = 50,
    noise_std: float = 0.1,
    perturbations: Tensor | None = None,
    generator: torch.Generator | int = 0,
    normalize: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Explanation infidelity (Yeh et al. 2019) with Gaussian perturbations, per example ``(N,)``.

    ``mean_k (beta * I_k . attribution - (f(x) - f(x - I_k)))^2`` with ``f`` the model's output
    (logit) for ``target`` (default: the clean prediction), ``I_k ~ N(0, noise_std^2)`` i.i.d.
    per element (absolute std, in the units of ``x``), and with ``normalize`` the scale
    ``beta = sum_k (I_k . a)(f(x) - f(x - I_k)) / sum_k (I_k . a)^2`` that makes the score
    invariant to rescaling the attribution (``beta = 1`` without ``normalize``). This equals
    ``captum.metrics.infidelity(model, perturb_fn, x, attribution, target=target,
    normalize=normalize, n_perturb_samples=n_perturb)`` when ``perturb_fn`` returns the same
    ``I_k`` and ``x - I_k``. ``perturbations`` ``(N, n_perturb, *x.shape[1:])`` supplies the
    ``I_k`` (then ``n_perturb`` is its second size and ``noise_std``/``generator`` are unused);
    otherwise they are drawn from ``generator`` (a seed or a ``torch.Generator``). Lower is
    better. Forward passes run under ``torch.no_grad()``, ``batch_size`` perturbed inputs at a
    time (default: all).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 4)
        >>> exact = model.weight[model(x).argmax(dim=1)].detach()  # gradient of a linear model
        >>> infidelity(model, x, exact, n_perturb=10).abs().max() < 1e-9  # exact: zero
        tensor(True)
    """
    if attribution.shape != x.shape:
        raise ValueError(f"attribution {attribution.shape} must be shaped like x {x.shape}")
    if perturbations is None:
        perturbations = noise_std * _draw(
            "normal", (x.shape[0], n_perturb, *x.shape[1:]), generator, x
        )
    elif perturbations.shape[0] != x.shape[0] or perturbations.shape[2:] != x.shape[1:]:
        raise ValueError(f"perturbations must be (N, n_perturb, ...) for x {x.shape}")
    n, k = perturbations.shape[:2]
    target_t = _resolve_target(model, x, target)
    with torch.no_grad():
        clean = _target_outputs(model, x, target_t, batch_size, softmax=False)
        perturbed = (x.unsqueeze(1) - perturbations).flatten(0, 1)
        outputs = _target_outputs(
            model, perturbed, target_t.repeat_interleave(k), batch_size, softmax=False
        )
        drop = clean.unsqueeze(1) - outputs.view(n, k)
        dot = (attribution.unsqueeze(1) * perturbations).reshape(n, k, -1).sum(dim=2)
        if normalize:
            denom = dot.square().sum(dim=1)
            beta = (dot * drop).sum(dim=1) / torch.where(denom != 0, denom, 1.0)
            dot = beta.unsqueeze(1) * dot
        return (dot - drop).square().mean(dim=1)


# --------------------------------------------------------------------------- 4. sensitivity


def sensitivity_max(
    explain: Explainer,
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    *,
    radius: float = 0.02,
    n_perturb: int = 10,
    generator: torch.Generator | int = 0,
    perturbations: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019) of an explainer, per example ``(N,)``.

    ``max_k ||e(x + d_k) - e(x)||_F / ||e(x)||_F`` with ``d_k`` uniform in the L-inf ball of
    ``radius`` (a zero ``||e(x)||`` divides by 1). The target (default: the clean prediction)
    is the same for every perturbed input. This equals ``captum.metrics.sensitivity_max(fn, x,
    perturb_func=..., perturb_radius=radius, n_perturb_samples=n_perturb, norm_ord="fro",
    target=target)`` for the same ``d_k``. ``perturbations`` ``(N, n_perturb, *x.shape[1:])``
    supplies the ``d_k``; otherwise they come from ``generator`` (a seed or a
    ``torch.Generator``). ``explain`` gets ``batch_size`` perturbed inputs per call (default:
    all ``N * n_perturb``). A seeded stochastic explainer (SmoothGrad) reuses its noise for
    every input; compare with :func:`sensitivity_floor` for the part due to fresh noise.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> model = torch.nn.Linear(4, 3)
        >>> sensitivity_max(gradient, model, torch.rand(2, 4))  # a linear model's gradient is fixed
        tensor([0., 0.])
    """
    if perturbations is None:
        perturbations = radius * (
            2 * _draw("uniform", (x.shape[0], n_perturb, *x.shape[1:]), generator, x) - 1
        )
    elif perturbations.shape[0] != x.shape[0] or perturbations.shape[2:] != x.shape[1:]:
        raise ValueError(f"perturbations must be (N, n_perturb, ...) for x {x.shape}")
    n, k = perturbations.shape[:2]
    target_t = _resolve_target(model, x, target)
    reference = explain(model, x, target_t).detach().reshape(n, -1)
    norm = reference.norm(dim=1)
    norm = torch.where(norm != 0, norm, 1.0)
    inputs = (x.unsqueeze(1) + perturbations).flatten(0, 1)
    targets = target_t.repeat_interleave(k)
    expected = reference.repeat_interleave(k, dim=0)
    step = batch_size or n * k
    distances = []
    for i in range(0, n * k, step):
        maps = explain(model, inputs[i : i + step], targets[i : i + step]).detach()
        change = maps.reshape(-1, reference.shape[1]) - expected[i : i + step]
        distances.append(torch.linalg.vector_norm(change, dim=1))
    return (torch.cat(distances).view(n, k) / norm.unsqueeze(1)).amax(dim=1)


def sensitivity_floor(
    explain: Callable[[nn.Module, Tensor, Tensor, int], Tensor],
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    *,
    seeds: Sequence[int] = tuple(range(1, 11)),
    reference_seed: int = 0,
) -> Tensor:
    """Noise floor of a stochastic explainer: its max-sensitivity at zero perturbation.

    ``max_s ||e_s(x) - e_ref(x)||_F / ||e_ref(x)||_F`` over ``seeds``, where
    ``explain(model, x, target, seed)`` is the explainer run with that seed (e.g. SmoothGrad)
    and ``e_ref`` uses ``reference_seed``. Ten seeds match :func:`sensitivity_max`'s ten
    perturbations. It is what re-drawing the explainer's noise alone costs: a max-sensitivity
    near this floor is not resolvable from the explainer's own Monte-Carlo error.

    Example:
        >>> import smoothgrad as sg
        >>> def sg_seeded(model, x, target, seed):
        ...     return sg.smooth(model, x, target=target, samples=10, seed=seed).attribution
        >>> from torch.nn import Linear, ReLU, Sequential
        >>> model = Sequential(Linear(4, 8), ReLU(), Linear(8, 3)).eval()
        >>> sensitivity_floor(sg_seeded, model, torch.rand(2, 4)).shape
        torch.Size([2])
    """
    if reference_seed in seeds:
        raise ValueError("reference_seed must differ from seeds")
    target_t = _resolve_target(model, x, target)
    reference = explain(model, x, target_t, reference_seed).detach().reshape(x.shape[0], -1)
    norm = reference.norm(dim=1)
    norm = torch.where(norm != 0, norm, 1.0)
    distances = torch.stack(
        [
            (explain(model, x, target_t, s).detach().reshape_as(reference) - reference).norm(dim=1)
            for s in seeds
        ]
    )
    return (distances / norm).amax(dim=0)


# --------------------------------------------------------------------------- 5. randomisation


@dataclass(frozen=True)
class RandomizationRow:
    """Similarity of the original map to the map after randomising up to ``layer``.

    Fields ``(N,)``: Spearman of the absolute and of the signed channel-summed maps, and SSIM of
    the absolute maps scaled to [0, 1]. ``layer`` is ``"original"`` for the first row (the map
    recomputed on the untouched copy: 1 for a deterministic explainer) and ``"random map"`` for
    the last (the original map with its pixels shuffled: same values, no spatial information;
    the baseline a fully randomised explanation should fall to, Spearman about 0).
    """

    layer: str
    spearman_abs: Tensor
    spearman_signed: Tensor
    ssim: Tensor


def randomization_check(
    explain: Explainer,
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> list[RandomizationRow]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018), one row per step.

    On a deep copy of ``model``, layers are re-initialised with their ``reset_parameters()``
    cumulatively from the output down, and after each one the map for the same target (default:
    the clean prediction of the original model) is compared with the original map. ``layers``
    names the modules to reset in order (``named_modules`` names); by default every module with
    its own parameters and a ``reset_parameters`` method, in reverse registration order (this
    assumes registration follows the forward order; pass ``layers`` otherwise). Step ``j`` runs
    ``reset_parameters`` under a global RNG seeded with ``seed + j`` and forked, so the caller's
    global RNG state (CPU, and the CUDA devices holding the model) is unchanged. Maps
    ``(N, C, H, W)`` are summed over channels (``(N, H, W)`` taken as they are). A sane
    explainer's similarities fall towards the random-map row as more layers are randomised.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
        >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3))
        >>> [row.layer for row in randomization_check(gradient, model, torch.rand(2, 3, 16, 16))]
        ['original', '3', '0', 'random map']
    """
    target_t = _resolve_target(model, x, target)
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    if layers is None:
        owners = [name for name, m in modules.items() if list(m.parameters(recurse=False))]
        names = [name for name in reversed(owners) if hasattr(modules[name], "reset_parameters")]
        skipped = sorted(set(owners) - set(names))
        if skipped:
            warnings.warn(
                f"randomization_check cannot re-initialise {skipped} (no reset_parameters); "
                "their parameters stay trained",
                UserWarning,
                stacklevel=2,
            )
    else:
        names = list(layers)
        for name in names:
            if not hasattr(modules.get(name), "reset_parameters"):
                raise ValueError(f"{name!r} is not a submodule with reset_parameters()")

    cuda_devices = sorted({p.get_device() for p in randomized.parameters() if p.is_cuda})
    original = explain(randomized, x, target_t).detach()

    def compare(label: str, other: Tensor) -> RandomizationRow:
        a, b = _to_map(original, "abs"), _to_map(other, "abs")
        return RandomizationRow(
            layer=label,
            spearman_abs=spearman(a, b),
            spearman_signed=spearman(_to_map(original, "sum"), _to_map(other, "sum")),
            ssim=ssim(_unit_range(a), _unit_range(b)),
        )

    rows = [compare("original", explain(randomized, x, target_t).detach())]
    for j, name in enumerate(names):
        with _seeded_global_rng(seed + j, cuda_devices):
            modules[name].reset_parameters()
        rows.append(compare(name, explain(randomized, x, target_t).detach()))
    rows.append(compare("random map", _shuffle_pixels(original, seed)))
    return rows


# --------------------------------------------------------------------------- 6. noise proxies


def gini(attribution: Tensor) -> Tensor:
    """Gini sparseness of ``|attribution|`` per example (Hurley & Rickard 2009), ``(N,)``.

    ``1 - 2 sum_k (c_k / ||c||_1) (n - k + 1/2) / n`` over the ``n`` flattened absolute values
    sorted ascending (``k = 1..n``): 0 for a uniform map, ``1 - 1/n`` for a one-hot map; an
    all-zero map gives ``nan``. Higher means sparser (Chalasani et al. 2020).

    Example:
        >>> gini(torch.ones(1, 3, 8, 8))
        tensor([0.])
    """
    c = attribution.reshape(attribution.shape[0], -1).abs().sort(dim=1).values
    n = c.shape[1]
    k = torch.arange(1, n + 1, device=c.device, dtype=c.dtype)
    weights = (n - k + 0.5) / n
    return 1 - 2 * (c / c.sum(dim=1, keepdim=True) * weights).sum(dim=1)


def total_variation(attribution: Tensor, *, reduce: Reduce = "abs") -> Tensor:
    """Total variation of the 2-D map, per example ``(N,)``, in [0, 1].

    The map (``(N, C, H, W)`` reduced over channels by ``reduce``, or ``(N, H, W)``; ``"abs"``
    takes absolute values first) is scaled to [0, 1] per example (min-max; a constant map stays
    0), then the absolute differences between horizontal and vertical neighbours are averaged.
    Averaging (not summing) makes the value comparable across image sizes: 0 for a constant map,
    1 for a 0/1 checkerboard. Lower means smoother.

    Example:
        >>> total_variation(torch.ones(2, 3, 8, 8))
        tensor([0., 0.])
    """
    m = _unit_range(_to_map(attribution, reduce))
    dh = (m[:, 1:, :] - m[:, :-1, :]).abs().flatten(1)
    dw = (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1)
    return torch.cat([dh, dw], dim=1).mean(dim=1)


# --------------------------------------------------------------------------- helpers


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def _ranks(t: Tensor) -> Tensor:
    """Average ranks (0-based, float64) along dim 1 of a 2-D tensor; ties share their mean."""
    t = t.double().contiguous()
    ordered = t.sort(dim=1).values
    below = torch.searchsorted(ordered, t, right=False)
    up_to = torch.searchsorted(ordered, t, right=True)
    return (below + up_to - 1).double() / 2


def _gaussian_kernel(sigma: float, radius: int, device: torch.device) -> Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-offsets.square() / (2 * sigma**2))
    return weights / weights.sum()


def _blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images with reflect padding."""
    radius = kernel_size // 2
    kernel = _gaussian_kernel(sigma, radius, x.device).to(x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def _to_map(attribution: Tensor, reduce: Reduce) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W)`` by (absolute) channel sum; ``(N, H, W)`` kept."""
    if reduce not in ("sum", "abs"):
        raise ValueError(f"reduce must be 'sum' or 'abs', got {reduce!r}")
    if attribution.ndim not in (3, 4):
        raise ValueError(f"expected an (N, C, H, W) or (N, H, W) map, got {attribution.shape}")
    m = attribution.abs() if reduce == "abs" else attribution
    return m.sum(dim=1) if m.ndim == 4 else m


def _unit_range(m: Tensor) -> Tensor:
    """Min-max scale each example to [0, 1]; constant examples become 0."""
    flat = m.reshape(m.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    return ((flat - low) / torch.where(span > 0, span, 1.0)).view_as(m)


def _resolve_target(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """``None`` -> clean argmax; int or N ints -> LongTensor ``(N,)``, checked as `smooth` does."""
    with torch.no_grad():
        resolved = targets.resolve(target, model(x))
    if not isinstance(resolved, Tensor):
        raise TypeError("metrics need class targets (None, an int or N ints), not a callable")
    return resolved


def _target_outputs(
    model: nn.Module, x: Tensor, target: Tensor, batch_size: int | None, *, softmax: bool
) -> Tensor:
    """Model output (logit or softmax probability) for ``target`` per row, in chunks."""
    step = batch_size or x.shape[0]
    outputs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], step):
            out = model(x[i : i + step])
            if softmax:
                out = out.softmax(dim=1)
            outputs.append(out.gather(1, target[i : i + step, None]).squeeze(1))
    return torch.cat(outputs)


def _perturbation_curve(
    model: nn.Module,
    start: Tensor,
    fill: Tensor,
    saliency: Tensor,
    target: Tensor,
    steps: int,
    batch_size: int,
) -> Curve:
    """Move pixels from ``start`` to ``fill`` in decreasing ``saliency`` order; score each step."""
    n, _, h, w = start.shape
    if saliency.shape != (n, h, w):
        raise ValueError(f"map {saliency.shape} does not match images {start.shape}")
    pixels = h * w
    order = saliency.reshape(n, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(pixels, device=order.device).expand(n, -1)
    )
    counts = (torch.arange(steps + 1, device=start.device) * pixels + steps // 2) // steps
    jobs = torch.arange(n * (steps + 1), device=start.device)
    scores = []
    for chunk in torch.split(jobs, batch_size):
        i, k = chunk // (steps + 1), chunk % (steps + 1)
        moved = (rank[i] < counts[k, None]).view(-1, 1, h, w)
        images = torch.where(moved, fill[i], start[i])
        scores.append(_target_outputs(model, images, target[i], None, softmax=True))
    fractions = counts.to(start.dtype) / pixels
    curve = torch.cat(scores).view(n, steps + 1)
    return Curve(fractions=fractions, scores=curve, auc=torch.trapezoid(curve, fractions, dim=1))


def _draw(
    kind: Literal["normal", "uniform"],
    shape: tuple[int, ...],
    generator: torch.Generator | int,
    like: Tensor,
) -> Tensor:
    """Standard normal or U[0, 1) noise from ``generator`` (or a fresh CPU one seeded with it),
    moved to ``like``'s device and dtype; the values do not depend on ``like``'s device."""
    gen = (
        generator
        if isinstance(generator, torch.Generator)
        else torch.Generator().manual_seed(generator)
    )
    sample = torch.randn if kind == "normal" else torch.rand
    noise = sample(shape, generator=gen, device=gen.device, dtype=_float_dtype(like))
    return noise.to(like.device)


def _shuffle_pixels(m: Tensor, seed: int) -> Tensor:
    """Randomly permute the pixels (last two dims, channels together) of each example."""
    n, pixels = m.shape[0], m.shape[-2] * m.shape[-1]
    flat = m.reshape(*m.shape[:-2], pixels)
    order = _draw("uniform", (n, pixels), seed, m).argsort(dim=1)
    index = order.view(n, *([1] * (flat.ndim - 2)), pixels).expand_as(flat)
    return flat.gather(-1, index).view_as(m)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, cuda_devices: list[int]) -> Iterator[None]:
    """Seed the global CPU RNG (and that of ``cuda_devices``) for the block; restore it after.

    ``torch.manual_seed`` is avoided: it would also seed CUDA devices that are not restored.
    """
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        for device in cuda_devices:
            torch.cuda.default_generators[device].manual_seed(seed)
        yield
