"""Turn attributions into pictures: processed maps, colours, overlays, figures, files.

The pipeline is ``process`` (attribution -> float map) -> ``colorize`` (map ->
RGB) -> ``overlay`` / ``row_figure`` / ``comparison_figure`` -> ``save``.

Headless by construction: figures are plain ``matplotlib.figure.Figure``
objects, never pyplot ones, so no backend is selected and no global figure
registry grows. matplotlib is imported inside the functions that need it.

>>> import numpy as np
>>> from smoothgrad import viz
>>> grad = np.random.default_rng(0).normal(size=(3, 8, 8))
>>> rgb = viz.colorize(viz.process(grad))
>>> rgb.shape, rgb.dtype
((8, 8, 3), dtype('uint8'))
"""

from __future__ import annotations

import difflib
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, get_args

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from smoothgrad.files import write_all
from smoothgrad.maps import Activation, Reduce, to_map

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = [
    "Activation",
    "Picture",
    "Reduce",
    "Row",
    "Style",
    "colorize",
    "comparison_figure",
    "convergence_figure",
    "figure_files",
    "overlay",
    "png_bytes",
    "process",
    "row_figure",
    "save",
    "save_heatmap_png",
]

Picture = Image.Image | npt.NDArray[Any]

_DEFAULT_COLORMAP = "viridis"
_DEFAULT_DIVERGING_COLORMAP = "RdBu_r"
_COLOUR = (1, 3, 4)  # channel counts of pictures: gray, RGB, RGBA
_SUGGESTED_COLORMAPS = ("viridis", "magma", "inferno", "gray", "hot", "RdBu_r", "bwr", "seismic")


def process(
    attribution: torch.Tensor | npt.ArrayLike,
    *,
    activation: Activation = "abs",
    percentile: float = 99.0,
    skew: float = 0.5,
    reduce: Reduce = "sum",
    channels_last: bool = False,
) -> npt.NDArray[np.float32]:
    """Reduce an attribution to a 2-D map scaled for display.

    ``attribution`` is shaped ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W)``
    (channels first, one example), or with ``channels_last=True`` ``(H, W, C)`` or
    ``(1, H, W, C)``. A channels-first shape whose last axis looks like colour channels
    (1, 3 or 4) while its first does not, e.g. ``(224, 224, 3)``, is refused rather than
    read as 224 channels: pass ``channels_last=True`` (or transpose). Steps, in order:

    1. activation, per element: ``abs`` -> ``|a|``, ``positive`` -> ``max(a, 0)``,
       ``negative`` -> ``max(-a, 0)``, ``all`` -> ``a`` (signed);
    2. channel reduction: ``sum`` over channels (PAIR saliency's
       ``VisualizeImageGrayscale`` sums ``|a|``), or ``max``: the value of largest
       magnitude, sign kept (for ``abs`` this is the max-norm, as in xplique).
       With ``sum``, positive + negative == abs and positive - negative == all;
       a mean would equal the sum after step 3, so it is not offered;
    3. outlier clipping and scaling (the paper caps at the 99th percentile):
       ``s`` = the ``percentile``-th percentile (numpy, linear interpolation)
       of ``|m|``; the map becomes ``clip(m / s, -1, 1)``, so values beyond the
       percentile saturate at 1 (or -1 for ``all``) and zero stays zero. PAIR
       differs slightly: its grayscale maps subtract the minimum first and its
       diverging maps use the percentile of the signed values. If ``s`` is 0
       the maximum ``|m|`` is used instead (sparse maps); an all-zero map
       stays all zeros;
    4. skew (gamma): ``sign(v) * |v| ** skew``; ``skew < 1`` brightens faint
       values, ``skew=1`` leaves the map linear.

    Returns float32 ``(H, W)`` in [0, 1], or [-1, 1] for ``all``.

    >>> process(np.array([[0.0, 1.0], [4.0, -4.0]]), percentile=100, skew=1.0).tolist()
    [[0.0, 0.25], [1.0, 1.0]]
    """
    _check_options(activation, percentile, skew)
    _check_choice("reduce", reduce, Reduce)
    values = torch.from_numpy(_as_chw(attribution, channels_last))[None]
    reduced = to_map(values, activation=activation, reduce=reduce)[0].numpy()

    magnitude = np.abs(reduced)
    scale = float(np.percentile(magnitude, percentile)) or float(magnitude.max())
    if scale == 0.0:
        return np.zeros(reduced.shape, dtype=np.float32)
    scaled = np.clip(reduced / scale, -1.0, 1.0)
    skewed: npt.NDArray[np.float64] = np.sign(scaled) * np.abs(scaled) ** skew
    return skewed.astype(np.float32)


@dataclass(frozen=True)
class Style:
    """How maps are shown: ``process``'s activation, percentile and skew, and the colormap.

    Checked when made, so a bad option fails before any work.

    >>> Style(percentile=101)
    Traceback (most recent call last):
    ...
    ValueError: percentile must be in (0, 100], got 101
    >>> Style().picture(np.ones((3, 2, 2))).shape
    (2, 2, 3)
    """

    activation: Activation = "abs"
    skew: float = 0.5
    percentile: float = 99.0
    colormap: str | None = None

    def __post_init__(self) -> None:
        _check_options(self.activation, self.percentile, self.skew)
        if self.colormap is not None:
            _colormap(self.colormap)

    def process(self, attribution: torch.Tensor | npt.ArrayLike) -> npt.NDArray[np.float32]:
        """:func:`process` with this style."""
        return process(attribution, activation=self.activation, percentile=self.percentile,
                       skew=self.skew)

    def picture(self, attribution: torch.Tensor | npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """The attribution as an RGB map: :func:`process`, then :func:`colorize`."""
        return colorize(self.process(attribution), colormap=self.colormap,
                        activation=self.activation)

    @property
    def colors(self) -> dict[str, Any]:
        """The figure functions' colour keywords (``colormap``, ``activation``)."""
        return {"colormap": self.colormap, "activation": self.activation}


def colorize(
    processed: npt.ArrayLike,
    *,
    colormap: str | None = None,
    activation: Activation = "abs",
) -> npt.NDArray[np.uint8]:
    """Map a ``process`` output to RGB with a matplotlib colormap.

    ``activation`` says how the map was processed: ``all`` maps [-1, 1] onto the
    whole colormap with 0 at its centre (default ``RdBu_r``: negative blue,
    positive red); the others map [0, 1] (default ``viridis``). Returns uint8
    ``(H, W, 3)``.

    >>> colorize(np.array([[0.0, 1.0]]), colormap="gray").tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
    _check_choice("activation", activation, Activation)
    values = np.asarray(processed, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"colorize expects a 2-D map from process(), got shape {values.shape}")
    signed = activation == "all"
    low = -1.0 if signed else 0.0
    if not (np.all(np.isfinite(values)) and low <= values.min() <= values.max() <= 1):
        raise ValueError(
            f"colorize expects values in [{low:g}, 1] as process(activation={activation!r}) "
            "returns them"
        )
    default = _DEFAULT_DIVERGING_COLORMAP if signed else _DEFAULT_COLORMAP
    cmap = _colormap(colormap or default)
    positions = (values + 1.0) / 2.0 if signed else values
    rgba = np.asarray(cmap(positions), dtype=np.float64)
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def overlay(
    image: Picture,
    heatmap_rgb: npt.ArrayLike,
    *,
    alpha: float = 0.5,
) -> npt.NDArray[np.uint8]:
    """Blend a heatmap on a photo: ``(1 - alpha) * photo + alpha * heatmap``.

    ``image`` is a PIL image or an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``
    array (uint8, or float in [0, 1]); it is resized (bilinear) to the
    heatmap's size. Returns uint8 ``(H, W, 3)``.

    >>> photo = np.full((4, 4, 3), 200, dtype=np.uint8)
    >>> heat = np.zeros((2, 2, 3), dtype=np.uint8)
    >>> overlay(photo, heat, alpha=0.25)[0, 0].tolist()
    [150, 150, 150]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = np.asarray(heatmap_rgb)
    if heat.ndim != 3 or heat.shape[2] != 3 or heat.dtype != np.uint8:
        raise ValueError(
            f"heatmap_rgb must be uint8 (H, W, 3) like colorize output, got {heat.dtype} "
            f"{heat.shape}"
        )
    height, width = heat.shape[:2]
    photo = Image.fromarray(_to_rgb(image))
    if photo.size != (width, height):
        photo = photo.resize((width, height), Image.Resampling.BILINEAR)
    blended = (1.0 - alpha) * np.asarray(photo, dtype=np.float64) + alpha * heat
    return np.round(blended).astype(np.uint8)


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
    """Error against sample count on log-log axes, one line per entry of ``errors``.

    A dotted ``∝ 1/√n`` guide starts at the first line's first point (Monte-Carlo error falls
    that way); ``tol`` adds a horizontal line. None values are left out of their line.

    >>> fig = convergence_figure([2, 20, 200], {"vs reference": [1.0, 0.32, 0.1]}, tol=0.1)
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['vs reference', '∝ 1/√n', 'tol 0.1']
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    if not samples or any(len(values) != len(samples) for values in errors.values()):
        raise ValueError("every error series needs one value per sample count")
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for label, values in errors.items():
        points = [(n, v) for n, v in zip(samples, values, strict=True) if v is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    first = next(iter(errors.values()), [None])[0]
    if first is not None:
        ax.plot(samples, [first * (samples[0] / n) ** 0.5 for n in samples], ":", color="gray",
                label="∝ 1/√n")
    if tol is not None:
        ax.axhline(tol, color="black", linewidth=0.8, linestyle="--", label=f"tol {tol:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(samples, [f"{n:g}" for n in samples], minor=False)
    ax.xaxis.set_minor_locator(NullLocator())
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


def save_heatmap_png(rgb: npt.ArrayLike, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 ``(H, W, 3)`` array (``colorize``/``overlay`` output) as a PNG, atomically.

    >>> save_heatmap_png(colorize(np.zeros((4, 4))), "/tmp/sg_map.png")  # doctest: +SKIP
    PosixPath('/tmp/sg_map.png')
    """
    return write_all({Path(path): png_bytes(rgb)})[0]


def png_bytes(rgb: npt.ArrayLike) -> bytes:
    """A uint8 ``(H, W, 3)`` array (``colorize``/``overlay`` output) as the bytes of a PNG.

    >>> png_bytes(colorize(np.zeros((4, 4))))[:4]
    b'\\x89PNG'
    """
    pixels = np.asarray(rgb)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_options(activation: str, percentile: float, skew: float) -> None:
    _check_choice("activation", activation, Activation)
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if not (np.isfinite(skew) and skew > 0.0):
        raise ValueError(f"skew must be a positive number, got {skew}")


def _check_choice(name: str, value: str, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _as_chw(
    attribution: torch.Tensor | npt.ArrayLike, channels_last: bool = False
) -> npt.NDArray[np.float64]:
    """One example's attribution as float64 ``(C, H, W)``."""
    if isinstance(attribution, torch.Tensor):
        attribution = attribution.detach().to("cpu", torch.float64).numpy()
    values = np.asarray(attribution, dtype=np.float64)
    shape = values.shape
    if values.ndim == 4 and shape[0] == 1:
        values = values[0]
    elif values.ndim == 2:
        values = values[np.newaxis]
    if values.ndim == 3 and channels_last:
        values = values.transpose(2, 0, 1)
    elif values.ndim == 3 and values.shape[2] in _COLOUR and values.shape[0] not in _COLOUR:
        raise ValueError(
            f"attribution shaped {shape} looks channels-last (H, W, C); process reads "
            "(C, H, W): pass channels_last=True, or transpose it"
        )
    if values.ndim != 3 or values.size == 0:
        layouts = "(H, W, C) or (1, H, W, C)" if channels_last else "(C, H, W), (1, C, H, W)"
        raise ValueError(
            f"expected one attribution shaped {layouts} or (H, W), got {shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("attribution contains NaN or infinite values")
    return values


def _colormap(name: str) -> Colormap:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown colormap {name!r}; {hint}valid names include "
            f"{', '.join(_SUGGESTED_COLORMAPS)} (see matplotlib.colormaps)"
        ) from None


def _to_rgb(picture: Picture) -> npt.NDArray[np.uint8]:
    """A PIL image or (H, W), (H, W, 3|4) array (uint8, or float in [0, 1]) as uint8 RGB."""
    if isinstance(picture, Image.Image):
        return np.asarray(picture.convert("RGB"))
    pixels = np.asarray(picture)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., np.newaxis], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(
            f"expected an image shaped (H, W), (H, W, 3) or (H, W, 4), got {pixels.shape}"
        )
    pixels = pixels[..., :3]
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating) and 0 <= pixels.min() <= pixels.max() <= 1:
        return np.round(pixels * 255.0).astype(np.uint8)
    raise ValueError(f"image arrays must be uint8 or float in [0, 1], got {pixels.dtype}")


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
