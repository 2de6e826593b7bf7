"""Expected activation gates for the mean-field estimator (`smoothgrad.meanfield`).

A `GateMode` sees every elementwise activation on the input's path, one pass at a time:
it records the activation sites on the clean input, sums each site's pre-activation over
the noisy copies, and finally replaces each site's local derivative by its expected gate
(`GateRule.expected`) in one backward pass.

Example:
    >>> import torch
    >>> rule = GateRule("piecewise", lo=0.0)   # ReLU: E[1(z > 0)] = Φ(μ/s)
    >>> rule.expected(torch.tensor([0.0]), torch.tensor([1.0]))
    tensor([0.5000])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from smoothgrad.overrides import MEAN_FIELD, intercepted

__all__ = ["GATED", "GateMode", "GateRule", "Gated", "Site", "module_names"]

_LAMBDA = 1 / 1.702  # sigmoid(t) ≈ Φ(t / 1.702), error below 0.01
_FLOAT = int | float

GATED = frozenset(name for name, rule in MEAN_FIELD.items() if rule.mean_field == "gate")
"""Functions (by name, module or functional, in-place or not) whose derivative is gated:
`overrides.RULES`' rows whose mean-field rule is "gate"."""


@dataclass(frozen=True)
class GateRule:
    """The local derivative of one activation call: a gate `slope + (1 − slope)·[lo < z < hi]`
    for piecewise-linear ones, or a smooth kind ("gelu", "silu", "softplus" with `beta`)."""

    kind: str
    lo: float = -math.inf
    hi: float = math.inf
    slope: float | Tensor = 0.0
    beta: float = 1.0

    def derivative(self, z: Tensor) -> Tensor:
        """f'(z) elementwise (0 at the kinks, as autograd has it)."""
        if self.kind == "piecewise":
            inside = ((z > self.lo) & (z < self.hi)).to(z.dtype)
            return self.slope + (1 - self.slope) * inside
        if self.kind == "gelu":
            return _cdf(z) + z * _pdf(z)
        sig = torch.sigmoid(self.beta * z)
        return sig if self.kind == "softplus" else sig * (1 + z * (1 - sig))

    def expected(self, mu: Tensor, s: Tensor) -> Tensor:
        """E f'(z) for z ~ N(μ, s²); s = 0 gives f'(μ)."""
        if self.kind == "piecewise":
            safe = torch.where(s > 0, s, 1.0)
            inside = _cdf((self.hi - mu) / safe) - _cdf((self.lo - mu) / safe)
            inside = torch.where(s > 0, inside, ((mu > self.lo) & (mu < self.hi)).to(mu.dtype))
            return self.slope + (1 - self.slope) * inside
        if self.kind == "gelu":
            return _expected_gelu_derivative(mu, s)
        if self.kind == "silu":  # silu(z) ≈ z Φ(λz)
            return _expected_gelu_derivative(_LAMBDA * mu, _LAMBDA * s)
        scale = _LAMBDA * self.beta  # softplus' = sigmoid(βz) ≈ Φ(λβz)
        return _cdf(scale * mu / (1 + (scale * s).square()).sqrt())


def _cdf(t: Tensor) -> Tensor:
    out: Tensor = torch.special.ndtr(t)
    return out


def _pdf(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t.square()) / math.sqrt(2 * math.pi)


def _expected_gelu_derivative(mu: Tensor, s: Tensor) -> Tensor:
    """E[Φ(z) + zφ(z)] for z ~ N(μ, s²), in closed form."""
    v = 1 + s.square()
    t = mu / v.sqrt()
    return _cdf(t) + mu / v * _pdf(t) / v.sqrt()


def _bind(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    parameters = MEAN_FIELD[name].parameters
    names = [parameter for parameter, _ in parameters]
    bound = dict(parameters)
    bound.update(zip(names, args[1:], strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in bound})
    inplace = name.endswith("_") or kwargs.get("inplace") is True or (
        len(args) > len(names) + 1 and args[len(names) + 1] is True)
    return bound, inplace


def _rule(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> GateRule:
    """The rule for a call of the activation `name` (in `GATED`); refuses what it cannot gate."""
    p, _ = _bind(name, args, kwargs)
    base = name.rstrip("_")
    if base == "relu":
        return GateRule("piecewise", lo=0.0)
    if base == "relu6":
        return GateRule("piecewise", lo=0.0, hi=6.0)
    if base in ("hardtanh", "clamp", "clip", "clamp_min", "clamp_max"):
        lo, hi = p.get("min_val", p.get("min")), p.get("max_val", p.get("max"))
        if not all(b is None or isinstance(b, _FLOAT) for b in (lo, hi)):
            raise ValueError(f"mean_field: {name} at {where} has tensor bounds; only number "
                             "bounds are supported")
        return GateRule("piecewise", lo=-math.inf if lo is None else float(lo),
                     hi=math.inf if hi is None else float(hi))
    if base == "leaky_relu":
        return GateRule("piecewise", lo=0.0, slope=float(p["negative_slope"]))
    if base == "threshold":
        return GateRule("piecewise", lo=float(p["threshold"]))
    if base == "prelu":
        weight = p["weight"].detach()
        dims = args[0].dim()
        shape = (1, -1, *([1] * (dims - 2))) if weight.numel() > 1 else (1,) * dims
        return GateRule("piecewise", lo=0.0, slope=weight.float().reshape(shape))
    if base == "softplus":
        return GateRule("softplus", beta=float(p["beta"]))
    return GateRule(base)  # gelu, silu


@dataclass
class Site:
    """One activation call of the forward pass, with the running sums of its pre-activation."""

    name: str
    where: str
    rule: GateRule
    shape: torch.Size  # (N, ...)
    sums: Tensor | None = None  # (terms, groups, N, ...): Σz and Σz² (or Σ f'(z)) by group
    gate: Tensor | None = None  # the gate the backward pass uses


class GateMode(TorchFunctionMode):
    """Sees every call of a `GATED` function on the input's path, one pass at a time.

    phase "survey" (clean input, grad on): records the sites; "collect" (noisy copies, no
    grad): adds to each site's sums; "gate" (clean input, grad on): replaces each site's
    local derivative by its gate.
    """

    def __init__(self, rows: int, groups: int, empirical: bool, names: list[str]) -> None:
        super().__init__()
        self.rows, self.groups, self.empirical, self.names = rows, groups, empirical, names
        self.sites: list[Site] = []
        self.calls: list[tuple[str, Site | None]] = []  # every gated-function call, in order
        self.phase = "survey"
        self.call = 0
        self.indices: range | None = None  # the noisy samples of the pass running now
        self.clean_kept: set[str] = set()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name, first, kwargs = intercepted(func, args, kwargs)
        if self.phase == "survey" and isinstance(first, Tensor) and first.requires_grad:
            where = self.names[-1] if self.names else "the model"
            rule = MEAN_FIELD.get(name)
            if rule is not None and rule.mean_field == "refuse":
                raise ValueError(f"mean_field has no Gaussian rule for {name} (at {where}); "
                                 f"supported: {', '.join(sorted(GATED))}")
            if rule is not None and rule.mean_field == "clean":
                self.clean_kept.add(f"{name} (at {where})")
            if name == "batch_norm" and (args[5:6] == (True,) or kwargs.get("training")):
                self.clean_kept.add(f"batch_norm with batch statistics (at {where})")
        if name not in GATED or not isinstance(first, Tensor):
            return func(*args, **kwargs)
        if self.phase == "survey":
            return self._survey(func, name, args, kwargs)
        known = self.calls[self.call] if self.call < len(self.calls) else None
        self.call += 1
        site = known[1] if known is not None else None
        if known is None or known[0] != name or (
                site is not None and first.shape[1:] != site.shape[1:]):
            raise RuntimeError("mean_field: the model ran different activations on the noisy "
                               "copies than on the clean input (data-dependent control flow?)")
        if site is None or (self.phase == "gate" and not first.requires_grad):
            return func(*args, **kwargs)
        if self.phase == "collect":
            self._collect(site, first)
            return func(*args, **kwargs)
        _, inplace = _bind(name, args, kwargs)
        out = Gated.apply(  # type: ignore[no-untyped-call]
            first, lambda t: func(t.clone(), *args[1:], **kwargs), site)
        return first.copy_(out) if inplace else out

    def _survey(self, func: Any, name: str, args: tuple[Any, ...], kwargs: Any) -> Any:
        first: Tensor = args[0]
        if not first.requires_grad:  # not on the input's path: nothing to gate
            self.calls.append((name, None))
            return func(*args, **kwargs)
        where = self.names[-1] if self.names else "the model"
        if first.dim() == 0 or first.shape[0] != self.rows:
            raise ValueError(f"mean_field: {name} at {where} acts on a tensor of shape "
                             f"{tuple(first.shape)} whose first dimension is not the batch")
        rule = _rule(name, args, kwargs, where)
        site = Site(name, where, rule, first.shape)
        self.sites.append(site)
        self.calls.append((name, site))
        return func(*args, **kwargs)

    def _collect(self, site: Site, z: Tensor) -> None:
        assert self.indices is not None
        count, groups = len(self.indices), self.groups
        values = z.detach().reshape(count, *site.shape).float()
        terms = [site.rule.derivative(values)] if self.empirical else [values, values.square()]
        if site.sums is None:
            site.sums = values.new_zeros((len(terms), groups, *site.shape))
        for sums, term in zip(site.sums, terms, strict=True):
            if count % groups == 0 and self.indices[0] % groups == 0:  # one op: k % G = row % G
                sums += term.view(count // groups, groups, *site.shape).sum(dim=0)
            else:
                for row, index in enumerate(self.indices):
                    sums[index % groups] += term[row]


class Gated(torch.autograd.Function):
    """y = f(x) forward; backward multiplies the upstream gradient by the site's gate."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], site: Site) -> Tensor:
        ctx.site = site
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        gate = ctx.site.gate  # read at backward time: one graph serves every gate set
        return grad * gate.to(grad.dtype), None, None


@contextmanager
def module_names(model: nn.Module) -> Iterator[list[str]]:
    """A stack of the qualified names of the modules running now (for error messages)."""
    stack: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: stack.append(name or "the model")

    def leave(*_: Any) -> None:
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()
