"""Hugging Face text classifiers, loaded offline from a local `save_pretrained` directory.

`transformers` is an optional dependency (`pip install smoothgrad[text]`), imported only here
and only when a model is loaded. The loaded `TextModel` is an `nn.Module` whose forward
returns the logits tensor, and carries what explaining text needs: the tokenizer, the
labels (from `config.id2label`) and the input embedding layer (`get_input_embeddings()`),
where the noise goes.

Example (a directory written by `model.save_pretrained(d)` and `tokenizer.save_pretrained(d)`):

    model = smoothgrad.hf.load("hf:path/to/dir")
    batch = model.encode(["a fine film"])
    result = sg.smooth(model, batch["input_ids"], layer=model.embeddings,
                       forward_kwargs=batch.extra)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PREFIX", "Encoded", "TextModel", "is_hf", "load"]

PREFIX = "hf:"


def is_hf(name: object) -> bool:
    """Whether a model name asks for a Hugging Face directory (`hf:DIR`)."""
    return isinstance(name, str) and name.startswith(PREFIX)


@dataclass(frozen=True)
class Encoded:
    """Tokenized texts: `input_ids` (N, T) and the other forward arguments (`extra`)."""

    input_ids: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def attention_mask(self) -> Tensor:
        return self.extra.get("attention_mask", torch.ones_like(self.input_ids))

    def __getitem__(self, key: str) -> Tensor:
        return self.input_ids if key == "input_ids" else self.extra[key]


class TextModel(nn.Module):
    """A sequence classifier and its tokenizer; `forward(input_ids, ...)` returns logits."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the wrapper has no layers of its own
        self.tokenizer = tokenizer
        self.name = name
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        classes = int(getattr(model.config, "num_labels", len(id2label)))
        self.labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(classes)]

    @property
    def embeddings(self) -> nn.Module:
        """The input embedding layer (`get_input_embeddings()`): where the noise is added."""
        layer: nn.Module = self.model.get_input_embeddings()  # type: ignore[operator]
        return layer

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                **kwargs: Any) -> Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits: Tensor = output["logits"] if isinstance(output, Mapping) else output[0]
        return logits

    def encode(self, texts: str | Sequence[str], max_length: int | None = None) -> Encoded:
        """Tokenize `texts` (padded to the longest, truncated to `max_length`)."""
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(list(texts), padding=True, truncation=max_length is not None,
                               max_length=max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        tensors = {key: value.to(device) for key, value in batch.items()}
        ids = tensors.pop("input_ids")
        return Encoded(ids, tensors)

    def tokens(self, ids: Tensor, mask: Tensor | None = None) -> list[str]:
        """The token strings of one example's ids (real positions only when `mask` is given)."""
        keep = ids if mask is None else ids[mask.bool()]
        tokens: list[str] = self.tokenizer.convert_ids_to_tokens(keep.tolist())
        return tokens

    def top_k(self, encoded: Encoded, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable labels of the first text, with their softmax probabilities."""
        with torch.no_grad():
            probabilities = self(encoded.input_ids[:1], **{
                key: value[:1] for key, value in encoded.extra.items()}).softmax(dim=1)[0]
        values, indices = probabilities.topk(min(k, probabilities.shape[0]))
        return [(self.labels[i], float(v))
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def load(name: str | os.PathLike[str]) -> TextModel:
    """Load `hf:DIR` (or DIR): a local sequence-classification model and its tokenizer.

    Nothing is downloaded (`local_files_only=True`). The model is returned in eval mode.
    """
    text = os.fspath(name)
    path = Path(text[len(PREFIX):] if is_hf(text) else text).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"model: {text!r} is not a directory written by save_pretrained "
                         "(it needs config.json)")
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ImportError("hf: models need the transformers package: "
                          "pip install 'smoothgrad[text]'") from None
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return TextModel(model.eval(), tokenizer, f"{PREFIX}{path}")
