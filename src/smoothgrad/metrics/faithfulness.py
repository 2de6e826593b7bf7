"""Does the map point at what the model uses: deletion/insertion curves (RISE) and infidelity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothgrad.metrics.base import (
    ChannelSum,
    Progress,
    Score,
    Target,
    channel_map,
    draw,
    resolve_target,
    target_outputs,
)
from smoothgrad.metrics.similarity import gaussian_kernel

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "CURVE_KINDS", "RISE_STEP_PIXELS", "SCORES", "SUBSTRATES", "Curve", "CurveKind", "Substrate",
    "blur", "curves", "default_substrate", "deletion_auc", "deletion_curve",
    "gaussian_perturbations", "infidelity", "infidelity_drops", "infidelity_score",
    "insertion_auc", "insertion_curve", "rise_weights", "schedule", "substrate_image",
]

SCORES = (Score("deletion_auc", "del", ".3f", "lower"),
          Score("insertion_auc", "ins", ".3f", "higher"),
          Score("infidelity", "infid", ".3g", "lower"))

CurveKind = Literal["deletion", "insertion"]
CURVE_KINDS: tuple[CurveKind, ...] = ("deletion", "insertion")

Substrate = Literal["zeros", "mean", "blur"]
SUBSTRATES: tuple[Substrate, ...] = ("zeros", "mean", "blur")
"""What deleted pixels become and what insertion starts from (see `substrate_image`)."""

RISE_STEP_PIXELS = 224
"""Pixels moved per step in RISE's protocol (one image row of a 224x224 input)."""


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve (RISE, Petsiuk et al. 2018).

    ``fractions`` ``(steps + 1,)``: share of the curve's steps done, from 0 to 1 (the share of
    pixels moved, but for RISE's last, shorter step). ``scores`` ``(N, steps + 1)``: softmax
    probability of the target class at each step. ``auc`` ``(N,)``: trapezoid area under
    ``scores`` over ``fractions`` (in [0, 1]; with RISE's steps, RISE's ``auc``).
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor


class DeletionOptions(TypedDict, total=False):
    steps: int | None
    substrate: Substrate | None
    rise: bool
    reduce: ChannelSum
    batch_size: int


class InsertionOptions(DeletionOptions, total=False):
    blur_kernel: int
    blur_sigma: float


def deletion_curve(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None, *,
                   steps: int | None = None, substrate: Substrate | None = None,
                   rise: bool = False, reduce: ChannelSum = "sum",
                   batch_size: int = 64) -> Curve:
    """Deletion curve: delete pixels, most important first, and track the class probability.

    ``x`` is ``(N, C, H, W)``; ``attribution`` is shaped like ``x`` (reduced over channels by
    ``reduce``: ``"sum"`` ranks by the signed channel sum, ``"abs"`` by the sum of absolute
    values, the choice for sign-agnostic maps such as plain gradients) or is already a 2-D map
    ``(N, H, W)``. A deleted pixel takes the value of the ``substrate`` image there (see
    :func:`substrate_image`; default ``"mean"``, each image's mean colour, so after all steps
    the image is flat). At step ``k`` of ``steps`` (default 100) the top ``round(k H W /
    steps)`` pixels are deleted. The score is the softmax probability of ``target`` (default:
    the clean prediction). Lower AUC is better. ``rise=True`` is RISE's protocol
    (``evaluation.py`` of Petsiuk et al.): the substrate is zeros (the dataset mean once
    inputs are mean/std-normalised) and each step deletes 224 pixels; ``steps`` and
    ``substrate`` must then be left out. Forward passes run under ``torch.no_grad()``,
    ``batch_size`` images at a time.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
        >>> x = torch.rand(2, 3, 4, 4)
        >>> curve = deletion_curve(model, x, torch.rand(2, 3, 4, 4), steps=8)
        >>> curve.scores.shape, curve.auc.shape
        (torch.Size([2, 9]), torch.Size([2]))
    """
    fill = substrate_image(x, _substrate("deletion", substrate, steps, rise), rise=rise)
    return curves(model, x, channel_map(attribution, reduce), resolve_target(model, x, target),
                  kinds=("deletion",), steps=None if rise else steps or 100,
                  substrates={"deletion": fill}, batch_size=batch_size)["deletion"]


def insertion_curve(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None, *,
                    steps: int | None = None, substrate: Substrate | None = None,
                    rise: bool = False, reduce: ChannelSum = "sum", batch_size: int = 64,
                    blur_kernel: int = 11, blur_sigma: float = 5.0) -> Curve:
    """Insertion curve: start from the substrate, insert original pixels most important first.

    The default substrate is ``"blur"``: a Gaussian blur with RISE's kernel size 11 and sigma
    5, but reflect-padded (RISE pads with zeros, which darkens the border) and with sampled
    Gaussian weights. ``rise=True`` uses RISE's own blur (zero padding, its kernel: an 11x11
    impulse through ``scipy.ndimage.gaussian_filter``) and RISE's steps of 224 pixels.
    Everything else as in :func:`deletion_curve`; higher AUC is better.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3))
        >>> x = torch.rand(2, 3, 16, 16)
        >>> insertion_curve(model, x, torch.rand(2, 16, 16), steps=8).auc.shape
        torch.Size([2])
    """
    start = substrate_image(x, _substrate("insertion", substrate, steps, rise), rise=rise,
                            blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    return curves(model, x, channel_map(attribution, reduce), resolve_target(model, x, target),
                  kinds=("insertion",), steps=None if rise else steps or 100,
                  substrates={"insertion": start}, batch_size=batch_size)["insertion"]


def deletion_auc(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None,
                 **options: Unpack[DeletionOptions]) -> Tensor:
    """Deletion AUC per example, ``(N,)``; options and defaults as :func:`deletion_curve`.
    Lower is better.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
        >>> x = torch.rand(2, 3, 4, 4)
        >>> deletion_auc(model, x, torch.randn(2, 3, 4, 4), reduce="abs").shape
        torch.Size([2])
    """
    return deletion_curve(model, x, attribution, target, **options).auc


def insertion_auc(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None,
                  **options: Unpack[InsertionOptions]) -> Tensor:
    """Insertion AUC per example, ``(N,)`` (higher is better): ``insertion_curve(...).auc``.

    >>> linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3))
    >>> insertion_auc(linear, torch.rand(1, 3, 16, 16), torch.randn(1, 16, 16), steps=4).shape
    torch.Size([1])
    """
    return insertion_curve(model, x, attribution, target, **options).auc


def default_substrate(kind: CurveKind, rise: bool = False) -> Substrate:
    """The substrate a curve uses unless told: deletion "mean" ("zeros" for RISE), insertion
    "blur"."""
    return "blur" if kind == "insertion" else "zeros" if rise else "mean"


def _substrate(kind: CurveKind, substrate: Substrate | None, steps: int | None,
               rise: bool) -> Substrate:
    if rise and (substrate is not None or steps is not None):
        raise ValueError("rise=True is RISE's protocol: leave steps and substrate out")
    if substrate is not None and substrate not in SUBSTRATES:
        raise ValueError(f"substrate must be one of {', '.join(SUBSTRATES)}, got {substrate!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return default_substrate(kind, rise) if substrate is None else substrate


def substrate_image(x: Tensor, substrate: Substrate, *, rise: bool = False,
                    blur_kernel: int = 11, blur_sigma: float = 5.0) -> Tensor:
    """The image with the information removed, ``(N, C, H, W)``: what deletion fills pixels
    with and what insertion starts from.

    ``"zeros"``: zeros (RISE's deletion: the dataset mean for inputs normalised by the
    dataset's mean and std, mid-grey for inputs scaled to [-1, 1]).
    ``"mean"``: each image's mean colour. ``"blur"``: :func:`blur` of the image (RISE's when
    ``rise``).

    Example:
        >>> substrate_image(torch.ones(1, 3, 4, 4), "mean").shape
        torch.Size([1, 3, 4, 4])
    """
    if substrate == "zeros":
        return torch.zeros_like(x)
    if substrate == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return blur(x, blur_kernel, blur_sigma, rise=rise)


def schedule(pixels: int, steps: int | None, device: torch.device,
             dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(counts, fractions)`` of a curve over ``pixels`` pixels: ``counts[k]`` pixels moved
    after step ``k``. ``steps`` equal steps (``round(k pixels / steps)``), or with ``None``
    RISE's steps of 224 pixels (the last one shorter) at evenly spaced fractions."""
    if steps is None:
        steps = -(-pixels // RISE_STEP_PIXELS)
        k = torch.arange(steps + 1, device=device)
        return (k * RISE_STEP_PIXELS).clamp(max=pixels), k.to(dtype) / steps
    counts = (torch.arange(steps + 1, device=device) * pixels + steps // 2) // steps
    return counts, counts.to(dtype) / pixels


def curves(model: nn.Module, x: Tensor, saliency: Tensor, target: Tensor, *,
           kinds: tuple[CurveKind, ...] = ("deletion", "insertion"), steps: int | None = 100,
           substrates: Mapping[CurveKind, Tensor] | None = None, batch_size: int = 64,
           progress: Progress | None = None) -> dict[CurveKind, Curve]:
    """Deletion and/or insertion curves of one 2-D map ``saliency`` ``(N, H, W)``.

    The pixel order is sorted once for all ``kinds`` (ties in pixel order); ``target`` is
    resolved ``(N,)``; ``steps`` as in :func:`schedule` (``None``: RISE's). ``substrates``
    holds each kind's :func:`substrate_image` (default: ``default_substrate``'s; pass them to
    share them between maps). ``progress`` gets the rows of each forward pass.
    """
    n, _, h, w = x.shape
    if saliency.shape != (n, h, w):
        raise ValueError(f"map {saliency.shape} does not match images {x.shape}")
    pixels = h * w
    order = saliency.reshape(n, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(pixels, device=order.device).expand(n, -1))
    counts, fractions = schedule(pixels, steps, x.device, x.dtype)
    points = counts.shape[0]
    out: dict[CurveKind, Curve] = {}
    for kind in kinds:
        other = (substrates or {}).get(kind)
        if other is None:
            other = substrate_image(x, default_substrate(kind))
        begin, fill = (x, other) if kind == "deletion" else (other, x)
        jobs = torch.arange(n * points, device=x.device)
        scores = []
        for chunk in torch.split(jobs, batch_size):
            i, k = chunk // points, chunk % points
            moved = (rank[i] < counts[k, None]).view(-1, 1, h, w)
            images = torch.where(moved, fill[i], begin[i])
            scores.append(target_outputs(model, images, target[i], None, softmax=True,
                                         progress=progress))
        curve = torch.cat(scores).view(n, points)
        out[kind] = Curve(fractions=fractions, scores=curve,
                          auc=torch.trapezoid(curve, fractions, dim=1))
    return out


def blur(x: Tensor, kernel_size: int, sigma: float, *, rise: bool = False) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, each channel on its own.

    Default: ``kernel_size`` sampled Gaussian weights, reflect padding. ``rise``: RISE's blur,
    zero padding and the weights of an impulse at the centre of ``kernel_size`` samples passed
    through ``scipy.ndimage.gaussian_filter(sigma)`` (truncated at 4 sigma, tails folded back
    at the edges), so the result equals RISE's ``conv2d(x, gkern(kernel_size, sigma))``.

    Example:
        >>> blur(torch.ones(1, 3, 8, 8), 5, 2.0).allclose(torch.ones(1, 3, 8, 8))
        True
        >>> blur(torch.ones(1, 3, 8, 8), 5, 2.0, rise=True)[0, 0, 0, 0] < 1  # zero-padded border
        tensor(True)
    """
    radius = kernel_size // 2
    weights = (rise_weights(kernel_size, sigma, x.device) if rise
               else gaussian_kernel(sigma, radius, x.device))
    kernel = weights.to(x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="constant" if rise else "reflect")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def rise_weights(size: int, sigma: float, device: torch.device | None = None) -> Tensor:
    """RISE's 1-D blur weights ``(size,)`` (float64): ``scipy.ndimage.gaussian_filter1d`` of a
    centred impulse, i.e. the Gaussian truncated at ``int(4 sigma + 0.5)`` and folded back at
    both ends by scipy's default "reflect" boundary (so they sum to 1)."""
    radius = int(4.0 * sigma + 0.5)
    gaussian = gaussian_kernel(sigma, radius, device or torch.device("cpu"))
    positions = (torch.arange(size, device=gaussian.device)[:, None]
                 + torch.arange(-radius, radius + 1, device=gaussian.device))
    wrapped = positions % (2 * size)
    source = torch.where(wrapped < size, wrapped, 2 * size - 1 - wrapped)
    return (gaussian * (source == size // 2)).sum(dim=1)


# --------------------------------------------------------------------------- infidelity


def infidelity(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None, *,
               n_perturb_samples: int = 50, noise_std: float = 0.1,
               perturbations: Tensor | None = None, generator: torch.Generator | int = 0,
               normalize: bool = True, batch_size: int | None = None) -> Tensor:
    """Explanation infidelity (Yeh et al. 2019) with Gaussian perturbations, per example ``(N,)``.

    ``mean_k (beta * I_k . attribution - (f(x) - f(x - I_k)))^2`` with ``f`` the model's output
    (logit) for ``target`` (default: the clean prediction), ``I_k ~ N(0, noise_std^2)`` i.i.d.
    per element (absolute std, in the units of ``x``), and with ``normalize`` the scale
    ``beta = sum_k (I_k . a)(f(x) - f(x - I_k)) / sum_k (I_k . a)^2`` that makes the score
    invariant to rescaling the attribution (``beta = 1`` without ``normalize``).
    ``perturbations`` ``(N, n_perturb_samples, *x.shape[1:])`` supplies the ``I_k`` (then
    ``noise_std``/``generator`` are unused); otherwise they are drawn from ``generator`` (a
    seed or a ``torch.Generator``). Lower is better. Forward passes run under
    ``torch.no_grad()``, ``batch_size`` perturbed inputs at a time (default 64; Captum's
    ``max_examples_per_batch``). The model's part does not depend on the map:
    `infidelity_drops` computes it once for several maps, `infidelity_score` scores each.

    This is ``captum.metrics.infidelity(model, perturb_fn, x, attribution, target=target,
    normalize=normalize, n_perturb_samples=n)`` when ``perturb_fn`` returns the same ``I_k``
    and ``x - I_k``; the names are Captum's, the defaults are not: Captum has
    ``normalize=False`` and 10 samples (its scores scale with the map's units), ours
    ``normalize=True`` and 50. Quantus' ``Infidelity`` is a different metric (square patches
    replaced by a baseline, no ``beta``): its figures are not comparable with these.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> x = torch.rand(2, 4)
        >>> exact = model.weight[model(x).argmax(dim=1)].detach()  # gradient of a linear model
        >>> infidelity(model, x, exact, n_perturb_samples=10).abs().max() < 1e-9  # exact: zero
        tensor(True)
    """
    if attribution.shape != x.shape:
        raise ValueError(f"attribution {attribution.shape} must be shaped like x {x.shape}")
    if perturbations is None:
        perturbations = gaussian_perturbations(x, n_perturb_samples, noise_std, generator)
    drops = infidelity_drops(model, x, resolve_target(model, x, target), perturbations,
                             batch_size=batch_size)
    return infidelity_score(attribution, perturbations, drops, normalize=normalize)


def gaussian_perturbations(x: Tensor, n_perturb_samples: int, noise_std: float,
                           generator: torch.Generator | int = 0) -> Tensor:
    """``noise_std`` times standard normal noise ``(N, n_perturb_samples, *x.shape[1:])``."""
    shape = (x.shape[0], n_perturb_samples, *x.shape[1:])
    return noise_std * draw("normal", shape, generator, x)


def infidelity_drops(model: nn.Module, x: Tensor, target: Tensor, perturbations: Tensor, *,
                     batch_size: int | None = None, clean: Tensor | None = None,
                     progress: Progress | None = None) -> Tensor:
    """``f(x) - f(x - I_k)`` per example and perturbation, ``(N, k)``, for a resolved target;
    ``clean`` is ``f(x)`` ``(N,)`` when the caller has it (one forward pass fewer)."""
    if perturbations.shape[0] != x.shape[0] or perturbations.shape[2:] != x.shape[1:]:
        raise ValueError(f"perturbations must be (N, n_perturb_samples, ...) for x {x.shape}")
    n, k = perturbations.shape[:2]
    if clean is None:
        clean = target_outputs(model, x, target, batch_size, softmax=False, progress=progress)
    perturbed = (x.unsqueeze(1) - perturbations).flatten(0, 1)
    outputs = target_outputs(model, perturbed, target.repeat_interleave(k), batch_size,
                             softmax=False, progress=progress)
    return clean.unsqueeze(1) - outputs.view(n, k)


def infidelity_score(attribution: Tensor, perturbations: Tensor, drops: Tensor, *,
                     normalize: bool = True) -> Tensor:
    """Infidelity ``(N,)`` of ``attribution`` from the perturbations and their output drops."""
    n, k = drops.shape
    with torch.no_grad():
        dot = (attribution.unsqueeze(1) * perturbations).reshape(n, k, -1).sum(dim=2)
        if normalize:
            denom = dot.square().sum(dim=1)
            beta = (dot * drops).sum(dim=1) / torch.where(denom != 0, denom, 1.0)
            dot = beta.unsqueeze(1) * dot
        return (dot - drops).square().mean(dim=1)
