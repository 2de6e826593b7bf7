"""Pictures of results for notebooks: input | plain map | smoothed map | standard error.

`show(result, model)` returns a `Panels` object that renders itself when it is a cell's
value (`_repr_html_`); nothing is drawn until then, and nothing is displayed eagerly. The
plain map (the base method without noise, one extra pass) needs the model, so it appears
only when `show` is given one; `SmoothResult` itself renders input | smoothed | standard
error. `save` writes the same panels as a matplotlib figure (imported lazily).

Example:
    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
    ...                             torch.nn.Linear(4 * 6 * 6, 3)).eval()
    >>> x = torch.rand(1, 3, 8, 8)
    >>> result = sg.smooth(model, x, samples=4)
    >>> panels = show(result, model, x)
    >>> panels.titles
    ['Input', 'Gradient', 'SmoothGrad + Gradient', 'Standard error']
    >>> "relative error" in panels._repr_html_()
    True
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor, nn

from smoothgrad import viz
from smoothgrad.methods.registry import title as method_title
from smoothgrad.stats import AGGREGATE_TITLES

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Shown(Protocol):
    """What these pictures read of a result: a `smoothgrad.SmoothResult` is one. (Named by
    its parts rather than imported: a result draws itself through this module.)"""

    @property
    def attribution(self) -> Any: ...
    @property
    def stderr(self) -> Any: ...
    @property
    def sigma(self) -> Any: ...
    @property
    def inputs(self) -> Any: ...
    @property
    def samples(self) -> int: ...
    @property
    def target(self) -> Tensor | None: ...
    @property
    def flip_rate(self) -> Tensor | None: ...
    @property
    def probability(self) -> Tensor | None: ...
    @property
    def aggregate(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def plain_pass(self) -> Callable[..., Tensor] | None: ...
    def relative_error(self) -> Tensor: ...


__all__ = [
    "Panels", "caption", "explained", "figure", "html", "input_picture", "map_picture", "row",
    "show",
]

_PANEL_PIXELS = 224
"""Panels are drawn this many pixels wide in notebooks (maps are resized, nearest)."""




def input_picture(x: Tensor) -> npt.NDArray[np.uint8]:
    """One example ``(C, H, W)`` or ``(1, C, H, W)`` of a model's input as RGB for display.

    The tensor the model sees is stretched from its minimum to its maximum (all channels
    together): exact colours for inputs normalised by one scale and offset, such as
    EfficientNet-Lite's ``(p - 127) / 128``; slightly shifted colours where each channel has
    its own mean and std (ImageNet normalisation). One channel is shown as grey.

    >>> input_picture(torch.zeros(1, 3, 2, 2)).shape
    (2, 2, 3)
    """
    values = x.detach().to("cpu", torch.float64)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 3 or values.shape[0] not in (1, 3):
        raise ValueError(f"expected one image shaped (C, H, W) with 1 or 3 channels, "
                         f"got {tuple(x.shape)}")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else values * 0.0
    pixels = (scaled * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def map_picture(attribution: Tensor | npt.ArrayLike, *, colormap: str | None = None,
                **style: Any) -> npt.NDArray[np.uint8]:
    """An attribution of one example as RGB: `viz.process` (``style``) then `viz.colorize`.

    >>> map_picture(np.ones((3, 4, 4))).shape
    (4, 4, 3)
    """
    activation = style.get("activation", "abs")
    return viz.colorize(viz.process(attribution, **style), colormap=colormap,
                        activation=activation)


def explained(result: Shown, index: int = 0,
              labels: Sequence[str] | None = None) -> str | None:
    """The class example ``index`` of ``result`` explains and its probability, as every
    figure names it (`viz.class_label`); None for a callable target.

    >>> import torch, smoothgrad as sg
    >>> model = torch.nn.Linear(4, 3).eval()
    >>> explained(sg.smooth(model, torch.arange(4.0)[None], target=2, samples=2), 0, "abc")[:4]
    'c (p'
    """
    if result.target is None:
        return None
    probability = None if result.probability is None else float(result.probability[index])
    return viz.class_label(int(result.target[index]), probability, labels)


def caption(result: Shown, index: int = 0,
            labels: Sequence[str] | None = None, x: Tensor | None = None) -> str:
    """One line about example ``index``: the explained class and its probability, n, σ,
    relative error and flip rate.

    σ is also given as a share of the input's range when ``x`` is known.
    """
    parts = []
    name = explained(result, index, labels)
    if name is not None:
        parts.append(f"explaining {name}")
    parts.append(f"n = {result.samples}")
    sigma = float(result.sigma[index])
    share = ""
    if x is not None:
        spread = float(x[index].max() - x[index].min())
        share = f" ({sigma / spread:.0%} of the range)" if spread > 0 else ""
    parts.append(f"σ = {sigma:.3g}{share}")
    parts.append(f"relative error {float(result.relative_error()[index]):.2f}")
    if result.flip_rate is not None:
        parts.append(f"flip rate {float(result.flip_rate[index]):.0%}")
    return " · ".join(parts)


@dataclass(frozen=True)
class Panels:
    """A row of pictures per example with titles and a caption; renders in notebooks.

    ``rows[i]`` holds example i's pictures (uint8 ``(H, W, 3)``), ``titles`` the column
    titles, ``captions[i]`` example i's caption line.
    """

    rows: list[list[npt.NDArray[np.uint8]]]
    titles: list[str]
    captions: list[str] = field(default_factory=list)
    quality: int = 65
    """JPEG quality of the pictures embedded in notebooks (keeps notebooks light)."""
    lossless: bool = False
    """Embed PNG instead (plots with thin lines)."""

    def __repr__(self) -> str:
        return f"Panels({len(self.rows)} row(s): {' | '.join(self.titles)})"

    def _repr_html_(self) -> str:
        out = ['<div class="smoothgrad-panels">']
        for r, row in enumerate(self.rows):
            out.append('<div style="display:flex;gap:6px;align-items:flex-start">')
            for title, picture in zip(self.titles, row, strict=False):
                kind, data = self._encode(picture)
                width = "" if self.lossless else f' width="{_PANEL_PIXELS}"'
                out.append(
                    f'<figure style="margin:0;text-align:center">'
                    f'<img src="data:image/{kind};base64,{data}"{width} '
                    f'style="image-rendering:pixelated" alt="{escape(title)}">'
                    f'<figcaption>{escape(title)}</figcaption></figure>')
            out.append("</div>")
            if r < len(self.captions) and self.captions[r]:
                out.append(f'<p style="margin:2px 0 10px">{escape(self.captions[r])}</p>')
        out.append("</div>")
        return "".join(out)

    def _encode(self, picture: npt.NDArray[np.uint8]) -> tuple[str, str]:
        image = Image.fromarray(picture)
        if image.width < _PANEL_PIXELS and not self.lossless:  # enlarge without blurring
            scale = -(-_PANEL_PIXELS // image.width)
            image = image.resize((image.width * scale, image.height * scale),
                                 Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        if self.lossless:
            image.save(buffer, format="PNG", optimize=True)
        else:
            image.save(buffer, format="JPEG", quality=self.quality)
        return ("png" if self.lossless else "jpeg"), base64.b64encode(
            buffer.getvalue()).decode("ascii")

    def figure(self) -> Figure:
        """The panels as a matplotlib figure (captions as the title or row labels)."""
        if len(self.rows) == 1:
            return viz.row_figure(self.rows[0], self.titles[:len(self.rows[0])],
                                  suptitle=self.captions[0] if self.captions else None)
        labels = self.captions if len(self.captions) == len(self.rows) else [""] * len(self.rows)
        rows = [viz.Row(row[0], row[1:], label) for row, label in zip(self.rows, labels,
                                                                      strict=True)]
        return viz.comparison_figure(rows, titles=self.titles)

    def save(self, path: str | os.PathLike[str], formats: Sequence[str] = ("png",)) -> list[Path]:
        """Write the figure (see `viz.save`) and return the paths written."""
        return viz.save(self.figure(), path, formats)


def row(panels: dict[str, Tensor | npt.NDArray[Any]], caption: str = "",
        **style: Any) -> Panels:
    """One row of titled panels: uint8 ``(H, W, 3)`` arrays are shown as they are (photos,
    `input_picture`), anything else is an attribution drawn with `map_picture` (``style``).

    >>> row({"Input": np.zeros((4, 4, 3), np.uint8), "Map": torch.ones(3, 4, 4)}).titles
    ['Input', 'Map']
    """
    pictures = [value if isinstance(value, np.ndarray) and value.dtype == np.uint8
                and value.ndim == 3 else map_picture(value, **style) for value in panels.values()]
    return Panels([pictures], list(panels), [caption])


def figure(fig: Figure) -> Panels:
    """A matplotlib figure as a `Panels` (embedded as PNG), e.g. `viz.convergence_figure`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with Image.open(buffer) as image:
        return Panels([[np.asarray(image.convert("RGB"))]], [""], lossless=True)


def show(
    result: Shown,
    model: nn.Module | None = None,
    x: Tensor | None = None,
    *,
    examples: int = 8,
    labels: Sequence[str] | None = None,
    method: str | Callable[..., Tensor] | None = None,
    **style: Any,
) -> Panels:
    """Input | plain map | smoothed map | standard error for each example of ``result``.

    - model: when given, the plain map is the base method on the clean input (one pass,
      same method and target as the result, no noise) and labels default to its
      ``labels``; without it the plain map is left out. The pass is the one the result
      keeps from `smooth` (`SmoothResult.plain_pass`, with the call's method, a callable
      included); ``method`` gives another base method for it.
    - x: the explained input; by default the one the result keeps (``result.inputs``).
      Without either, the input panel is left out too.
    - examples: at most this many rows (the first examples of the batch).
    - style: `viz.process` options (activation, percentile, skew, reduce).

    Only image batches ``(N, 1|3, H, W)`` can be drawn; others raise ValueError.
    """
    x = x if x is not None else result.inputs
    x = x if isinstance(x, Tensor) else None  # a tuple input: no input panel
    attribution = result.attribution
    if not _is_image(attribution):
        shape = tuple(attribution.shape) if isinstance(attribution, Tensor) else "a tuple"
        raise ValueError(f"only images (N, 1|3, H, W) can be drawn, got a result shaped {shape}")
    count = min(examples, attribution.shape[0])
    plain = None
    if model is not None:
        if x is None:
            raise ValueError("the plain map needs the input: pass x, or a result with inputs")
        plain = _plain_map(model, x[:count], result, method)
        labels = labels if labels is not None else getattr(model, "labels", None)
    title = method_title(result.method)
    titles = (["Input"] if x is not None else []) + ([title] if plain is not None else []) + [
        f"{AGGREGATE_TITLES.get(result.aggregate, result.aggregate)} + {title}", "Standard error"]
    rows = []
    for i in range(count):
        row = [input_picture(x[i])] if x is not None else []
        if plain is not None:
            row.append(map_picture(plain[i], **style))
        row.append(map_picture(attribution[i], **style))
        row.append(map_picture(result.stderr[i], colormap="magma",
                               **{**style, "activation": "abs"}))
        rows.append(row)
    return Panels(rows, titles, [caption(result, i, labels, x) for i in range(count)])


def html(result: Shown) -> str | None:
    """What a result shows as a notebook cell's value: input | smoothed map | standard error.

    None (the plain text repr) for results that are not images, or have no finite map.
    """
    attribution = result.attribution
    if not _is_image(attribution) or not bool(attribution.isfinite().all()):
        return None
    inputs = result.inputs
    if not (isinstance(inputs, Tensor) and inputs.shape == attribution.shape):
        inputs = None
    return show(result, x=inputs)._repr_html_()


def _is_image(value: Any) -> bool:
    return isinstance(value, Tensor) and value.ndim == 4 and value.shape[1] in (1, 3)


def _plain_map(model: nn.Module, x: Tensor, result: Shown,
               method: str | Callable[..., Tensor] | None) -> Tensor:
    """The plain map by the pass the result keeps from `smooth` (a result draws what it
    holds; it never runs the engine itself)."""
    if result.plain_pass is None:
        raise ValueError("this result keeps no plain pass (it was not made by smooth): "
                         "draw it without the model")
    target = None if result.target is None else result.target[:x.shape[0]]
    return result.plain_pass(model, x, target, method)
