"""How pictures name what they explain: one label for a class and its probability, and a
map with that label written under it.

Every figure, caption and page that shows a map names the class the map explains with
`class_label`, so they all agree (the explained class, not the top prediction).

>>> class_label(1, 0.25, ["cat", "dog"]), class_label(7, 0.5), class_label("positive")
('dog (p = 0.250)', 'class 7 (p = 0.500)', 'positive')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

__all__ = ["CAPTION_WIDTH", "captioned", "class_label"]

CAPTION_WIDTH = 224
"""`captioned` enlarges narrower maps (nearest, a whole factor) to at least this width."""


def class_label(target: int | str, probability: float | None = None,
                labels: Sequence[str] | None = None) -> str:
    """The explained class as pictures name it: its label (an index is looked up in
    `labels`, else shown as "class N") and, when known, its probability."""
    if isinstance(target, str):
        name = target
    elif labels is not None and 0 <= int(target) < len(labels):
        name = str(labels[int(target)])
    else:
        name = f"class {int(target)}"
    return name if probability is None else f"{name} (p = {float(probability):.3f})"


def captioned(picture: npt.NDArray[np.uint8], caption: str) -> npt.NDArray[np.uint8]:
    """`picture` (uint8 ``(H, W, 3)``) with `caption` in black on a white band under it.

    A picture narrower than CAPTION_WIDTH is first enlarged by a whole factor (nearest, so
    each map pixel stays a block of one colour); a caption too wide for the band is set
    smaller, then cut with "…".

    >>> captioned(np.zeros((32, 32, 3), np.uint8), "dog (p = 0.250)").shape
    (245, 224, 3)
    """
    pixels = np.asarray(picture)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
    scale = max(1, -(-CAPTION_WIDTH // pixels.shape[1]))
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    width = pixels.shape[1]
    font, text = _fitting(caption, width - 6)
    band = max(14, round(_size(font) * 1.6))
    image = Image.new("RGB", (width, pixels.shape[0] + band), "white")
    image.paste(Image.fromarray(pixels), (0, 0))
    ImageDraw.Draw(image).text((width / 2, pixels.shape[0] + band / 2), text, fill="black",
                               font=font, anchor="mm")
    return np.asarray(image)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1, with FreeType
    except TypeError:
        return ImageFont.load_default()


def _size(font: Any) -> int:
    return int(getattr(font, "size", 11))


def _fitting(text: str, width: int) -> tuple[Any, str]:
    """The largest font from 13 down to 9 pixels in which `text` fits `width`, else the
    smallest with `text` cut to fit."""
    for size in range(13, 8, -1):
        font = _font(size)
        if font.getlength(text) <= width:
            return font, text
    while len(text) > 1 and font.getlength(text + "…") > width:
        text = text[:-1]
    return font, text + "…"
