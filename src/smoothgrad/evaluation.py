"""Measure maps instead of eyeballing them: the noise/sample sweep and the metric table.

`evaluate` scores each base method with and without SmoothGrad on every metric of
`smoothgrad.metrics`; `sweep` makes the paper's two rows of maps (over σ and over n) with a
convergence curve against a high-n reference. Both return plain rows (dicts of numbers) that
`format_table` and `to_csv` render; the `smoothgrad evaluate` and `sweep` commands print and
save them.

Example:
    >>> import torch
    >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
    >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3)).eval()
    >>> rows = evaluate(model, torch.rand(1, 3, 16, 16), methods=["gradient"],
    ...                 aggregates=["mean"], samples=4, steps=4)
    >>> [(row["method"], row["smoothing"], row["samples"]) for row in rows]
    [('gradient', 'none', 1), ('gradient', 'mean', 4)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad import metrics as measures
from smoothgrad.engine import SmoothResult, smooth

__all__ = [
    "COLUMNS",
    "DEFAULT_METRICS",
    "METRICS",
    "SMOOTHING_NAMES",
    "SWEEP_COLUMNS",
    "Sweep",
    "evaluate",
    "explainer",
    "format_table",
    "randomization",
    "sweep",
    "to_csv",
    "to_json",
]

METRICS = ("total_variation", "gini", "deletion", "insertion", "infidelity", "sensitivity",
           "randomization")
"""Metric names for `evaluate(metrics=...)`; `sensitivity` adds max-sensitivity and, for
SmoothGrad, its noise floor; `randomization` is the Spearman correlation between the map and
the map of the fully re-initialised model."""

DEFAULT_METRICS = METRICS[:5]
"""The metrics that cost at most a few forward passes per map (sensitivity and
randomization cost 10 and 1 extra maps per variant)."""

SMOOTHING_NAMES = {"none": "plain", "mean": "SmoothGrad", "abs": "SmoothGrad |·|",
                   "square": "SmoothGrad²", "var": "VarGrad"}

COLUMNS = {  # key: (header, format); arrows say which direction is better
    "image": ("image", "s"), "method": ("method", "s"), "smoothing": ("smoothing", "s"),
    "samples": ("n", "d"), "relative_error": ("rel.err", ".3f"), "flip_rate": ("flip", ".2f"),
    "total_variation": ("TV↓", ".4f"), "gini": ("Gini↑", ".3f"),
    "deletion_auc": ("del↓", ".3f"), "insertion_auc": ("ins↑", ".3f"),
    "infidelity": ("infid↓", ".3g"), "sensitivity_max": ("sens↓", ".3f"),
    "sensitivity_floor": ("floor", ".3f"), "randomization_spearman": ("rand↓", ".3f"),
}
"""Column key -> (terminal header, number format) of `evaluate` rows, in table order."""

SWEEP_COLUMNS = {
    "row": ("row", "s"), "noise": ("noise", ".2f"), "samples": ("n", "d"),
    "relative_error": ("rel.err", ".3f"), "flip_rate": ("flip", ".2f"),
    "relative_l2": ("L2 vs ref", ".3f"), "processed_l2": ("shown L2", ".3f"),
    "spearman": ("ρ vs ref", ".3f"), "total_variation": ("TV↓", ".4f"), "gini": ("Gini↑", ".3f"),
    "deletion_auc": ("del↓", ".3f"), "insertion_auc": ("ins↑", ".3f"),
}
"""Column key -> (header, format) of `sweep` rows."""

Row = dict[str, Any]


def explainer(method: str | Callable[..., Tensor], aggregate: str | None = None,
              **smooth_kwargs: Any) -> measures.Explainer:
    """`(model, x, target) -> map`: the base method alone (aggregate None) or its SmoothGrad.

    Example:
        >>> model = torch.nn.Linear(4, 3).eval()
        >>> explain = explainer("gradient", "square", samples=5, seed=1)
        >>> explain(model, torch.rand(2, 4), torch.tensor([0, 2])).shape
        torch.Size([2, 4])
    """
    def explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        if aggregate is None:
            return smooth(model, x, method=method, target=target, samples=1,
                          noise=0.0).attribution
        return smooth(model, x, method=method, target=target, aggregate=aggregate,
                      **smooth_kwargs).attribution

    return explain


def evaluate(
    model: nn.Module,
    x: Tensor,
    *,
    methods: Sequence[str] = ("gradient", "guided_backprop"),
    aggregates: Sequence[str] = ("mean", "square", "var"),
    metrics: Sequence[str] = DEFAULT_METRICS,
    target: int | Tensor | None = None,
    names: Sequence[str] | None = None,
    steps: int = 50,
    log: Callable[[str], None] | None = None,
    **smooth_kwargs: Any,
) -> list[Row]:
    """Every metric for each base method, plain and with each SmoothGrad aggregate.

    One row per example of `x` (N, C, H, W) and variant, keyed like `COLUMNS`: `smoothing`
    is "none" or the aggregate; `relative_error` (‖stderr‖/‖map‖) and `flip_rate` are None for
    the plain method. Deletion and insertion (`steps` steps) rank pixels by |map| summed over
    channels; infidelity uses 50 Gaussian perturbations of std 0.1; `smooth_kwargs` (`samples`,
    `noise`, `seed`, `batch_size`, ...) go to every `smooth` call. `log` gets a line per variant.
    See the module example.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRICS)}")
    names = [str(i) for i in range(x.shape[0])] if names is None else list(names)
    target_t = _target(model, x, target)
    rows: list[Row] = []
    for method in methods:
        for aggregate in (None, *aggregates):
            explain = explainer(method, aggregate, **smooth_kwargs)
            if aggregate is None:
                attribution, result = explain(model, x, target_t), None
            else:
                result = smooth(model, x, method=method, target=target_t, aggregate=aggregate,
                                **smooth_kwargs)
                attribution = result.attribution
            scores = _map_scores(model, x, attribution, target_t, metrics, steps)
            if "sensitivity" in metrics:
                scores["sensitivity_max"] = measures.sensitivity_max(
                    explain, model, x, target_t, batch_size=x.shape[0])
                if aggregate is not None:
                    scores["sensitivity_floor"] = _floor(method, aggregate, model, x, target_t,
                                                         smooth_kwargs)
            if "randomization" in metrics:
                row = randomization(explain, model, x, target_t, groups={"all": [""]})[1]
                scores["randomization_spearman"] = row.spearman_abs
            for i, name in enumerate(names):
                rows.append({
                    "image": name, "method": method, "smoothing": aggregate or "none",
                    "samples": 1 if result is None else result.samples,
                    "relative_error": None if result is None
                    else float(result.relative_error()[i]),
                    "flip_rate": None if result is None or result.flip_rate is None
                    else float(result.flip_rate[i]),
                    **{key: float(value[i]) for key, value in scores.items()},
                })
            if log is not None:
                log(f"{method} {SMOOTHING_NAMES[aggregate or 'none']}: done")
    return rows


def _floor(method: str, aggregate: str, model: nn.Module, x: Tensor, target: Tensor,
           smooth_kwargs: Mapping[str, Any]) -> Tensor:
    kwargs = {key: value for key, value in smooth_kwargs.items() if key != "seed"}
    base = int(smooth_kwargs.get("seed", 0))

    def seeded(model: nn.Module, x: Tensor, target: Tensor, seed: int) -> Tensor:
        return smooth(model, x, method=method, target=target, aggregate=aggregate,
                      seed=base + seed, **kwargs).attribution

    return measures.sensitivity_floor(seeded, model, x, target)


def _map_scores(model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor,
                names: Sequence[str], steps: int) -> dict[str, Tensor]:
    """The metrics that need only the map (and forward passes of the model)."""
    scores: dict[str, Tensor] = {}
    if "total_variation" in names:
        scores["total_variation"] = measures.total_variation(attribution)
    if "gini" in names:
        scores["gini"] = measures.gini(attribution.abs().sum(dim=1))
    if "deletion" in names:
        scores["deletion_auc"] = measures.deletion_auc(model, x, attribution, target,
                                                      steps=steps, reduce="abs")
    if "insertion" in names:
        scores["insertion_auc"] = measures.insertion_auc(model, x, attribution, target,
                                                        steps=steps, reduce="abs")
    if "infidelity" in names:
        scores["infidelity"] = measures.infidelity(model, x, attribution, target)
    return scores


def randomization(
    explain: measures.Explainer,
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    groups: Mapping[str, Sequence[str]],
    seed: int = 0,
) -> list[measures.RandomizationRow]:
    """`measures.randomization_check` with layers re-initialised in groups, one row per group.

    `groups` maps a row label to module-name prefixes (in cascade order, output first): the
    group re-initialises every module with its own parameters and `reset_parameters()` whose
    name equals a prefix or starts with it and a dot; the prefix "" matches every module, so
    `{"all": [""]}` randomises the whole model in one step. The model is not modified.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
        >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3)).eval()
        >>> rows = randomization(gradient, model, torch.rand(2, 3, 16, 16),
        ...                      groups={"top": ["3"], "all": [""]})
        >>> [row.layer for row in rows]
        ['original', 'top', 'all', 'random map']
    """
    grouped = _Grouped(model, groups)
    layers = [f"groups.{i}" for i in range(len(groups))]
    rows = measures.randomization_check(explain, grouped, x, _target(model, x, target),
                                       layers=layers, seed=seed)
    labels = ["original", *groups, "random map"]
    return [measures.RandomizationRow(label, row.spearman_abs, row.spearman_signed, row.ssim)
            for label, row in zip(labels, rows, strict=True)]


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
                  if list(m.parameters(recurse=False)) and hasattr(m, "reset_parameters")]
        members = []
        for label, prefixes in groups.items():
            chosen = [m for name, m in owners if any(
                p == "" or name == p or name.startswith(f"{p}.") for p in prefixes)]
            if not chosen:
                raise ValueError(f"layer group {label!r} matches no module with parameters")
            members.append(_Group(chosen, model.training))
        self.groups = nn.ModuleList(members)
        self.training = self.groups.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)
        return out


# --------------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class Sweep:
    """What `sweep` returns: maps over noise (at `at_samples`) and over samples (at `at_noise`).

    `noise_maps` and `sample_maps` are lists of (setting, map shaped like x[0]); `rows` holds
    one row per map, keyed like `SWEEP_COLUMNS` (`relative_l2`, `processed_l2` and `spearman`
    compare the samples row with the reference, None in the noise row); `reference` is the
    `reference_samples`-sample map.
    """

    noise_maps: list[tuple[float, Tensor]]
    sample_maps: list[tuple[int, Tensor]]
    rows: list[Row]
    reference: SmoothResult


def sweep(
    model: nn.Module,
    x: Tensor,
    *,
    method: str = "gradient",
    noises: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    samples: Sequence[int] = (2, 5, 20, 50, 100),
    at_noise: float = 0.15,
    at_samples: int = 50,
    reference_samples: int = 500,
    target: int | Tensor | None = None,
    steps: int = 50,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    **smooth_kwargs: Any,
) -> Sweep:
    """SmoothGrad of one example `x` (1, C, H, W) over noise levels and sample counts.

    The noise row uses `at_samples` samples, the samples row `at_noise`; maps use `seed` and
    the reference (`reference_samples` samples at `at_noise`) uses `seed + 1`, so they share
    no noise. Each map is scored like `evaluate`'s (TV, Gini, deletion/insertion AUC with
    `steps` steps); the samples row is also compared with the reference: relative L2 of the
    raw map, of the shown map (|map| summed over channels) and Spearman of the shown maps.

    Example:
        >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
        >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3))
        >>> result = sweep(model.eval(), torch.rand(1, 3, 16, 16), noises=[0, 0.2],
        ...                samples=[2, 4], at_samples=4, reference_samples=8, steps=4)
        >>> [(row["row"], row["noise"], row["samples"]) for row in result.rows]
        [('noise', 0.0, 1), ('noise', 0.2, 4), ('samples', 0.15, 2), ('samples', 0.15, 4)]
    """
    if x.shape[0] != 1:
        raise ValueError(f"sweep explains one example, got a batch of {x.shape[0]}")
    if reference_samples <= max(samples):
        raise ValueError(f"reference_samples ({reference_samples}) must exceed the largest "
                         f"samples ({max(samples)})")
    target_t = _target(model, x, target)
    cache: dict[tuple[float, int], SmoothResult] = {}

    def run(noise: float, n: int) -> SmoothResult:
        if (noise, n) not in cache:
            cache[noise, n] = smooth(model, x, method=method, target=target_t, samples=n,
                                     noise=noise, seed=seed, **smooth_kwargs)
            if log is not None:
                log(f"{method}: noise {noise:g}, {cache[noise, n].samples} samples")
        return cache[noise, n]

    reference = smooth(model, x, method=method, target=target_t, samples=reference_samples,
                       noise=at_noise, seed=seed + 1, **smooth_kwargs)
    ref_shown = reference.attribution.abs().sum(dim=1)
    rows: list[Row] = []
    for kind, settings in (("noise", [(float(s), at_samples) for s in noises]),
                           ("samples", [(at_noise, int(n)) for n in samples])):
        for noise, n in settings:
            result = run(noise, n)
            m = result.attribution
            shown = m.abs().sum(dim=1)
            scores = _map_scores(model, x, m, target_t, DEFAULT_METRICS[:4], steps)
            compare = kind == "samples"
            rows.append({
                "row": kind, "noise": noise, "samples": result.samples,
                "relative_error": float(result.relative_error()[0]) if result.samples > 1
                else None,
                "flip_rate": None if result.flip_rate is None else float(result.flip_rate[0]),
                "relative_l2": float(measures.relative_l2(m, reference.attribution)[0])
                if compare else None,
                "processed_l2": float(measures.relative_l2(shown, ref_shown)[0])
                if compare else None,
                "spearman": float(measures.spearman(shown, ref_shown)[0]) if compare else None,
                **{key: float(value[0]) for key, value in scores.items()},
            })
    return Sweep(noise_maps=[(float(s), run(float(s), at_samples).attribution[0])
                             for s in noises],
                 sample_maps=[(int(n), run(at_noise, int(n)).attribution[0]) for n in samples],
                 rows=rows, reference=reference)


# -------------------------------------------------------------------------------- tables


def format_table(rows: Sequence[Row], columns: Mapping[str, tuple[str, str]] = COLUMNS) -> str:
    """Rows as an aligned text table; columns no row has are left out, None shows as "–".

    Example:
        >>> print(format_table([{"method": "gradient", "gini": 0.51234}]))
        method    Gini↑
        gradient  0.512
    """
    keys = [key for key in columns if any(row.get(key) is not None for row in rows)]
    cells = [[columns[key][0] for key in keys]]
    for row in rows:
        cells.append([_cell(row.get(key), columns[key][1]) for key in keys])
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    numeric = [columns[key][1] != "s" for key in keys]
    return "\n".join("  ".join(c.rjust(w) if num else c.ljust(w)
                               for c, w, num in zip(line, widths, numeric, strict=True)).rstrip()
                     for line in cells)


def to_csv(rows: Sequence[Row], columns: Sequence[str] = tuple(COLUMNS)) -> str:
    """Rows as CSV text with a header of column keys; None becomes an empty field.

    Example:
        >>> print(to_csv([{"method": "gradient", "gini": 0.5}], ["method", "gini", "flip_rate"]),
        ...       end="")
        method,gini,flip_rate
        gradient,0.5,
    """
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(key) is None else row[key] for key in columns])
    return buffer.getvalue()


def to_json(settings: Mapping[str, Any], rows: Sequence[Row]) -> str:
    """`{"settings": ..., "rows": [...]}` as JSON text; NaN and infinities become null.

    Example:
        >>> print(to_json({"samples": 4}, [{"gini": float("nan")}]))
        {"settings": {"samples": 4}, "rows": [{"gini": null}]}
    """
    import json

    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    payload = {"settings": {key: clean(value) for key, value in settings.items()},
               "rows": [{key: clean(value) for key, value in row.items()} for row in rows]}
    return json.dumps(payload, ensure_ascii=False)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def _target(model: nn.Module, x: Tensor, target: int | Tensor | None) -> Tensor:
    """The explained classes, (N,) long: the clean prediction unless given."""
    if target is None:
        with torch.no_grad():
            logits: Tensor = model(x)
        return logits.argmax(dim=1)
    return torch.as_tensor(target, device=x.device).long().reshape(-1).expand(x.shape[0])

