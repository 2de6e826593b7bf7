"""Noise at a layer: read a module's output, or replace it, for one forward pass.

A transformer cannot be explained through its token ids (integers have no gradient), so the
noise goes where the ids become vectors: the input embedding layer. `captured` records what
a layer returns; `substituted` makes it return a given tensor instead (the noisy copies), so
gradients flow to that tensor. Padding never gets noise: `sequence_normal` draws the noise of
the j-th *real* position of an example from (seed, sample, j) only, so a sentence gets the
same noise padded to 8 or 64 tokens, alone or in a batch with a longer one.

Example:
    >>> import torch
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    >>> ids = torch.tensor([[1, 2]])
    >>> with captured(model[0]) as seen:
    ...     _ = model(ids)
    >>> seen[0].shape
    torch.Size([1, 2, 4])
    >>> with substituted(model[0], torch.zeros(1, 2, 4)):
    ...     torch.equal(model(ids), model[2].bias[None])
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["BLOCK", "captured", "check_layer", "check_mask", "masked_range",
           "sequence_normal", "substituted"]

BLOCK = 16
"""Positions per noise draw: the noise of real position j comes from draw j // BLOCK."""


def check_layer(model: nn.Module, layer: object) -> nn.Module:
    """`layer` itself, after checking that it is a module inside `model`."""
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module inside the model, "
                        f"not {type(layer).__name__}")
    if not any(module is layer for module in model.modules()):
        raise ValueError(f"layer ({type(layer).__name__}) is not a submodule of the model "
                         f"({type(model).__name__}); pass one of model.modules(), e.g. "
                         "model.get_input_embeddings() for a Hugging Face model")
    return layer


@contextmanager
def captured(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the tensor `layer` returns on each call made inside the block."""
    seen: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        seen.append(_tensor_output(module, output))

    handle = layer.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def substituted(layer: nn.Module, value: Tensor) -> Iterator[None]:
    """Inside the block, `layer` returns `value` instead of its own output (once per pass)."""
    calls = 0

    def hook(module: nn.Module, args: Any, output: Any) -> Tensor:
        nonlocal calls
        calls += 1
        own = _tensor_output(module, output)
        if calls > 1:
            raise ValueError(f"layer ({type(module).__name__}) runs more than once per forward "
                             "pass; choose a module the model calls once")
        if own.shape != value.shape:
            raise ValueError(f"layer output is {tuple(own.shape)} but the noisy copies are "
                             f"{tuple(value.shape)}; the layer's output must have one row "
                             "per example")
        return value

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if calls == 0:
        raise ValueError(f"layer ({type(layer).__name__}) was not called by the model's "
                         "forward pass")


def _tensor_output(module: nn.Module, output: Any) -> Tensor:
    if not isinstance(output, Tensor) or not output.dtype.is_floating_point:
        got = output.dtype if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"layer ({type(module).__name__}) must return a floating-point "
                         f"tensor to be noised, it returned {got}")
    return output


def check_mask(mask: object, shape: Sequence[int], name: str = "noise_mask") -> Tensor:
    """A (N, T) bool mask of real positions for a tensor shaped (N, T, ...)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor of 0/1 or bools, not {type(mask).__name__}")
    if len(shape) < 2 or tuple(mask.shape) != tuple(shape[:2]):
        raise ValueError(f"{name} must be shaped (N, T) = {tuple(shape[:2])} like the noised "
                         f"tensor's first two dimensions {tuple(shape)}, "
                         f"got {tuple(mask.shape)}")
    if mask.dtype.is_floating_point and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1")
    return mask.bool()


def masked_range(z: Tensor, mask: Tensor) -> Tensor:
    """max − min of each example of z (N, T, ...) over its real positions only, shape (N,)."""
    keep = mask.reshape(*mask.shape, *([1] * (z.dim() - 2))).expand_as(z).flatten(1)
    flat = z.flatten(1)
    top = flat.masked_fill(~keep, -math.inf).amax(dim=1)
    bottom = flat.masked_fill(~keep, math.inf).amin(dim=1)
    return torch.where(keep.any(dim=1), top - bottom, torch.zeros_like(top))


def sequence_normal(
    seed: int,
    indices: Sequence[int],
    mask: Tensor,
    feature_shape: Sequence[int],
    *,
    antithetic: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard-normal noise shaped (len(indices), N, T, *feature_shape), zero at padding
    (N is 1, to broadcast, when `mask` has no padding).

    The noise of example i's j-th real position (in the order of `mask[i]`) in sample k
    depends only on (seed, k, j): draw `j // BLOCK` of sample k is generated from its own
    seed, so neither the padding, the batch nor the sequence length changes it.
    """
    device = mask.device
    longest = int(mask.sum(dim=1).max()) if mask.numel() else 0
    blocks = max(1, -(-longest // BLOCK))
    generator = torch.Generator(device=device)
    by_ordinal = torch.empty((len(indices), blocks * BLOCK, *feature_shape), device=device)
    for row, index in enumerate(indices):
        base = index - index % 2 if antithetic else index
        for block in range(blocks):
            state = np.random.SeedSequence([seed, base, 1 + block]).generate_state(1, np.uint64)
            generator.manual_seed(int(state[0]))
            torch.randn((BLOCK, *feature_shape), generator=generator, device=device,
                        out=by_ordinal[row, block * BLOCK:(block + 1) * BLOCK])
        if antithetic and index % 2:
            by_ordinal[row].neg_()
    by_ordinal = by_ordinal.to(dtype)  # (count, blocks * BLOCK, *feature)
    if bool(mask.all()):  # no padding: every example gets the same draw, broadcast
        return by_ordinal[:, None, : mask.shape[1]]
    ordinal = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    noise = by_ordinal[:, ordinal]  # (count, N, T, *feature)
    return noise * mask.reshape(1, *mask.shape, *([1] * len(feature_shape))).to(dtype)
