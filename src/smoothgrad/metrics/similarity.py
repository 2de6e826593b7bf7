"""How alike two maps are: relative L2 error, Spearman rank correlation, SSIM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothgrad.metrics.base import Score, float_dtype

__all__ = ["SCORES", "gaussian_kernel", "relative_l2", "spearman", "ssim"]

SCORES = (Score("relative_l2", "L2 vs ref", ".3f", "lower"),
          Score("spearman", "ρ vs ref", ".3f", "higher"))
"""The similarity scores of a map against a reference (convergence rows)."""


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
    return rho.to(float_dtype(a))


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
    kernel = gaussian_kernel(sigma, radius, a.device)

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
    return s.mean(dim=(1, 2)).to(float_dtype(a))


def gaussian_kernel(sigma: float, radius: int, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian weights ``(2 radius + 1,)`` in float64."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-offsets.square() / (2 * sigma**2))
    return weights / weights.sum()


def _ranks(t: Tensor) -> Tensor:
    """Average ranks (0-based, float64) along dim 1 of a 2-D tensor; ties share their mean."""
    t = t.double().contiguous()
    ordered = t.sort(dim=1).values
    below = torch.searchsorted(ordered, t, right=False)
    up_to = torch.searchsorted(ordered, t, right=True)
    return (below + up_to - 1).double() / 2
