"""Input pipelines: a picture in, the model's input tensor out, and the geometry
(``crop``: the pixels the model sees) of each.

Example:
    >>> from PIL import Image
    >>> imagenet_crop(Image.new("RGB", (640, 480))).size
    (224, 224)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Crop", "Preprocess", "efficientnet_lite0_crop",
           "efficientnet_lite0_preprocess", "imagenet_crop", "imagenet_preprocess",
           "torchvision_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Preprocess = Callable[[Image.Image], torch.Tensor]
Crop = Callable[[Image.Image], Image.Image]


def _pixels(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 tensor of 0..255 values."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def efficientnet_lite0_crop(image: Image.Image) -> Image.Image:
    """The pixels EfficientNet-Lite0 sees: centre square of 224/256 of the shorter side,
    bicubic resize to 224x224 (the geometry of :func:`efficientnet_lite0_preprocess`).

    Example:
        >>> efficientnet_lite0_crop(Image.new("RGB", (451, 300))).size
        (224, 224)
    """
    width, height = image.size
    crop = int(224 / 256 * min(width, height))
    left, top = (width - crop + 1) // 2, (height - crop + 1) // 2
    image = image.crop((left, top, left + crop, top + crop))
    return image.resize((224, 224), Image.Resampling.BICUBIC)


def efficientnet_lite0_preprocess(image: Image.Image) -> torch.Tensor:
    """EfficientNet-Lite eval pipeline (tensorflow/tpu ``preprocessing.py``, ``lite/`` builder).

    :func:`efficientnet_lite0_crop`, then ``(pixel - 127) / 128`` so values lie in [-1, 1].
    Resizing uses PIL's bicubic filter, which antialiases, where TensorFlow's
    ``resize_bicubic`` does not: probabilities can differ from the TensorFlow reference in
    the second decimal.

    Example:
        >>> efficientnet_lite0_preprocess(Image.new("RGB", (451, 300))).shape
        torch.Size([1, 3, 224, 224])
    """
    return (_pixels(efficientnet_lite0_crop(image)) - 127.0) / 128.0


def imagenet_crop(image: Image.Image) -> Image.Image:
    """The pixels a classic ImageNet model sees: shorter side resized to 256 (bilinear),
    centre crop 224x224 (the geometry of :func:`imagenet_preprocess`).

    Example:
        >>> imagenet_crop(Image.new("RGB", (640, 480))).size
        (224, 224)
    """
    width, height = image.size
    long = int(256 * max(width, height) / min(width, height))
    size = (256, long) if width <= height else (long, 256)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    return image.crop((left, top, left + 224, top + 224))


def imagenet_preprocess(image: Image.Image) -> torch.Tensor:
    """Classic ImageNet eval pipeline, as torchvision's ``Resize(256)``, ``CenterCrop(224)``.

    :func:`imagenet_crop`, scaled to [0, 1] and normalised with the ImageNet mean and std.

    Example:
        >>> imagenet_preprocess(Image.new("RGB", (640, 480))).shape
        torch.Size([1, 3, 224, 224])
    """
    x = _pixels(imagenet_crop(image)) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def torchvision_crop(transforms: Any) -> Crop | None:
    """The geometry of torchvision's ImageClassification transforms (resize, centre crop)."""
    resize, crop = getattr(transforms, "resize_size", None), getattr(transforms, "crop_size", None)
    if resize is None or crop is None:
        return None
    from torchvision.transforms import functional

    def geometry(image: Image.Image) -> Image.Image:
        image = functional.resize(image.convert("RGB"), resize,
                                  interpolation=transforms.interpolation,
                                  antialias=getattr(transforms, "antialias", True))
        cropped: Image.Image = functional.center_crop(image, crop)
        return cropped

    return geometry
