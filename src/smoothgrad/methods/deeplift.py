"""DeepLIFT with the rescale rule (Shrikumar et al. 2017), as a modified gradient.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> x = torch.randn(2, 3)
    >>> a = deeplift(model, x, torch.ones(2, dtype=torch.long))
    >>> expected = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    >>> torch.allclose(a.sum(dim=1), expected, atol=1e-5)
    True
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from smoothgrad.methods.base import Attributed, BaseMethod
from smoothgrad.overrides import Rescaling, unmodified_by_deeplift
from smoothgrad.targets import Resolved, score

__all__ = ["deeplift"]


@BaseMethod
def deeplift(
    model: nn.Module, x: Tensor, target: Resolved, *, baseline: Tensor | None = None
) -> Attributed:
    """(x − baseline) × the rescale-rule multipliers of the target score.

    At every elementwise nonlinearity (ReLU and its variants, sigmoid, tanh, GELU, …, in any
    form: module, functional or in-place) the local derivative is replaced by Δy/Δx between
    the input pass and a baseline pass (no gradients) whose calls are paired with the input
    pass's in order, so reshaping or moving the batch dimension is fine; linear layers keep
    their gradient. Where no warning is given, the attributions sum to f(x) − f(baseline)
    (to float precision). Policy: what the rule cannot reach — max pooling, softmax, PReLU,
    clamp, TorchScript models, `nn.LSTM`/`nn.GRU` internals — keeps its plain gradient and is
    named in a warning rather than refused, since the map is still a useful (approximate)
    attribution. `baseline` (zeros by default) broadcasts against `x`. The output is the
    input pass's, on exactly the rows of `x`.
    """
    base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    passes = Rescaling()
    with torch.no_grad(), passes.baseline():
        model(base.clone())
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with passes.inputs():
            output = model(leaf.clone())  # a copy: the model may edit its input in place
        total = score(output, target).sum()
        left = unmodified_by_deeplift(total.grad_fn, model)
        (grad,) = torch.autograd.grad(total, leaf)
    if left:
        warnings.warn("deeplift applies the plain gradient (not the rescale rule) to: "
                      + ", ".join(left) + "; the attributions do not sum to f(x) − f(baseline)",
                      stacklevel=2)
    return Attributed((x - base) * grad, output.detach())
