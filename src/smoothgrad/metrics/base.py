"""What the metric families share: score descriptions, targets, bounded forward passes, noise.

Every metric is batch-first (inputs ``(N, ...)``, per-example scores ``(N,)``), draws its
randomness from explicit seeds or ``torch.Generator`` objects, and runs the model in passes
of at most ``batch_size`` rows, so memory is bounded whatever its step or perturbation count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from smoothgrad import targets
from smoothgrad.maps import to_map

__all__ = [
    "DEFAULT_BATCH_SIZE", "ChannelSum", "Explainer", "Progress", "Score", "Target",
    "channel_map", "draw", "float_dtype", "resolve_target", "target_outputs", "unit_range",
]

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain(model, x, target) -> Tensor`` shaped like ``x``; ``target`` is ``(N,)`` long."""

ChannelSum = Literal["sum", "abs"]
"""How a metric sums an ``(N, C, H, W)`` map over channels: signed, or of absolute values."""

Target = Tensor | int | None

Progress = Callable[[int], None]
"""Called after each pass of a metric with the number of rows it forwarded."""

DEFAULT_BATCH_SIZE = 64
"""Rows per forward pass of a metric unless the caller gives ``batch_size``."""


@dataclass(frozen=True)
class Score:
    """One number a metric reports: its column key, short name, format and good direction.

    ``better`` is "higher", "lower" or None (a diagnostic with no good direction); tables
    take their arrows from it (``header``).
    """

    key: str
    name: str
    fmt: str
    better: Literal["higher", "lower"] | None = None

    @property
    def header(self) -> str:
        """``name`` with ↑ (higher is better) or ↓ (lower is better)."""
        return self.name + {"higher": "↑", "lower": "↓", None: ""}[self.better]


def float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def channel_map(attribution: Tensor, reduce: ChannelSum) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W)`` by (absolute) channel sum; ``(N, H, W)`` kept."""
    if reduce not in ("sum", "abs"):
        raise ValueError(f"reduce must be 'sum' or 'abs', got {reduce!r}")
    return to_map(attribution, activation="abs" if reduce == "abs" else "all")


def unit_range(m: Tensor) -> Tensor:
    """Min-max scale each example to [0, 1]; constant examples become 0."""
    flat = m.reshape(m.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    return ((flat - low) / torch.where(span > 0, span, 1.0)).view_as(m)


def resolve_target(model: nn.Module, x: Tensor, target: Target, *,
                   clean: Tensor | None = None) -> Tensor:
    """``None`` -> clean argmax; int or N ints -> LongTensor ``(N,)``, checked as `smooth` does.

    ``clean`` is the model's output for ``x`` when the caller has it (no forward pass then).
    """
    if clean is None:
        with torch.no_grad():
            clean = model(x)
    resolved = targets.resolve(target, clean)
    if not isinstance(resolved, Tensor):
        raise TypeError("metrics need class targets (None, an int or N ints), not a callable")
    return resolved


def target_outputs(model: nn.Module, x: Tensor, target: Tensor, batch_size: int | None, *,
                   softmax: bool, progress: Progress | None = None) -> Tensor:
    """Model output (logit or softmax probability) for ``target`` per row, in bounded passes."""
    step = batch_size or DEFAULT_BATCH_SIZE
    outputs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], step):
            out = model(x[i : i + step])
            if softmax:
                out = out.softmax(dim=1)
            outputs.append(out.gather(1, target[i : i + step, None]).squeeze(1))
            if progress is not None:
                progress(min(step, x.shape[0] - i))
    return torch.cat(outputs)


def draw(kind: Literal["normal", "uniform"], shape: tuple[int, ...],
         generator: torch.Generator | int, like: Tensor) -> Tensor:
    """Standard normal or U[0, 1) noise from ``generator`` (or a fresh CPU one seeded with it),
    moved to ``like``'s device and dtype; the values do not depend on ``like``'s device."""
    gen = (generator if isinstance(generator, torch.Generator)
           else torch.Generator().manual_seed(generator))
    sample = torch.randn if kind == "normal" else torch.rand
    noise = sample(shape, generator=gen, device=gen.device, dtype=float_dtype(like))
    return noise.to(like.device)
