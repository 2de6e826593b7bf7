"""The fast path: optimised copies of the model, checked against the original.

A copy shares every tensor of the model it does not change (so it costs the memory of what
it changes only) and leaves the model itself untouched. `optimize` folds every BatchNorm
that directly follows a convolution or linear layer into that layer's weights, stores 4-D
weights channels-last, and can run the reduced-precision operations (matrix products,
convolutions) in bfloat16/float16 under `torch.autocast`, with their weights cast once when
the copy is made. Every step is checked on an example: the report gives the largest logit
error and the correlation of the copy's input gradient with the original's, and a copy below
`min_correlation` is refused (`FastPathError`).

`smooth(..., fast=True)` uses `fast_subjects`: the same copies for any input the engine
takes (several inputs, forward kwargs, noise at a layer, dict/`ModelOutput` outputs), kept
while the model's parameters and buffers are unchanged. The float32 copy is the model itself
when there is nothing to fold (a transformer), so its maps are bit-identical to
`fast=False`; whether the reduced-precision copy is used is decided per call by
`smoothgrad.precision`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
    ...                       nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    >>> fast = optimize(model, torch.randn(1, 3, 8, 8))
    >>> fast.report.folded, fast.report.map_correlation > 0.999
    (1, True)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import weakref
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.folding import NORMS, fold_batchnorm
from smoothgrad.guard import explaining
from smoothgrad.inputs import Subject, prepare
from smoothgrad.outputs import pick
from smoothgrad.precision import REMEMBER_BELOW, Precision, pearson
from smoothgrad.targets import Resolved, score

__all__ = [
    "FastModel", "FastPathError", "FastReport", "FastSubjects", "cached_copy",
    "fast_subjects", "fold_batchnorm", "optimize", "reduced_copy", "remember",
]

_REDUCED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
            nn.ConvTranspose2d, nn.ConvTranspose3d)
"""Layers whose operation autocast runs in the reduced precision: their weights are cast
once. (transformers' `Conv1D`, a linear layer, is recognised by name.)"""


class FastPathError(RuntimeError):
    """The optimised copy does not reproduce the model closely enough to be used."""


@dataclass(frozen=True)
class FastReport:
    """What `optimize` did and how far the copy is from the original on the checked input.

    folded: BatchNorm layers folded into the layer before them. channels_last: 4-D weights
    and inputs in NHWC. dtype: the precision of its matrix products and convolutions.
    compiled: wrapped in torch.compile. logit_error: max |copy − original| over the outputs,
    relative to max |original|. map_correlation: Pearson correlation of the copy's input
    gradient with the original's (for the explained class of each example, all examples
    pooled). A copy that changes nothing is not measured: 0.0 and 1.0.
    """

    folded: int
    channels_last: bool
    dtype: torch.dtype
    compiled: bool
    logit_error: float
    map_correlation: float


class FastModel(nn.Module):
    """The optimised copy: takes what the model takes (4-D inputs made channels-last), runs
    under autocast when its dtype is reduced, and returns floating outputs in the inputs'
    dtype (tensors, and tensors in dicts/`ModelOutput`s, tuples and lists)."""

    report: FastReport

    def __init__(self, inner: nn.Module, *, channels_last: bool, dtype: torch.dtype,
                 device_type: str = "cpu", compiled: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.channels_last = channels_last
        self.dtype = dtype
        self.device_type = device_type
        self._compiled = compiled

    @property
    def reduced(self) -> bool:
        """Whether matrix products and convolutions run below float32."""
        return self.dtype not in (torch.float32, torch.float64)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        floating = next((arg.dtype for arg in args
                         if isinstance(arg, Tensor) and arg.is_floating_point()), torch.float32)
        if self.channels_last:
            args = tuple(arg.contiguous(memory_format=torch.channels_last)
                         if isinstance(arg, Tensor) and arg.dim() == 4 else arg for arg in args)
        net = self.inner if self._compiled is None else self._compiled
        if not self.reduced:
            return net(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            output = net(*args, **kwargs)
        return _widened(output, floating)


def _widened(output: Any, dtype: torch.dtype) -> Any:
    """`output` with its floating tensors (also inside dicts, tuples, lists) in `dtype`."""
    if isinstance(output, Tensor):
        return output.to(dtype) if output.is_floating_point() else output
    if isinstance(output, dict):  # a ModelOutput is one
        return type(output)(**{key: _widened(value, dtype) for key, value in output.items()})
    if type(output) in (tuple, list):
        return type(output)(_widened(value, dtype) for value in output)
    return output


def _sharing_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode that shares its parameters and buffers (the copy
    replaces, never writes, the tensors it changes)."""
    shared: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, shared).eval()


def _convert(model: nn.Module, *, channels_last: bool, dtype: torch.dtype | None) -> None:
    """Give `model`'s modules new parameters: 4-D ones channels-last, and those of layers in
    `_REDUCED` in `dtype` (None: kept). Parameters tied between modules stay tied."""
    made: dict[tuple[int, bool], nn.Parameter] = {}
    for module in model.modules():
        cast = dtype is not None and (isinstance(module, _REDUCED)
                                      or type(module).__name__ == "Conv1D")
        for name, param in list(module.named_parameters(recurse=False)):
            key = (id(param), cast)
            if key not in made:
                value = param.detach()
                if channels_last and value.dim() == 4:
                    value = value.contiguous(memory_format=torch.channels_last)
                if cast and value.is_floating_point():
                    value = value.to(dtype)
                made[key] = param if value.dtype == param.dtype and (
                    value.stride() == param.stride()) else nn.Parameter(value, False)
            setattr(module, name, made[key])


def _attention(model: nn.Module, device_type: str) -> None:
    """Switch Hugging Face models inside `model` between eager attention and SDPA to the one
    measured faster in a reduced precision: eager on CPUs (BERT-base's bfloat16 passes of
    input gradients were 1.19× faster at 128 tokens and 1.11× at 512 than with SDPA's CPU
    flash kernel, whose backward pass dominated; BENCHMARKS.md), SDPA elsewhere. Only a
    copy's own config is changed, never the caller's; other implementations stay."""
    wanted = "eager" if device_type == "cpu" else "sdpa"
    for module in model.modules():
        config = getattr(module, "config", None)
        setter = getattr(module, "set_attn_implementation", None)
        current = getattr(config, "_attn_implementation", None)
        if callable(setter) and current in ("eager", "sdpa") and current != wanted:
            with contextlib.suppress(ValueError, ImportError, NotImplementedError):
                setter(wanted)  # an architecture without that path keeps its own


def _named(model: nn.Module, layer: nn.Module | None) -> str | None:
    if layer is None:
        return None
    return next(str(name) for name, module in model.named_modules() if module is layer)


def _build(model: nn.Module, subject: Subject, *, fold: bool, channels_last: bool,
           dtype: torch.dtype, compile: bool | str = False) -> tuple[FastModel, int]:
    """The optimised copy of `model` for `subject` (whose model is `model`), and how many
    BatchNorms it folded."""
    inner = _sharing_copy(model)
    folded = 0
    if fold and any(isinstance(module, NORMS) for module in model.modules()):
        name = _named(model, subject.layer)
        layer = None if name is None else inner.get_submodule(name)
        copied = dataclasses.replace(subject, model=inner, layer=layer)
        folded = fold_batchnorm(inner, subject.explained, call=copied.runner(), keep=(
            () if layer is None else (layer,)))
    reduced = dtype not in (torch.float32, torch.float64)
    _convert(inner, channels_last=channels_last, dtype=dtype if reduced else None)
    if reduced:
        _attention(inner, subject.explained.device.type)  # as reduced_copy
    compiled = None
    if compile:
        compiled = torch.compile(inner, mode=compile if isinstance(compile, str) else None)
    fast = FastModel(inner, channels_last=channels_last, dtype=dtype,
                     device_type=subject.explained.device.type, compiled=compiled).eval()
    return fast, folded


def optimize(
    model: nn.Module,
    example: Tensor,
    *,
    fold: bool = True,
    channels_last: bool | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    target: Resolved | None = None,
    min_correlation: float | None = None,
) -> FastModel:
    """An optimised copy of `model`, checked on `example` against the original.

    - fold: fold BatchNorm into the conv/linear layer before it (`fold_batchnorm`).
    - channels_last: NHWC weights and inputs; by default on for 4-D inputs.
    - dtype: precision of the copy's matrix products and convolutions (autocast, weights
      cast once); float32 by default, bfloat16/float16 are lossy.
    - compile: wrap the copy in `torch.compile` (a string names its mode, such as
      "max-autotune"). The first calls are slow; the autograd graph is then
      opaque, so guided backprop and DeepLIFT see no rectifiers: use it for gradients and
      integrated gradients).
    - target: classes (or a score callable) whose input gradients are compared; the
      original's argmax by default.
    - min_correlation: the gradient correlation below which the copy is refused; 0.999 for
      float32 and 0.99 for lower precision by default.

    The copy is in eval mode with frozen parameters; `.report` says what was done and how
    closely it matches. A float copy whose logits differ by more than 1e-3 (relative) is
    refused too: a fold that changed the function, not just its rounding.
    """
    dtype = dtype or example.dtype
    channels_last = example.dim() == 4 if channels_last is None else channels_last
    with explaining(model):
        fast, folded = _build(model, prepare(model, example), fold=fold,
                              channels_last=channels_last, dtype=dtype, compile=compile)
        logit_error, correlation = _compare(model, fast, example, target)
    exact = not fast.reduced
    limit = min_correlation if min_correlation is not None else 0.999 if exact else 0.99
    fast.report = FastReport(folded=folded, channels_last=channels_last, dtype=dtype,
                             compiled=bool(compile), logit_error=logit_error,
                             map_correlation=correlation)
    _check(fast.report, limit, exact)
    return fast


def _check(report: FastReport, limit: float, exact: bool) -> None:
    if not report.map_correlation >= limit or (exact and not report.logit_error <= 1e-3):
        raise FastPathError(
            f"the optimised copy's gradients correlate {report.map_correlation:.4f} with the "
            f"original's (required {limit}) and its logits differ by "
            f"{report.logit_error:.2e} (relative). Use a wider dtype or fold=False")


def _compare(reference: nn.Module, fast: nn.Module, example: Tensor,
             target: Resolved | None) -> tuple[float, float]:
    with torch.no_grad():
        ref_out = pick(reference(example))
        fast_out = pick(fast(example))
    logit_error = float((fast_out - ref_out).abs().max() / ref_out.abs().max().clamp(min=1e-30))
    if target is None:
        target = ref_out.argmax(dim=1)
    grads = []
    for net in (reference, fast):
        leaf = example.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = pick(net(leaf))
            (grad,) = torch.autograd.grad(score(out, target).sum(), leaf)
        grads.append(grad.double().flatten())
    return logit_error, pearson(grads[0], grads[1])


@dataclass
class _Copies:
    """The copies kept for one model: float32 (`changed`: it differs from the model) and
    any reduced precision made so far."""

    key: tuple[Any, ...]
    full: FastModel
    changed: bool
    refused: dict[torch.dtype, Precision] = field(default_factory=dict)


_CACHE: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module, subject: Subject) -> tuple[Any, ...]:
    """What the copies depend on: the model's tensors (same storage, no in-place update),
    the layer, and the input's device and dtype — and its shape when BatchNorms may fold,
    since the pairs are found on a pass over it."""
    example = subject.explained
    tensors = [*model.parameters(), *model.buffers()]
    shape = tuple(example.shape[1:]) if any(
        isinstance(module, NORMS) for module in model.modules()) else example.dim()
    return (example.device, example.dtype, shape, _named(model, subject.layer),
            tuple((t.data_ptr(), t._version) for t in tensors))


def _copies(model: nn.Module, subject: Subject, target: Resolved | None,
            kept: MutableMapping[nn.Module, Any]) -> _Copies:
    """The float32 copy for `subject` (kept per model in `kept`; checked against the model
    when it changed anything)."""
    key = _fingerprint(model, subject)
    cached = kept.get(model)
    if isinstance(cached, _Copies) and cached.key == key:
        return cached
    example = subject.explained
    channels_last = example.dim() == 4 or any(
        subject.inputs[i].dim() == 4 for i in subject.floating)
    full, folded = _build(model, subject, fold=True, channels_last=channels_last,
                          dtype=example.dtype)
    changed = folded > 0 or channels_last
    logit_error, correlation = 0.0, 1.0
    if changed:
        logit_error, correlation = _compare(subject.runner(), _subject(subject, full).runner(),
                                            example, target)
    full.report = FastReport(folded=folded, channels_last=channels_last, dtype=example.dtype,
                             compiled=False, logit_error=logit_error,
                             map_correlation=correlation)
    _check(full.report, 0.999, exact=True)
    copies = kept[model] = _Copies(key, full, changed)
    return copies


def _subject(subject: Subject, fast: FastModel) -> Subject:
    """`subject` explained through `fast` (its layer the copy's own)."""
    name = _named(subject.model, subject.layer)
    return dataclasses.replace(subject, model=fast, layer=None if name is None else (
        fast.inner.get_submodule(name)))


@dataclass(frozen=True)
class FastSubjects:
    """What `smooth(fast=True)` can explain: `full`, in the model's precision (the model
    itself when the copy would change nothing), and `reduced`, in a lower one (None when not
    asked for). `report` is the float32 copy's."""

    full: Subject
    reduced: Subject | None
    report: FastReport
    refused: Precision | None = None
    """A refusal of `reduced` remembered for this model (see `remember`): do not check."""


def fast_subjects(model: nn.Module, subject: Subject, target: Resolved | None = None,
                  reduced: torch.dtype | None = None, *,
                  kept: MutableMapping[nn.Module, Any] | None = None) -> FastSubjects:
    """The optimised copies of `subject`'s model (which must be `model`), as subjects.

    Call it under `guard.explaining(model)`. The copies are kept for the model while its
    parameters and buffers are unchanged; the reduced one is the float32 one with its
    matrix products and convolutions in `reduced` (attention as `_attention` chooses).
    `kept`: where the copies are kept (an explainer's own; None: the process-wide cache).
    """
    copies = _copies(model, subject, target, _CACHE if kept is None else kept)
    full = _subject(subject, copies.full) if copies.changed else subject
    if reduced is None or reduced in copies.refused:
        return FastSubjects(full, None, copies.full.report,
                            None if reduced is None else copies.refused[reduced])
    lower = reduced_copy(copies.full.inner if copies.changed else model, reduced,
                         channels_last=copies.full.channels_last)
    return FastSubjects(full, _subject(subject, lower), copies.full.report)


_LOWER: weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[Any, FastModel]]] = (
    weakref.WeakKeyDictionary())


def reduced_copy(model: nn.Module, dtype: torch.dtype, *,
                 channels_last: bool = False) -> FastModel:
    """`model` with its matrix products and convolutions in `dtype` (their weights cast once,
    the rest of its tensors shared; eager attention on CPUs, SDPA elsewhere), kept while the
    model's tensors are unchanged.

    For a loop of one's own (the generation path): explain the same noisy copies through
    `model` and through the copy — its modules have the model's names,
    `copy.inner.get_submodule(name)` — and let `smoothgrad.precision.decide` choose.
    """
    device = next((param.device.type for param in model.parameters()), "cpu")
    key = (device, tuple((t.data_ptr(), t._version) for t in model.parameters()))
    kept = _LOWER.setdefault(model, {})
    if (dtype, channels_last) not in kept or kept[dtype, channels_last][0] != key:
        inner = _sharing_copy(model)
        _convert(inner, channels_last=channels_last, dtype=dtype)
        _attention(inner, device)
        kept[dtype, channels_last] = key, FastModel(
            inner, channels_last=channels_last, dtype=dtype, device_type=device).eval()
    return kept[dtype, channels_last][1]


def remember(model: nn.Module, dtype: torch.dtype, decision: Precision,
             kept: MutableMapping[nn.Module, Any] | None = None) -> None:
    """Keep a refusal of `dtype` whose map correlation is far below the bar (under
    `precision.REMEMBER_BELOW`) with the model's copies (in `kept`, else the process-wide
    cache): later calls with the same copies run float32 without checking again
    (EfficientNet-Lite0's bfloat16 maps correlate ~0.92)."""
    copies = (_CACHE if kept is None else kept).get(model)
    if (copies is not None and decision.correlation is not None
            and decision.correlation < REMEMBER_BELOW):
        copies.refused[dtype] = dataclasses.replace(
            decision, decision=f"{decision.decision} (checked on an earlier call with this "
                               "model; not checked again)")


def cached_copy(model: nn.Module, example: Tensor,
                target: Resolved | None = None) -> FastModel:
    """The float32 optimised copy of `model` for inputs like `example` (one tensor), kept
    while the model's parameters and buffers are unchanged."""
    with explaining(model):
        return _copies(model, prepare(model, example), target, _CACHE).full
