"""Does the map point at what the model uses: deletion/insertion curves (RISE) and infidelity."""

from __future__ import annotations

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
    "CURVE_KINDS", "SCORES", "Curve", "CurveKind", "blur", "curves", "deletion_auc",
    "deletion_curve", "gaussian_perturbations", "infidelity", "infidelity_drops",
    "infidelity_score", "insertion_auc", "insertion_curve",
]

SCORES = (Score("deletion_auc", "del", ".3f", "lower"),
          Score("insertion_auc", "ins", ".3f", "higher"),
          Score("infidelity", "infid", ".3g", "lower"))

CurveKind = Literal["deletion", "insertion"]
CURVE_KINDS: tuple[CurveKind, ...] = ("deletion", "insertion")


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


class DeletionOptions(TypedDict, total=False):
    steps: int
    reduce: ChannelSum
    batch_size: int


class InsertionOptions(DeletionOptions, total=False):
    blur_kernel: int
    blur_sigma: float


def deletion_curve(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None, *,
                   steps: int = 100, reduce: ChannelSum = "sum", batch_size: int = 64) -> Curve:
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
    return curves(model, x, channel_map(attribution, reduce), resolve_target(model, x, target),
                  kinds=("deletion",), steps=steps, batch_size=batch_size)["deletion"]


def insertion_curve(model: nn.Module, x: Tensor, attribution: Tensor, target: Target = None, *,
                    steps: int = 100, reduce: ChannelSum = "sum", batch_size: int = 64,
                    blur_kernel: int = 11, blur_sigma: float = 5.0) -> Curve:
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
    return curves(model, x, channel_map(attribution, reduce), resolve_target(model, x, target),
                  kinds=("insertion",), steps=steps, batch_size=batch_size,
                  start=blur(x, blur_kernel, blur_sigma))["insertion"]


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


def curves(model: nn.Module, x: Tensor, saliency: Tensor, target: Tensor, *,
           kinds: tuple[CurveKind, ...] = ("deletion", "insertion"), steps: int = 100,
           batch_size: int = 64, start: Tensor | None = None,
           progress: Progress | None = None) -> dict[CurveKind, Curve]:
    """Deletion and/or insertion curves of one 2-D map ``saliency`` ``(N, H, W)``.

    The pixel order is sorted once for all ``kinds``; ``target`` is resolved ``(N,)`` and
    ``start`` is the blurred image insertion starts from (default: ``blur(x, 11, 5.0)``,
    pass it to share it between maps). ``progress`` gets the rows of each forward pass.
    """
    n, _, h, w = x.shape
    if saliency.shape != (n, h, w):
        raise ValueError(f"map {saliency.shape} does not match images {x.shape}")
    pixels = h * w
    order = saliency.reshape(n, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(pixels, device=order.device).expand(n, -1))
    counts = (torch.arange(steps + 1, device=x.device) * pixels + steps // 2) // steps
    fractions = counts.to(x.dtype) / pixels
    out: dict[CurveKind, Curve] = {}
    for kind in kinds:
        if kind == "deletion":
            begin, fill = x, x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        else:
            begin, fill = (blur(x, 11, 5.0) if start is None else start), x
        jobs = torch.arange(n * (steps + 1), device=x.device)
        scores = []
        for chunk in torch.split(jobs, batch_size):
            i, k = chunk // (steps + 1), chunk % (steps + 1)
            moved = (rank[i] < counts[k, None]).view(-1, 1, h, w)
            images = torch.where(moved, fill[i], begin[i])
            scores.append(target_outputs(model, images, target[i], None, softmax=True,
                                         progress=progress))
        curve = torch.cat(scores).view(n, steps + 1)
        out[kind] = Curve(fractions=fractions, scores=curve,
                          auc=torch.trapezoid(curve, fractions, dim=1))
    return out


def blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images with reflect padding."""
    radius = kernel_size // 2
    kernel = gaussian_kernel(sigma, radius, x.device).to(x.dtype)
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


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
