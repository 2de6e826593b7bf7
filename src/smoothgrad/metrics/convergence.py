"""How far an n-sample SmoothGrad map is from a high-n reference, and from other seeds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.engine import smooth
from smoothgrad.metrics.base import channel_map
from smoothgrad.metrics.similarity import relative_l2, spearman

__all__ = ["ConvergenceRow", "convergence", "convergence_row"]


@dataclass(frozen=True)
class ConvergenceRow:
    """How close ``samples``-sample SmoothGrad maps are to a high-n reference.

    Each field is a tensor of shape ``(N,)``: ``relative_l2`` and ``spearman`` compare each
    seed's map with the reference (averaged over seeds); ``seed_agreement`` is the Spearman
    correlation between maps from different seeds (averaged over seed pairs; NaN for one
    seed). ``shown_l2`` and ``shown_spearman`` compare the shown maps (|map| summed over
    channels: what figures and the deletion metrics rank) in the same way.
    """

    samples: int
    relative_l2: Tensor
    spearman: Tensor
    seed_agreement: Tensor
    shown_l2: Tensor | None = None
    shown_spearman: Tensor | None = None


def convergence_row(samples: int, maps: Sequence[Tensor], reference: Tensor) -> ConvergenceRow:
    """The comparison of one or more maps (one per seed) with ``reference``; see the class."""
    ref_shown = channel_map(reference, "abs") if reference.ndim == 4 else reference

    def mean(values: list[Tensor]) -> Tensor:
        return torch.stack(values).mean(dim=0)

    pairs = list(itertools.combinations(maps, 2))
    agreement = (mean([spearman(p, q) for p, q in pairs]) if pairs
                 else torch.full((reference.shape[0],), math.nan))
    shown = [channel_map(m, "abs") for m in maps] if reference.ndim == 4 else []
    return ConvergenceRow(
        samples=samples,
        relative_l2=mean([relative_l2(m, reference) for m in maps]),
        spearman=mean([spearman(m, reference) for m in maps]),
        seed_agreement=agreement,
        shown_l2=mean([relative_l2(s, ref_shown) for s in shown]) if shown else None,
        shown_spearman=mean([spearman(s, ref_shown) for s in shown]) if shown else None,
    )


def convergence(model: nn.Module, x: Tensor, *, method: str | Callable[..., Tensor],
                samples: Sequence[int] = (2, 5, 20, 50, 100), reference_samples: int = 1000,
                seeds: Sequence[int] = (0, 1, 2), reference_seed: int | None = None,
                **smooth_kwargs: Any) -> list[ConvergenceRow]:
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
    if "seed" in smooth_kwargs:
        raise TypeError("convergence takes seeds=... and reference_seed=..., not seed=...")
    if len(set(seeds)) < 2:
        raise ValueError("seed agreement needs at least two distinct seeds")
    if reference_seed is None:
        reference_seed = max(seeds) + 1
    if reference_seed in seeds:
        raise ValueError("reference_seed must differ from seeds (shared noise biases the error)")
    options = {key: value for key, value in smooth_kwargs.items() if key != "target"}
    reference = smooth(model, x, method=method, samples=reference_samples, seed=reference_seed,
                       target=smooth_kwargs.get("target"), **options)
    return [convergence_row(n, [smooth(model, x, method=method, samples=n, seed=s,
                                       target=reference.target, **options).attribution.detach()
                                for s in seeds], reference.attribution.detach())
            for n in samples]
