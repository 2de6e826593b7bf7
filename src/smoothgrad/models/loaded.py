"""A loaded model (`LoadedModel`: the module with its preprocess, labels and name) and the
device it runs on (`resolve_device`): the pieces `smoothgrad.models` and `smoothgrad.hf` share.

Example:
    >>> resolve_device(None)
    device(type='cpu')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from smoothgrad.models.errors import ModelError
from smoothgrad.models.labels import class_index
from smoothgrad.models.pipelines import Crop

__all__ = ["LoadedModel", "resolve_device"]


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
