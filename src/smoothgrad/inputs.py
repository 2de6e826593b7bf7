"""What the engine noises and explains when a model takes more than one floating tensor.

The engine's loop works on one floating tensor `(N, ...)`. A `Subject` turns the richer
calls into that form and back:

- several inputs `x = (image, table, ids)`: the floating ones are flattened side by side into
  one `(N, F)` tensor (σ per input and per example, or per feature); integer and bool inputs
  are passed through untouched, never noised or cast;
- `forward_kwargs`: a tensor whose first dimension is N travels with the noisy copies of its
  example (attention masks, token type ids); anything else is passed as is;
- `layer=`: the explained tensor is that module's clean output (a transformer's embeddings);
  the noisy copies replace it during the forward pass and are what is attributed. Padding
  (`noise_mask`, else `forward_kwargs["attention_mask"]`) gets no noise and zero attribution,
  and σ is taken over the real positions of each example only;
- the output is picked with `smoothgrad.outputs.pick` (tensor, tuple, dict / `ModelOutput`).

The runner (`Subject.runner(part)`) is an `nn.Module` taking only the noisy batch, so every
base method, built-in or Captum, works unchanged. Its rows are `count` noisy copies of the
examples `part`, copy-major (row r belongs to example r mod len(part)), as the engine builds
them.

Example:
    >>> import torch
    >>> class TwoInputs(torch.nn.Module):
    ...     def forward(self, image, ids):
    ...         return image.flatten(1)[:, :2] * ids.float()
    >>> subject = prepare(TwoInputs(), (torch.ones(3, 1, 2, 2), torch.ones(3, 2, dtype=torch.long)))
    >>> subject.explained.shape, subject.runner(slice(0, 3))(subject.explained.repeat(2, 1)).shape
    (torch.Size([3, 4]), torch.Size([6, 2]))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.layers import (
    captured,
    check_layer,
    check_mask,
    masked_range,
    sequence_normal,
    substituted,
)
from smoothgrad.noise import checked_sigma, example_range, noise_scale
from smoothgrad.outputs import OutputFn, check_output_fn, pick

__all__ = ["INPUT_FIELDS", "Inputs", "Subject", "bind", "examples", "layer_output", "per_rows",
           "prepare", "repeat_rows"]

Stdev = float | Tensor | Sequence[float | Tensor]


@dataclass(frozen=True)
class Subject:
    """One call's model, inputs and options in the one-tensor form the engine explains."""

    model: nn.Module
    inputs: tuple[Tensor, ...]
    kwargs: Mapping[str, Any]
    layer: nn.Module | None
    output_fn: OutputFn | None
    floating: tuple[int, ...]
    mask: Tensor | None
    explained: Tensor
    several: bool
    shapes: tuple[torch.Size, ...] = field(default=())
    direct: bool = False
    clean: Tensor | None = None
    """The model's scores on the clean inputs when preparing already computed them."""

    @property
    def n(self) -> int:
        return self.explained.shape[0]

    def runner(self, part: slice | None = None) -> nn.Module:
        """The model as a function of the noisy copies of the examples `part` (all: None);
        the model itself for a plain call (one floating x, nothing else)."""
        return self.model if self.direct else _Runner(self, part or slice(0, self.n))

    def wrapped(self) -> Subject:
        """This subject explained through the wrapper (for a model whose output is not a
        tensor, found out from the clean pass)."""
        return dataclasses.replace(self, direct=False)

    def at_layer(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options with integer baselines (token ids, e.g. all [PAD]) replaced by the layer's
        output for them, when noise is at a layer."""
        ids = self.inputs[0]
        converted = dict(options)
        for key, value in options.items():
            if (self.layer is not None and isinstance(value, Tensor) and key.startswith("baseline")
                    and not value.dtype.is_floating_point and value.dim() == ids.dim()):
                baseline = (value.to(ids.device).expand_as(ids), *self.inputs[1:])
                converted[key] = layer_output(self.model, self.layer, baseline, self.kwargs)
        return converted

    def shown(self, sigma: Tensor) -> tuple[Any, Any]:
        """What the result reports as `inputs` and `sigma`, in the caller's form."""
        if self.layer is not None:
            return self.explained, sigma
        if not self.several:
            return self.inputs[0], sigma
        floats = tuple(self.inputs[i] for i in self.floating)
        parts = self.unpack(sigma)
        assert isinstance(parts, tuple)
        return floats, tuple(_per_example_if_uniform(part) for part in parts)

    def unpack(self, value: Tensor) -> Tensor | tuple[Tensor, ...]:
        """A tensor shaped like `explained` back in the caller's form (a tuple if several)."""
        if not self.several:
            return value
        sizes = [math.prod(shape) for shape in self.shapes]
        return tuple(piece.reshape(value.shape[0], *shape)
                     for piece, shape in zip(torch.split(value, sizes, dim=1), self.shapes,
                                                 strict=True))

    def pack(self, values: Sequence[Tensor], name: str) -> Tensor:
        """One tensor per floating input (each (N, ...) or one example) -> (N or 1, F)."""
        if len(values) != len(self.shapes):
            raise ValueError(f"{name} must hold one entry per floating input "
                             f"({len(self.shapes)}), got {len(values)}")
        flat = [_per_example(value, shape, name).flatten(1)
                for value, shape in zip(values, self.shapes, strict=True)]
        rows = max(piece.shape[0] for piece in flat)
        return torch.cat([piece.expand(rows, -1) for piece in flat], dim=1)

    def noise(self, seed: int, indices: Sequence[int], part: slice, *,
              antithetic: bool = False) -> Tensor | None:
        """Per-example noise (count, len(part), ...) when padding is masked, else None."""
        if self.mask is None:
            return None
        return sequence_normal(seed, indices, self.mask[part], self.explained.shape[2:],
                               antithetic=antithetic, dtype=self.explained.dtype)

    def keep(self, part: slice) -> Tensor | None:
        """1 at real positions, 0 at padding, shaped to multiply (len(part), T, ...); None
        without padding."""
        if self.mask is None or bool(self.mask[part].all()):
            return None
        mask = self.mask[part]
        return mask.reshape(*mask.shape, *([1] * (self.explained.dim() - 2))).to(
            self.explained.dtype)

    def sigma(self, noise: float, stdev: Stdev | None,
              noise_range: Tensor | Sequence[Tensor] | None = None) -> Tensor:
        """σ for `explained`: (N,) per example, or (N, ...) per feature."""
        if stdev is not None and noise_range is not None:
            raise ValueError("give either stdev (absolute) or noise_range (relative), not both")
        if self.several:
            return self._several_sigma(noise, stdev, noise_range)
        x = self.explained
        if stdev is not None:
            return _absolute(_one(stdev, "stdev"), x, "stdev")
        if noise_range is not None:
            return noise * _absolute(_one(noise_range, "noise_range"), x, "noise_range")
        spread = masked_range(x, self.mask) if self.mask is not None else example_range(x)
        return spread * noise

    def _several_sigma(self, noise: float, stdev: Stdev | None,
                       noise_range: Tensor | Sequence[Tensor] | None) -> Tensor:
        name, given = ("stdev", stdev) if stdev is not None else ("noise_range", noise_range)
        floats = [self.inputs[i] for i in self.floating]
        if given is None:
            per_input = [noise * example_range(x) for x in floats]
        else:
            values = list(given) if isinstance(given, Sequence) else [given] * len(floats)
            if len(values) != len(floats):
                raise ValueError(f"{name} must be one value or one per floating input "
                                 f"({len(floats)}), got {len(values)}")
            scale = 1.0 if stdev is not None else noise
            per_input = [scale * _absolute(value, x, name)
                         for value, x in zip(values, floats, strict=True)]
        widened = [s.reshape(-1, *([1] * len(shape))).expand(self.n, *shape)
                   if s.dim() == 1 else s for s, shape in zip(per_input, self.shapes, strict=True)]
        return self.pack(widened, name)


class _Runner(nn.Module):
    """The user's model as a function of one noisy batch (see `Subject.runner`)."""

    def __init__(self, subject: Subject, part: slice) -> None:
        super().__init__()
        self.inner = subject.model
        self.wrapped_model = subject.model  # Captum's forward function becomes this wrapper
        self.subject = subject
        self.part = part

    def forward(self, batch: Tensor) -> Tensor:
        subject, part = self.subject, self.part
        size = len(range(*part.indices(subject.n)))
        if batch.shape[0] % size:
            raise ValueError(f"the model was called on {batch.shape[0]} rows, not a multiple "
                             f"of the {size} examples explained; base methods must keep "
                             "whole groups of noisy copies together")
        copies = batch.shape[0] // size
        args = [repeat_rows(x[part], copies) for x in subject.inputs]
        kwargs = {key: per_rows(value, subject.n, part, copies)
                  for key, value in subject.kwargs.items()}
        if subject.layer is not None:
            with substituted(subject.layer, batch):
                return pick(self.inner(*args, **kwargs), subject.output_fn)
        noisy = subject.unpack(batch)
        for i, value in zip(subject.floating,
                            noisy if isinstance(noisy, tuple) else (noisy,), strict=True):
            args[i] = value
        return pick(self.inner(*args, **kwargs), subject.output_fn)


def repeat_rows(value: Tensor, copies: int) -> Tensor:
    """`copies` copies of the rows of `value`, copy-major (as the noisy batches are built)."""
    return value if copies == 1 else value.repeat(copies, *([1] * (value.dim() - 1)))


def per_rows(value: Any, n: int, part: slice, copies: int) -> Any:
    """A per-example tensor (first dimension n) for the noisy copies of `part`; else as is."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return repeat_rows(value[part], copies)
    return value


def prepare(
    model: nn.Module,
    x: Tensor | Sequence[Tensor],
    *,
    forward_kwargs: Mapping[str, Any] | None = None,
    layer: nn.Module | None = None,
    noise_mask: Tensor | None = None,
    output: OutputFn | None = None,
) -> Subject:
    """Check a call's inputs and options and build its `Subject`."""
    several = not isinstance(x, Tensor)
    inputs = _check_inputs(x)
    kwargs = dict(forward_kwargs or {})
    if not all(isinstance(key, str) for key in kwargs):
        raise TypeError("forward_kwargs must be a dict with str keys")
    output = check_output_fn(output)
    if layer is not None:
        layer = check_layer(model, layer)
        _check_ids(inputs, layer)
        explained, clean = _layer_pass(model, layer, inputs, kwargs)
        mask = noise_mask if noise_mask is not None else kwargs.get("attention_mask")
        name = "noise_mask" if noise_mask is not None else "forward_kwargs['attention_mask']"
        if mask is None:
            mask = torch.ones(explained.shape[:2], dtype=torch.bool, device=explained.device)
        return Subject(model, inputs, kwargs, layer, output, (), check_mask(
            mask, explained.shape, name).to(explained.device), explained, several=False,
            clean=pick(clean, output))
    floating = tuple(i for i, t in enumerate(inputs) if t.dtype.is_floating_point)
    if not floating:
        raise TypeError("x has no floating-point tensor to noise; pass layer=the embedding "
                        "layer to explain integer inputs such as token ids")
    shapes = tuple(inputs[i].shape[1:] for i in floating)
    explained = (torch.cat([inputs[i].flatten(1) for i in floating], dim=1) if several
                 else inputs[0])
    if noise_mask is not None and several:
        raise ValueError("noise_mask needs one noised tensor (N, T, ...): pass layer= or a "
                         "single x")
    mask = None if noise_mask is None else check_mask(noise_mask, explained.shape).to(
        explained.device)
    direct = not several and not kwargs and output is None and mask is None
    return Subject(model, inputs, kwargs, None, output, floating, mask, explained,
                   several=several, shapes=shapes, direct=direct)


def layer_output(model: nn.Module, layer: nn.Module, inputs: Sequence[Tensor],
                 kwargs: Mapping[str, Any]) -> Tensor:
    """The clean output of `layer` when `model(*inputs, **kwargs)` runs (detached)."""
    return _layer_pass(model, layer, inputs, kwargs)[0]


def _layer_pass(model: nn.Module, layer: nn.Module, inputs: Sequence[Tensor],
                kwargs: Mapping[str, Any]) -> tuple[Tensor, Any]:
    """(the layer's output, the model's output) of one clean forward pass."""
    with torch.no_grad(), captured(layer) as seen:
        output = model(*inputs, **kwargs)
    if not seen:
        raise ValueError(f"layer ({type(layer).__name__}) was not called by the model's "
                         "forward pass")
    if len(seen) > 1:
        raise ValueError(f"layer ({type(layer).__name__}) runs {len(seen)} times per forward "
                         "pass; choose a module the model calls once")
    if seen[0].dim() < 2 or seen[0].shape[0] != inputs[0].shape[0]:
        raise ValueError(f"layer output {tuple(seen[0].shape)} must have one row per example "
                         f"({inputs[0].shape[0]})")
    return seen[0].detach(), output


@dataclass(frozen=True)
class Inputs:
    """What a call's inputs are beyond one floating tensor x: `smooth(model, x,
    inputs=Inputs(...))`, or the same names as `smooth`'s keywords.

    - x may be a tuple of tensors: floating ones are noised (σ per input and example; stdev
      one number, one per floating input, or a tensor broadcastable to one example for a
      σ per feature), integer and bool ones pass through untouched. `attribution`, `stderr`,
      `sigma` and `inputs` are then tuples matching the floating inputs.
    - forward_kwargs: passed to the model; tensors with first dimension N travel with the
      noisy copies of their example (attention masks, token type ids).
    - layer: a module of the model (a transformer's input embeddings) whose output is
      noised and attributed instead of x; padding (noise_mask (N, T), else
      forward_kwargs["attention_mask"]) gets no noise and zero attribution, and σ is
      relative to each example's range over its real positions.
    - output: a callable picking the scores from the model's output; by default a tensor is
      used as is, a tuple/list gives its first element, a dict or `ModelOutput` its logits.
    - method_kwargs: options of the base method or of a Captum object (`baselines`,
      `sliding_window_shapes`, integrated gradients' `steps`, Grad-CAM's `layer`); a tensor
      with first dimension N is per example (IG/DeepLIFT baselines); at a layer an integer
      `baseline` (token ids, e.g. all [PAD]) stands for the layer output it gives.
    - noise_range: σ = noise · noise_range, a per-feature range broadcastable to one example
      (a tuple of them for several inputs) instead of each example's max − min.
    """

    forward_kwargs: Mapping[str, Any] | None = None
    layer: nn.Module | None = None
    noise_mask: Tensor | None = None
    output: OutputFn | None = None
    noise_range: Tensor | Sequence[Tensor] | None = None

    def given(self, loose: Mapping[str, Any]) -> Inputs:
        """These inputs with the fields in `loose` (keywords of `smooth`) set.

        Example:
            >>> Inputs(noise_range=torch.ones(3)).given({"forward_kwargs": {"a": 1}}).forward_kwargs
            {'a': 1}
        """
        return dataclasses.replace(self, **loose) if loose else self

    def plain(self, x: object) -> bool:
        """One tensor x noised itself: the engine's own input checks apply."""
        return isinstance(x, Tensor) and self.layer is None

    def prepare(self, model: nn.Module, x: Tensor | Sequence[Tensor]) -> Subject:
        return prepare(model, x, forward_kwargs=self.forward_kwargs, layer=self.layer,
                       noise_mask=self.noise_mask, output=self.output)

    def sigma(self, subject: Subject, x: Tensor, options: Any) -> Tensor:
        """σ of the call: `noise_scale` for one tensor and a number, else `Subject.sigma`."""
        stdev = options.stdev
        if (subject.mask is None and not subject.several and self.noise_range is None
                and not isinstance(stdev, Tensor | Sequence)):
            return noise_scale(x, options.noise, stdev)
        given = ("stdev" if stdev is not None else
                 f"noise={options.noise}" + (" with noise_range" if self.noise_range is not None
                                             else ""))
        return checked_sigma(subject.sigma(options.noise or 0.0, stdev, self.noise_range), given)


INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(Inputs))
"""`Inputs`' fields: the keywords of `smooth` that describe its inputs."""


def _per_example_if_uniform(sigma: Tensor) -> Tensor:
    """σ (N, ...) as (N,) when each example has one σ for all its features."""
    flat = sigma.flatten(1)
    return flat[:, 0] if bool((flat == flat[:, :1]).all()) else sigma


def examples(x: object) -> int:
    """N, the number of examples of x (a tensor or a tuple of them); -1 if x is malformed."""
    first = x[0] if isinstance(x, Sequence) and x else x
    return int(first.shape[0]) if isinstance(first, Tensor) and first.dim() > 0 else -1


def bind(explain: Any, options: Mapping[str, Any], n: int, part: slice, copies: int) -> Any:
    """`explain` with the per-call `options` cut to the rows of one pass (see `per_rows`)."""
    if not options:
        return explain
    return functools.partial(explain, **{key: per_rows(value, n, part, copies)
                                         for key, value in options.items()})


def _check_inputs(x: object) -> tuple[Tensor, ...]:
    inputs = (x,) if isinstance(x, Tensor) else tuple(x) if isinstance(x, Sequence) else None
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(f"x must be a torch.Tensor or a tuple of them, not {type(x).__name__}")
    n = inputs[0].shape[0] if inputs[0].dim() else 0
    for i, t in enumerate(inputs):
        if t.dim() < 1 or t.shape[0] != n or n == 0:
            raise ValueError(f"x[{i}] must be a non-empty batch with the same first dimension "
                             f"N={n} as x[0], got {tuple(t.shape)}")
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise ValueError(f"x[{i}] contains NaN or infinite values")
    return inputs


def _check_ids(inputs: Sequence[Tensor], layer: nn.Module) -> None:
    """An embedding layer needs integer ids: refuse a call whose inputs are all floating."""
    if any(isinstance(m, nn.Embedding) for m in layer.modules()) and all(
            t.dtype.is_floating_point for t in inputs):
        raise TypeError(f"x: token ids must be an integer tensor, got {inputs[0].dtype}; "
                        "the embedding layer's output is what gets noised")


def _per_example(value: Tensor, shape: torch.Size, name: str) -> Tensor:
    """`value` as (N or 1, *shape): given per example or as one example."""
    if value.dim() == len(shape) + 1 and tuple(value.shape[1:]) == tuple(shape):
        return value
    try:
        return value.expand(shape)[None]
    except RuntimeError:
        raise ValueError(f"{name} {tuple(value.shape)} must broadcast to one example "
                         f"{tuple(shape)} or be shaped (N, *{tuple(shape)})") from None


def _one(value: object, name: str) -> float | Tensor:
    if isinstance(value, Tensor | int | float):
        return value
    raise ValueError(f"{name} must be one number or tensor for a single x, "
                     f"not {type(value).__name__}")


def _absolute(value: float | Tensor, x: Tensor, name: str) -> Tensor:
    """A σ given as a number (per example) or a tensor broadcastable to one example."""
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point is False or not bool(torch.isfinite(value).all()) \
                or bool((value < 0).any()):
            raise ValueError(f"{name} must hold finite numbers >= 0")
        return _per_example(value.to(x), x.shape[1:], name).expand_as(x)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0 or a tensor, got {value!r}")
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)
