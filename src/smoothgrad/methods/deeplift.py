"""DeepLIFT with the rescale rule (Shrikumar et al. 2017), as a modified gradient.

Its promise, that the map sums to f(x) − f(baseline), is measured on every call from the
baseline pass it runs anyway (`summation_gap`), reported in the notes and warned about when
it fails.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> x = torch.randn(2, 3)
    >>> explained = deeplift.with_output(model, x, 1)
    >>> expected = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    >>> gap = explained.notes["deeplift_gap"]
    >>> torch.allclose(explained.map.sum(dim=1), expected, atol=1e-5), bool(gap.max() < 1e-3)
    (True, True)
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.methods.base import Attributed, BaseMethod, MeasuredWarning, scores
from smoothgrad.overrides import Rescaling, uncovered_by_deeplift

__all__ = ["GAP_TOLERANCE", "deeplift", "gap_tolerance", "summation_gap"]

GAP_TOLERANCE = 1e-3
"""The relative summation gap above which DeepLIFT warns, in float32 and wider."""


@BaseMethod
def deeplift(
    model: nn.Module, x: Tensor, target: object, *, baseline: Tensor | None = None
) -> Attributed:
    """(x − baseline) × the rescale-rule multipliers of the target score.

    At every elementwise nonlinearity (ReLU and its variants, sigmoid, tanh, GELU, …, in any
    form: module, functional or in-place) the local derivative is replaced by Δy/Δx between
    the input pass and a baseline pass (no gradients) whose calls are paired with the input
    pass's in order, so reshaping or moving the batch dimension is fine; linear layers keep
    their gradient. What the rule does not cover — normalisation layers (LayerNorm,
    GroupNorm), products of two activations (gates, attention), fused attention
    (`F.scaled_dot_product_attention`), max pooling, softmax, TorchScript and fused
    recurrent layers — keeps its plain gradient, so the map may not sum to
    f(x) − f(baseline). That sum is measured on every call (the baseline pass gives
    f(baseline)): the notes hold ``deeplift_gap``, each row's `summation_gap`, and a warning
    names the uncovered operations whenever a row's gap exceeds `gap_tolerance` (0.1 % in
    float32). `baseline` (zeros by default) broadcasts against `x`. Targets and outputs: any
    form `smooth` takes (see `gradient`). The output is the input pass's, on exactly the
    rows of `x`.
    """
    base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    passes = Rescaling()
    with torch.no_grad(), passes.baseline():
        base_output = scores(model, base.clone())
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with passes.inputs():
            output = scores(model, leaf.clone())  # a copy: the model may edit its input
        resolved = targets.resolve(target, output.detach(), targets.labels_of(model))
        explained = targets.score(output, resolved)
        (grad,) = torch.autograd.grad(explained.sum(), leaf)
        attribution = (x - base) * grad
        gap = summation_gap(attribution, explained.detach()
                            - targets.score(base_output, resolved))
        worst, tolerance = float(gap.max()), gap_tolerance(x.dtype)
        if worst > tolerance:
            _warn_gap(worst, tolerance, uncovered_by_deeplift(explained.grad_fn, leaf, model))
    return Attributed(attribution, output.detach(), {"deeplift_gap": gap})


def summation_gap(attribution: Tensor, delta: Tensor) -> Tensor:
    """|Σ map − Δ| / |Δ| per row, Δ = f(x) − f(baseline) of the explained score.

    Where Δ is under 1 % of Σ|map| (a copy whose score barely moves), 1 % of Σ|map| is the
    scale instead, so float rounding in a large cancelling sum does not read as a gap.

    Example:
        >>> summation_gap(torch.tensor([[1.0, 2.0]]), torch.tensor([2.0]))
        tensor([0.5000])
    """
    flat = attribution.detach().flatten(1).double()
    delta = delta.detach().double().to(flat.device)
    scale = torch.maximum(delta.abs(), 1e-2 * flat.abs().sum(dim=1))
    gap = (flat.sum(dim=1) - delta).abs() / scale.clamp(min=torch.finfo(torch.float64).tiny)
    return gap.float()


def gap_tolerance(dtype: torch.dtype) -> float:
    """The gap DeepLIFT tolerates in `dtype`: `GAP_TOLERANCE`, or 10 × the resolution of a
    half-precision type."""
    return max(GAP_TOLERANCE, 10 * float(torch.finfo(dtype).eps))


def _warn_gap(worst: float, tolerance: float, uncovered: list[str]) -> None:
    cause = ("the rescale rule does not cover (plain gradient kept): " + ", ".join(uncovered)
             if uncovered else
             "no operation outside the rule was found in the graph; a selection that depends "
             "on the input (torch.where, masked_fill, indexing by argmax) or a computation "
             "across the batch may be the cause")
    key = f"deeplift: the map does not sum to f(x) − f(baseline); {cause}"
    warnings.warn(MeasuredWarning(
        f"deeplift: the map does not sum to f(x) − f(baseline): relative gap up to "
        f"{worst:.2g} (tolerance {tolerance:g}); {cause}", key=key, value=worst), stacklevel=3)
