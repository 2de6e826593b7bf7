"""Quantitative checks for saliency maps, one module per family.

- ``similarity``: relative L2, Spearman, SSIM (building blocks);
- ``convergence``: n-sample SmoothGrad maps against a high-n reference and across seeds;
- ``faithfulness``: deletion/insertion curves (RISE) and infidelity;
- ``robustness``: max-sensitivity and the explainer's own noise floor;
- ``sanity``: cascading model-parameter randomisation;
- ``complexity``: Gini sparseness and total variation (noise proxies).

Every function is batch-first: inputs are ``(N, ...)`` tensors and per-example scores come back
as tensors of shape ``(N,)``. Randomness comes from explicit seeds or ``torch.Generator``
objects, never from the global RNG, and the caller's model is never modified (the
randomisation check works on a deep copy). Models are evaluated under ``torch.no_grad()``
wherever no gradient is needed, in passes of at most ``batch_size`` rows; they are used in
whatever train/eval mode the caller left them. ``SCORES`` says, for every score a table shows,
whether higher or lower is better.

An *explainer* is any callable ``explain(model, x, target) -> Tensor`` shaped like ``x``, with
``target`` a ``LongTensor`` of shape ``(N,)``: a base method such as ``smoothgrad.methods.gradient``
or a wrapped ``smoothgrad.smooth``.
"""

from __future__ import annotations

from smoothgrad.metrics import complexity, faithfulness, robustness, sanity, similarity
from smoothgrad.metrics.base import ChannelSum, Explainer, Score
from smoothgrad.metrics.complexity import gini, total_variation
from smoothgrad.metrics.convergence import ConvergenceRow, convergence
from smoothgrad.metrics.faithfulness import (
    Curve,
    deletion_auc,
    deletion_curve,
    infidelity,
    insertion_auc,
    insertion_curve,
)
from smoothgrad.metrics.robustness import sensitivity_floor, sensitivity_max
from smoothgrad.metrics.sanity import RandomizationRow, randomization_check
from smoothgrad.metrics.similarity import relative_l2, spearman, ssim

__all__ = [
    "SCORES",
    "ChannelSum",
    "ConvergenceRow",
    "Curve",
    "Explainer",
    "RandomizationRow",
    "Score",
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

SCORES: dict[str, Score] = {score.key: score for family in (
    complexity, faithfulness, robustness, sanity, similarity) for score in family.SCORES}
"""Score key -> its description (name, format, whether higher or lower is better)."""
