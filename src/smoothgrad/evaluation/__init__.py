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

import math
from collections.abc import Mapping, Sequence

from smoothgrad import tables
from smoothgrad.evaluation.run import evaluate, explainer, randomization, smooth_all
from smoothgrad.evaluation.settings import (
    COLUMNS,
    DEFAULT_METRICS,
    METRIC_SCORES,
    METRICS,
    SMOOTHING_NAMES,
    SUBSTRATES,
    SWEEP_COLUMNS,
    Evaluation,
    MetricOptions,
    Progress,
    SweepSettings,
)
from smoothgrad.evaluation.sweep import Sweep, sweep
from smoothgrad.tables import Row, to_json

__all__ = [
    "COLUMNS", "DEFAULT_METRICS", "METRICS", "METRIC_SCORES", "SMOOTHING_NAMES", "SUBSTRATES",
    "SWEEP_COLUMNS", "Evaluation", "MetricOptions", "Progress", "Sweep", "SweepSettings",
    "column_format", "evaluate", "explainer", "format_table", "randomization", "smooth_all",
    "sweep", "to_csv", "to_json",
]


def format_table(rows: Sequence[Row], columns: Mapping[str, tuple[str, str]] = COLUMNS) -> str:
    """`tables.format_table` with `evaluate`'s columns by default, one number layout per column.

    A column whose format asks for significant digits (`.3g`) gets one layout for all its
    rows (`column_format`), so 0.4 prints as 0.400 beside 0.381, never as 0.4.

    Example:
        >>> print(format_table([{"method": "gradient", "infidelity": 0.4},
        ...                     {"method": "gradient", "infidelity": 0.38123}]))
        method    infid↓
        gradient   0.400
        gradient   0.381
    """
    resolved = {key: (header, column_format([row.get(key) for row in rows], fmt))
                for key, (header, fmt) in columns.items()}
    return tables.format_table(rows, resolved)


def column_format(values: Sequence[object], fmt: str) -> str:
    """One fixed layout for a whole column from a significant-digits format (`.Pg`).

    The largest finite |value| gets P significant digits and every row the same number of
    decimals (`.Pf`-like); columns spanning beyond 1e-3..1e5 use `.{P-1}e`. Other formats
    are returned unchanged.

    Example:
        >>> column_format([0.4, 0.381, None], ".3g"), column_format([12.5, 0.4], ".3g")
        ('.3f', '.1f')
        >>> column_format([2e-5, 1e-6], ".3g"), column_format([1, 2], "d")
        ('.2e', 'd')
    """
    if not (fmt.startswith(".") and fmt.endswith("g") and fmt[1:-1].isdigit()):
        return fmt
    digits = max(1, int(fmt[1:-1]))
    finite = [abs(v) for v in values
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    largest = max(finite, default=0.0)
    if largest == 0:
        return f".{digits}f"
    if not 1e-3 <= largest < 1e5:
        return f".{digits - 1}e"
    return f".{max(0, digits - 1 - math.floor(math.log10(largest)))}f"


def to_csv(rows: Sequence[Row], columns: Sequence[str] = tuple(COLUMNS)) -> str:
    """`tables.to_csv` with `evaluate`'s column keys by default."""
    return tables.to_csv(rows, columns)
