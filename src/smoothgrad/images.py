"""Image loading that either returns an 8-bit RGB picture or fails with one clear line.

Example:
    >>> from smoothgrad import images
    >>> images.load(images.sample_path("chelsea")).size
    (451, 300)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from smoothgrad.errors import UserError

__all__ = ["MAX_PIXELS", "ImageError", "load", "sample_images", "sample_path"]

MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused as possible decompression bombs."""

_DATA = Path(__file__).with_name("data")
_SAMPLES = {"chelsea": "chelsea.jpg", "coffee": "coffee.jpg"}


class ImageError(UserError, ValueError):
    """An image cannot be read; the message is one line naming the file."""


def _to_uint8(image: Image.Image) -> Image.Image:
    """Scale a single-channel 16/32-bit integer or float image to 8-bit "L", without clipping.

    16-bit data is divided by 257 (65535 -> 255). Mode "I" holding values within 0..65535 is
    taken as 16-bit (how PIL decodes many 16-bit files); other "I" and "F" data are stretched
    from their minimum to their maximum, except floats already within [0, 1] (scaled by 255).
    """
    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        array = array / 257.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        array = array * 255.0
    else:
        array = (array - low) * (255.0 / (high - low)) if high > low else array * 0.0
    return Image.fromarray(np.rint(array).astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent areas are composited onto white."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_uint8(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file (JPEG, PNG, WebP, TIFF, BMP, ...) as 8-bit RGB.

    EXIF orientation is applied. Grayscale and palette images become RGB; transparency is
    composited onto white (so transparent areas do not turn black); 16-bit and float images
    are rescaled to 8 bits, not clipped. Missing, unreadable, truncated or non-image files,
    and images over :data:`MAX_PIXELS` pixels, raise :class:`ImageError`.

    Example:
        >>> load(sample_path("coffee")).mode
        'RGB'
    """
    try:
        with warnings.catch_warnings():
            # our own MAX_PIXELS check below replaces PIL's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"cannot read image '{path}': {width}x{height} pixels is more than "
                        f"the limit of {MAX_PIXELS} (possible decompression bomb)"
                    )
                image.load()  # full decode here, so truncated data fails now
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image '{path}': {_reason(exc)}") from exc


def sample_images() -> dict[str, Path]:
    """Bundled sample photos (CC0, from scikit-image), name -> path.

    Example:
        >>> sorted(sample_images())
        ['chelsea', 'coffee']
    """
    return {name: _DATA / file for name, file in _SAMPLES.items()}


def sample_path(name: str) -> Path:
    """Path of bundled sample photo ``name`` (see :func:`sample_images`).

    Example:
        >>> sample_path("chelsea").name
        'chelsea.jpg'
    """
    if name not in _SAMPLES:
        raise ImageError(f"unknown sample image {name!r}; available: {', '.join(_SAMPLES)}")
    return _DATA / _SAMPLES[name]
