"""Does the map depend on the model: cascading parameter randomisation (Adebayo et al. 2018)."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoothgrad.metrics.base import (
    Explainer,
    Score,
    Target,
    channel_map,
    draw,
    resolve_target,
    unit_range,
)
from smoothgrad.metrics.similarity import spearman, ssim

__all__ = ["SCORES", "RandomizationRow", "compare_maps", "grouped_randomization",
           "randomization_check", "randomized_copy"]

SCORES = (Score("randomization_spearman", "rand", ".3f", "lower"),)


@dataclass(frozen=True)
class RandomizationRow:
    """Similarity of the original map to the map after randomising up to ``layer``.

    Fields ``(N,)``: Spearman of the absolute and of the signed channel-summed maps, and SSIM of
    the absolute maps scaled to [0, 1]. ``layer`` is ``"original"`` for the first row (the map
    recomputed on the untouched copy: 1 for a deterministic explainer) and ``"random map"`` for
    the last (the original map with its pixels shuffled: same values, no spatial information;
    the baseline a fully randomised explanation should fall to, Spearman about 0).
    """

    layer: str
    spearman_abs: Tensor
    spearman_signed: Tensor
    ssim: Tensor


def randomization_check(explain: Explainer, model: nn.Module, x: Tensor, target: Target = None,
                        *, layers: Sequence[str] | None = None,
                        seed: int = 0) -> list[RandomizationRow]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018), one row per step.

    On a deep copy of ``model``, layers are re-initialised with their ``reset_parameters()``
    cumulatively from the output down, and after each one the map for the same target (default:
    the clean prediction of the original model) is compared with the original map. ``layers``
    names the modules to reset in order (``named_modules`` names); by default every module with
    a ``reset_parameters`` method, in reverse registration order: the layers and the order of
    Quantus' ``MPRT(layer_order="top_down")`` (a BatchNorm without affine parameters is reset
    too: its running statistics are trained state). This assumes registration follows the
    forward order; pass ``layers`` otherwise. Step ``j`` runs ``reset_parameters`` under a
    global RNG seeded with ``seed + j`` and forked, so the caller's global RNG state (CPU, and
    the CUDA devices holding the model) is unchanged; Quantus seeds the global RNG with
    ``seed + 1`` before every layer and leaves it so, hence other random parameters. Maps
    ``(N, C, H, W)`` are summed over channels (``(N, H, W)`` taken as they are). A sane
    explainer's similarities fall towards the random-map row as more layers are randomised.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
        >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3))
        >>> [row.layer for row in randomization_check(gradient, model, torch.rand(2, 3, 16, 16))]
        ['original', '3', '0', 'random map']
    """
    target_t = resolve_target(model, x, target)
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    if layers is None:
        names = [name for name, m in reversed(modules.items()) if hasattr(m, "reset_parameters")]
        owners = [name for name, m in modules.items() if list(m.parameters(recurse=False))]
        skipped = sorted(set(owners) - set(names))
        if skipped:
            warnings.warn(f"randomization_check cannot re-initialise {skipped} (no "
                          "reset_parameters); their parameters stay trained", UserWarning,
                          stacklevel=2)
    else:
        names = list(layers)
        for name in names:
            if not hasattr(modules.get(name), "reset_parameters"):
                raise ValueError(f"{name!r} is not a submodule with reset_parameters()")

    original = explain(randomized, x, target_t).detach()
    rows = [compare_maps("original", original, explain(randomized, x, target_t).detach())]
    for j, name in enumerate(names):
        with _seeded_global_rng(seed + j, _cuda_devices(randomized)):
            modules[name].reset_parameters()
        rows.append(compare_maps(name, original, explain(randomized, x, target_t).detach()))
    rows.append(compare_maps("random map", original, _shuffle_pixels(original, seed)))
    return rows


def compare_maps(label: str, original: Tensor, other: Tensor) -> RandomizationRow:
    """The similarities of ``other`` to ``original`` as a row labelled ``label``."""
    a, b = channel_map(original, "abs"), channel_map(other, "abs")
    return RandomizationRow(
        layer=label, spearman_abs=spearman(a, b),
        spearman_signed=spearman(channel_map(original, "sum"), channel_map(other, "sum")),
        ssim=ssim(unit_range(a), unit_range(b)))


def grouped_randomization(explain: Explainer, model: nn.Module, x: Tensor,
                          target: Target = None, *, groups: Mapping[str, Sequence[str]],
                          seed: int = 0) -> list[RandomizationRow]:
    """`randomization_check` with layers re-initialised in groups, one row per group.

    `groups` maps a row label to module-name prefixes (in cascade order, output first): the
    group re-initialises every module with a `reset_parameters()` method whose name equals a
    prefix or starts with it and a dot; the prefix "" matches every module, so `{"all": [""]}`
    randomises the whole model in one step. The model is not modified.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
        >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3)).eval()
        >>> rows = grouped_randomization(gradient, model, torch.rand(2, 3, 16, 16),
        ...                              groups={"top": ["3"], "all": [""]})
        >>> [row.layer for row in rows]
        ['original', 'top', 'all', 'random map']
    """
    grouped = _Grouped(model, groups)
    layers = [f"groups.{i}" for i in range(len(groups))]
    rows = randomization_check(explain, grouped, x, resolve_target(model, x, target),
                               layers=layers, seed=seed)
    labels = ["original", *groups, "random map"]
    return [RandomizationRow(label, row.spearman_abs, row.spearman_signed, row.ssim)
            for label, row in zip(labels, rows, strict=True)]


def randomized_copy(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer re-initialised as ``grouped_randomization``
    does for the single group ``{"all": [""]}`` (same ``seed``: the same parameters)."""
    grouped = copy.deepcopy(_Grouped(model, {"all": [""]}))
    with _seeded_global_rng(seed, _cuda_devices(grouped)):
        grouped.groups[0].reset_parameters()  # type: ignore[operator]
    randomized: nn.Module = grouped.model
    return randomized


class _Group(nn.Module):
    """Modules re-initialised together: `reset_parameters` resets each member in order.

    The members are a plain list, not submodules: the group adds no modules or parameters,
    and a deep copy of the model that holds both still maps them to the copied modules.
    """

    def __init__(self, members: Sequence[nn.Module], training: bool) -> None:
        super().__init__()
        self.members = list(members)
        self.training = training

    def reset_parameters(self) -> None:
        for member in self.members:
            member.reset_parameters()  # type: ignore[operator]


class _Grouped(nn.Module):
    """`model` with its layer groups as submodules `groups.0`, `groups.1`, ... (same train mode)."""

    def __init__(self, model: nn.Module, groups: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.model = model
        owners = [(name, m) for name, m in model.named_modules()
                  if hasattr(m, "reset_parameters")]  # as randomization_check's default
        members = []
        for label, prefixes in groups.items():
            chosen = [m for name, m in owners if any(
                p == "" or name == p or name.startswith(f"{p}.") for p in prefixes)]
            if not chosen:
                raise ValueError(f"layer group {label!r} matches no module with reset_parameters()")
            members.append(_Group(chosen, model.training))
        self.groups = nn.ModuleList(members)
        self.training = self.groups.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)
        return out


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.get_device() for p in model.parameters() if p.is_cuda})


def _shuffle_pixels(m: Tensor, seed: int) -> Tensor:
    """Randomly permute the pixels (last two dims, channels together) of each example."""
    n, pixels = m.shape[0], m.shape[-2] * m.shape[-1]
    flat = m.reshape(*m.shape[:-2], pixels)
    order = draw("uniform", (n, pixels), seed, m).argsort(dim=1)
    index = order.view(n, *([1] * (flat.ndim - 2)), pixels).expand_as(flat)
    return flat.gather(-1, index).view_as(m)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, cuda_devices: list[int]) -> Iterator[None]:
    """Seed the global CPU RNG (and that of ``cuda_devices``) for the block; restore it after.

    ``torch.manual_seed`` is avoided: it would also seed CUDA devices that are not restored.
    """
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        for device in cuda_devices:
            torch.cuda.default_generators[device].manual_seed(seed)
        yield
