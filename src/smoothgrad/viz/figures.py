"""Figures of maps: rows, the paper's comparison grid, convergence plots, and saving them.

Headless: plain ``matplotlib.figure.Figure`` objects, never pyplot ones.

>>> fig = row_figure([np.zeros((4, 4))], ["σ=0.10"])
>>> [ax.get_title() for ax in fig.axes]
['σ=0.10']
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from smoothgrad.files import write_all
from smoothgrad.maps import Activation
from smoothgrad.viz.colours import Picture, _to_rgb, colorize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Row", "comparison_figure", "convergence_figure", "figure_files", "row_figure",
           "save"]


@dataclass(frozen=True)
class Row:
    """One image of a comparison figure: the input, its maps and a label.

    ``maps`` are ``process`` outputs (2-D, coloured by the figure's colormap)
    or RGB arrays (shown as they are, e.g. ``overlay`` results). ``label`` is
    written beside the row, e.g. ``"tabby cat 0.77"``.
    """

    image: Picture
    maps: Sequence[npt.NDArray[Any]]
    label: str = ""


def row_figure(
    images: Sequence[Picture],
    titles: Sequence[str] | None = None,
    *,
    suptitle: str | None = None,
    colormap: str | None = None,
    activation: Activation = "abs",
    panel_size: float = 2.5,
    dpi: float = 100.0,
) -> Figure:
    """One row of panels with titles, e.g. maps for several noise levels.

    Each panel is a picture (PIL image, or ``(H, W, 3|4)`` array) or a 2-D
    ``process`` output, coloured with ``colorize(colormap=, activation=)``.
    The figure is ``panel_size`` inches per panel at ``dpi``.

    >>> maps = [np.zeros((4, 4)), np.ones((4, 4))]
    >>> fig = row_figure(maps, ["σ=0.10", "σ=0.20"], suptitle="noise sweep")
    >>> [ax.get_title() for ax in fig.axes]
    ['σ=0.10', 'σ=0.20']
    """
    return _grid_figure([list(images)], titles, None, colormap, activation, suptitle=suptitle,
                        panel_size=panel_size, dpi=dpi)


def comparison_figure(
    rows: Sequence[Row],
    *,
    titles: Sequence[str] | None = ("Input", "Gradient", "SmoothGrad"),
    colormap: str | None = None,
    activation: Activation = "abs",
    suptitle: str | None = None,
    dpi: float = 100.0,
    panel_size: float = 2.5,
) -> Figure:
    """A grid like the SmoothGrad paper's Figures 4-5: per row, input | maps....

    Every row needs the same number of maps; ``titles`` head the columns
    (input first) and must match their number, or be None. Row labels go on
    the left. Map panels are drawn as in ``row_figure``.

    >>> m = np.zeros((4, 4))
    >>> fig = comparison_figure([Row(np.zeros((4, 4, 3)), [m, m], "cat 0.77")])
    >>> fig.axes[0].get_ylabel(), fig.axes[2].get_title()
    ('cat 0.77', 'SmoothGrad')
    """
    if not rows:
        raise ValueError("comparison_figure needs at least one row")
    map_counts = {len(row.maps) for row in rows}
    if len(map_counts) != 1:
        raise ValueError(f"every row needs the same number of maps, got {sorted(map_counts)}")
    grid = [[row.image, *row.maps] for row in rows]
    labels = [row.label for row in rows]
    return _grid_figure(grid, titles, labels, colormap, activation, suptitle=suptitle,
                        panel_size=panel_size, dpi=dpi)


def convergence_figure(
    samples: Sequence[float],
    errors: dict[str, Sequence[float | None]],
    *,
    tol: float | None = None,
    title: str | None = None,
    ylabel: str = "relative error",
    size: tuple[float, float] = (5.0, 3.5),
    dpi: float = 100.0,
) -> Figure:
    """Error against sample count on a log x axis, one line per entry of ``errors``.

    A dotted ``∝ 1/√n`` guide starts at the first line's first point (Monte-Carlo error falls
    that way); ``tol`` adds a horizontal line. None values are left out of their line. The y
    axis is logarithmic (labels at 1, 2 and 5 times powers of ten) when the plotted values
    span a decade or more, linear otherwise, so that it always carries several labels.

    >>> fig = convergence_figure([2, 20, 200], {"vs reference": [1.0, 0.32, 0.1]}, tol=0.1)
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['vs reference', '∝ 1/√n', 'tol 0.1']
    >>> fig.axes[0].get_yscale(), convergence_figure([2, 5], {"a": [4.6, 1.3]}).axes[0].get_yscale()
    ('log', 'linear')
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    if not samples or any(len(values) != len(samples) for values in errors.values()):
        raise ValueError("every error series needs one value per sample count")
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.subplots()
    plotted: list[float] = []
    for label, values in errors.items():
        points = [(n, v) for n, v in zip(samples, values, strict=True) if v is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
        plotted += [v for _, v in points]
    first = next(iter(errors.values()), [None])[0]
    if first is not None:
        guide = [first * (samples[0] / n) ** 0.5 for n in samples]
        ax.plot(samples, guide, ":", color="gray", label="∝ 1/√n")
        plotted += guide
    if tol is not None:
        ax.axhline(tol, color="black", linewidth=0.8, linestyle="--", label=f"tol {tol:g}")
        plotted.append(tol)
    ax.set_xscale("log")
    ax.set_xticks(samples, [f"{n:g}" for n in samples], minor=False)
    ax.xaxis.set_minor_locator(NullLocator())
    positive = [v for v in plotted if v > 0]
    if positive and max(positive) >= 10 * min(positive):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(  # label 0.2, 0.5, 2, 5, ... between decades
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_xlabel("samples n")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def save(
    fig: Figure,
    path: str | os.PathLike[str],
    formats: str | Sequence[str] = ("png",),
    *,
    dpi: float | None = None,
) -> list[Path]:
    """Write ``fig`` once per format, atomically, and return the paths written.

    ``formats`` is a sequence of names or one string (``"png"`` or ``"png,svg"``).

    ``path`` gives the name: a suffix naming a format (``fig.png``) is replaced
    per format, any other is kept (``sigma0.15`` -> ``sigma0.15.png``). Each
    file is written to a temporary file in the same folder and renamed into
    place only after every format succeeded, so a failure leaves no partial or
    new files and existing ones untouched. Pixel size is figure inches x
    ``dpi`` (default the figure's own); no tight cropping. Afterwards the figure
    is closed in pyplot if pyplot manages it (ours never are).

    >>> save(row_figure([np.zeros((4, 4))]), "/tmp/sg_doc", ("png", "svg"))  # doctest: +SKIP
    [PosixPath('/tmp/sg_doc.png'), PosixPath('/tmp/sg_doc.svg')]
    """
    try:
        return write_all(figure_files(fig, path, formats, dpi=dpi))
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)


def figure_files(
    fig: Figure,
    path: str | os.PathLike[str],
    formats: str | Sequence[str] = ("png",),
    *,
    dpi: float | None = None,
) -> dict[Path, Callable[[IO[bytes]], None]]:
    """What :func:`save` writes: file path -> function writing the figure in its format.

    For writing figures together with other files, all or none
    (``smoothgrad.files.write_all``).

    >>> sorted(p.name for p in figure_files(row_figure([np.zeros((4, 4))]), "x.png", "png,svg"))
    ['x.png', 'x.svg']
    """
    if isinstance(formats, str):
        formats = [part.strip() for part in formats.split(",")]
    supported = fig.canvas.get_supported_filetypes()
    unknown = [fmt for fmt in formats if fmt.lower() not in supported]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {sorted(supported)}, got {list(formats)}")
    target = Path(path)
    if target.suffix.lower().lstrip(".") in supported:
        target = target.with_suffix("")
    resolution = fig.dpi if dpi is None else dpi

    def writer(fmt: str) -> Callable[[IO[bytes]], None]:
        return lambda file: fig.savefig(file, format=fmt, dpi=resolution)

    return {target.with_name(f"{target.name}.{fmt.lower()}"): writer(fmt.lower())
            for fmt in formats}


def _panel_rgb(
    panel: Picture, colormap: str | None, activation: Activation
) -> npt.NDArray[np.uint8]:
    if isinstance(panel, np.ndarray) and panel.ndim == 2:
        return colorize(panel, colormap=colormap, activation=activation)
    return _to_rgb(panel)


def _grid_figure(
    grid: Sequence[Sequence[Picture]],
    titles: Sequence[str] | None,
    row_labels: Sequence[str] | None,
    colormap: str | None,
    activation: Activation,
    *,
    suptitle: str | None,
    panel_size: float,
    dpi: float,
) -> Figure:
    """The shared layout: a grid of panels, column titles, row labels, suptitle."""
    from matplotlib.figure import Figure

    n_rows, n_cols = len(grid), len(grid[0])
    if n_cols == 0:
        raise ValueError("nothing to draw: no panels")
    if titles is not None and len(titles) != n_cols:
        raise ValueError(f"got {len(titles)} titles for {n_cols} columns")
    fig = Figure(figsize=(n_cols * panel_size, n_rows * panel_size), dpi=dpi, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(grid):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(_panel_rgb(panel, colormap, activation), interpolation="nearest")
            if titles is not None and r == 0:
                ax.set_title(titles[c])
        if row_labels is not None and row_labels[r]:
            axes[r, 0].set_ylabel(row_labels[r])
    if suptitle:
        fig.suptitle(suptitle)
    return fig
