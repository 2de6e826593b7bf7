"""Attributions to pictures: ``process`` (attribution -> 2-D map), ``colorize`` (map -> RGB),
``overlay``, the figure ``Style``, PNG bytes and files.

>>> colorize(process(np.ones((3, 2, 2))), colormap="gray").shape
(2, 2, 3)
"""

from __future__ import annotations

import difflib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from smoothgrad.files import write_all
from smoothgrad.maps import Activation, Reduce, to_map

if TYPE_CHECKING:
    from matplotlib.colors import Colormap

__all__ = ["Activation", "Picture", "Reduce", "Style", "colorize", "overlay", "png_bytes",
           "process", "save_heatmap_png"]

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
