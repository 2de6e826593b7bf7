"""Rows of numbers (dicts) as an aligned text table, CSV or JSON text: no files, no torch.

Example:
    >>> print(format_table([{"method": "gradient", "gini": 0.51234}],
    ...                    {"method": ("method", "s"), "gini": ("Gini↑", ".3f")}))
    method    Gini↑
    gradient  0.512
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Row", "format_table", "to_csv", "to_json"]

Row = dict[str, Any]


def format_table(rows: Sequence[Row], columns: Mapping[str, tuple[str, str]]) -> str:
    """Rows as an aligned text table: `columns` maps a row key to (header, format); columns
    no row has are left out, None and NaN show as "–". See the module example."""
    keys = [key for key in columns if any(row.get(key) is not None for row in rows)]
    cells = [[columns[key][0] for key in keys]]
    for row in rows:
        cells.append([_cell(row.get(key), columns[key][1]) for key in keys])
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    numeric = [columns[key][1] != "s" for key in keys]
    return "\n".join("  ".join(c.rjust(w) if num else c.ljust(w)
                               for c, w, num in zip(line, widths, numeric, strict=True)).rstrip()
                     for line in cells)


def to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
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
