"""How noisy or sparse a map looks: Gini sparseness and total variation."""

from __future__ import annotations

import torch
from torch import Tensor

from smoothgrad.metrics.base import ChannelSum, Score, channel_map, unit_range

__all__ = ["SCORES", "gini", "total_variation"]

SCORES = (Score("total_variation", "TV", ".4f", "lower"), Score("gini", "Gini", ".3f", "higher"))


def gini(attribution: Tensor) -> Tensor:
    """Gini sparseness of ``|attribution|`` per example (Hurley & Rickard 2009), ``(N,)``.

    ``1 - 2 sum_k (c_k / ||c||_1) (n - k + 1/2) / n`` over the ``n`` flattened absolute values
    sorted ascending (``k = 1..n``): 0 for a uniform map, ``1 - 1/n`` for a one-hot map. Higher
    means sparser (Chalasani et al. 2020). An all-zero map is a uniform map and scores 0 (the
    formula's 0/0 is not evaluated). This is Quantus' ``Sparseness(abs=True, normalise=False)``
    but for the ``1e-7`` Quantus adds to every value (differences of order ``1e-7 / mean |a|``);
    Quantus refuses a batch of only all-zero maps and, through that shift, also scores an
    all-zero map 0 in a mixed batch.

    Example:
        >>> gini(torch.ones(1, 3, 8, 8)), gini(torch.zeros(1, 3, 8, 8))
        (tensor([0.]), tensor([0.]))
    """
    c = attribution.reshape(attribution.shape[0], -1).abs().sort(dim=1).values
    n = c.shape[1]
    k = torch.arange(1, n + 1, device=c.device, dtype=c.dtype)
    weights = (n - k + 0.5) / n
    total = c.sum(dim=1, keepdim=True)
    score = 1 - 2 * (c / torch.where(total > 0, total, 1.0) * weights).sum(dim=1)
    return torch.where(total.squeeze(1) > 0, score, 0.0)


def total_variation(attribution: Tensor, *, reduce: ChannelSum = "abs") -> Tensor:
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
    m = unit_range(channel_map(attribution, reduce))
    dh = (m[:, 1:, :] - m[:, :-1, :]).abs().flatten(1)
    dw = (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1)
    return torch.cat([dh, dw], dim=1).mean(dim=1)
