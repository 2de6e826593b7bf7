"""Measure maps instead of eyeballing them: the metric table and the noise/sample sweep.

`evaluate` scores each base method with and without SmoothGrad on the metrics of
`smoothgrad.metrics`; `sweep` makes the paper's two rows of maps (over σ and over n) with a
convergence curve against a high-n reference. Both are configured by a frozen object
(`Evaluation`, `SweepSettings`, each holding `MetricOptions`); keyword arguments are a
shortcut that builds it. They return plain rows (dicts of numbers) that `format_table` and
`to_csv` render; the `smoothgrad evaluate` and `sweep` commands print and save them.

This package is the one place that calls `smooth` for the metrics (`run`: evaluate; `sweep`;
`settings`: what they compute and the table columns). Work that several maps need is
done once: every aggregate of a method comes from the same noisy passes, and per image the
clean output, the infidelity perturbations and the model's response to them, the
max-sensitivity perturbations and the randomised model are shared by all rows; deletion and
insertion sort each map's pixels once.

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

from collections.abc import Mapping, Sequence

from smoothgrad import tables
from smoothgrad.evaluation.run import evaluate, explainer, randomization, smooth_all
from smoothgrad.evaluation.settings import (
    COLUMNS,
    DEFAULT_METRICS,
    METRIC_SCORES,
    METRICS,
    SMOOTHING_NAMES,
    SWEEP_COLUMNS,
    Evaluation,
    MetricOptions,
    Progress,
    SweepSettings,
)
from smoothgrad.evaluation.sweep import Sweep, sweep
from smoothgrad.tables import Row, to_json

__all__ = [
    "COLUMNS", "DEFAULT_METRICS", "METRICS", "METRIC_SCORES", "SMOOTHING_NAMES", "SWEEP_COLUMNS",
    "Evaluation", "MetricOptions", "Progress", "Sweep", "SweepSettings", "evaluate", "explainer",
    "format_table", "randomization", "smooth_all", "sweep", "to_csv", "to_json",
]


def format_table(rows: Sequence[Row], columns: Mapping[str, tuple[str, str]] = COLUMNS) -> str:
    """`tables.format_table` with `evaluate`'s columns by default.

    Example:
        >>> print(format_table([{"method": "gradient", "gini": 0.51234}]))
        method    Gini↑
        gradient  0.512
    """
    return tables.format_table(rows, columns)


def to_csv(rows: Sequence[Row], columns: Sequence[str] = tuple(COLUMNS)) -> str:
    """`tables.to_csv` with `evaluate`'s column keys by default."""
    return tables.to_csv(rows, columns)
