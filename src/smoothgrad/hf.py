"""Hugging Face text classifiers, loaded offline from a local `save_pretrained` directory.

`transformers` is an optional dependency (`pip install smoothgrad[text]`), imported only here
and only when a model is loaded; `smoothgrad.models.load("hf:DIR")` comes here. The loaded
`TextModel` is a `LoadedModel` whose call returns the logits tensor, and carries what
explaining text needs: the tokenizer, the labels (from `config.id2label`), the input
embedding layer (`get_input_embeddings()`), where the noise goes, and the most tokens the
model takes (`max_length`): longer texts are truncated to it with a warning, as tokenizer
pipelines do.

Example (a directory written by `model.save_pretrained(d)` and `tokenizer.save_pretrained(d)`):

    model = smoothgrad.hf.load("hf:path/to/dir")
    batch = model.encode(["a fine film"])
    result = sg.smooth(model, batch["input_ids"], layer=model.embeddings,
                       forward_kwargs=batch.extra)
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.models.errors import ModelError
from smoothgrad.models.loaded import LoadedModel, resolve_device
from smoothgrad.outputs import pick

__all__ = ["PREFIX", "CausalLM", "Encoded", "TextModel", "is_hf", "load", "load_causal_lm"]

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


class TextModel(LoadedModel):
    """A sequence classifier and its tokenizer, as a `LoadedModel` (`.module` is the
    Hugging Face model); calling it returns the logits tensor."""

    def __init__(self, module: nn.Module, tokenizer: Any, name: str,
                 device: str | torch.device = "cpu") -> None:
        config = getattr(module, "config", None)
        id2label = dict(getattr(config, "id2label", None) or {})
        classes = int(getattr(config, "num_labels", len(id2label)))
        labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(classes)]
        super().__init__(module, _no_images, labels, name, device=device)
        self.tokenizer = tokenizer

    @property
    def embeddings(self) -> nn.Module:
        """The input embedding layer (`get_input_embeddings()`): where the noise is added."""
        layer: nn.Module = self.module.get_input_embeddings()  # type: ignore[operator]
        return layer

    @property
    def max_length(self) -> int | None:
        """The most tokens the model takes (specials included), None when it has no limit.

        The tokenizer's `model_max_length` where it is set, and the position embeddings'
        size (`config.max_position_embeddings`, less RoBERTa's offset of `padding_idx + 1`).
        """
        limits = []
        declared = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(declared, int) and 0 < declared < 10**9:  # "unset" is a huge number
            limits.append(declared)
        positions = getattr(getattr(self.module, "config", None), "max_position_embeddings",
                            None)
        if isinstance(positions, int) and positions > 0:
            embeddings = getattr(getattr(self.module, "base_model", None), "embeddings", None)
            offset = getattr(embeddings, "padding_idx", None)  # RoBERTa counts from pad + 1
            limits.append(positions - (offset + 1 if isinstance(offset, int) else 0))
        return min(limits) if limits else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """`module(input_ids, attention_mask=..., ...)`'s logits (see `smoothgrad.outputs`)."""
        return pick(self.module(*args, **kwargs))

    def preprocess(self, image: Any) -> Tensor:
        raise ModelError(f"{self.name} is a text model: tokenize with encode(texts)")

    def crop(self, image: Any) -> Any:
        raise ModelError(f"{self.name} is a text model: it has no picture to crop")

    def encode(self, texts: str | Sequence[str], max_length: int | None = None) -> Encoded:
        """Tokenize `texts`, padded to the longest and truncated to `max_length` tokens.

        Without `max_length`, texts longer than the model takes (`self.max_length`) are
        truncated to it, with one warning saying how many tokens each lost. A `max_length`
        above the model's is refused.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = self.max_length
        if max_length is not None and limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} is more than the {limit} tokens "
                             f"{self.name or 'the model'} takes")
        if max_length is None and limit is not None:
            self._warn_truncated(texts, limit)
        cut = max_length if max_length is not None else limit
        batch = self.tokenizer(texts, padding=True, truncation=cut is not None,
                               max_length=cut, return_tensors="pt")
        tensors = {key: value.to(self.device) for key, value in batch.items()}
        ids = tensors.pop("input_ids")
        return Encoded(ids, tensors)

    def _warn_truncated(self, texts: list[str], limit: int) -> None:
        """One warning naming each text longer than `limit` tokens and what it loses."""
        lengths = [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]
        long = [(i, n - limit) for i, n in enumerate(lengths, start=1) if n > limit]
        if not long:
            return
        side = "first" if getattr(self.tokenizer, "truncation_side", "right") == "left" else "last"
        lost = ", ".join(f"text {i} lost its {side} {dropped:,}" for i, dropped in long[:5])
        more = f" (and {len(long) - 5} more texts)" if len(long) > 5 else ""
        warnings.warn(f"{self.name or 'the model'} takes at most {limit} tokens: {lost} "
                      f"tokens{more}, which are not explained (max_length sets the cut)",
                      stacklevel=3)

    def tokens(self, ids: Tensor, mask: Tensor | None = None) -> list[str]:
        """The token strings of one example's ids (real positions only when `mask` is given)."""
        keep = ids if mask is None else ids[mask.bool()]
        tokens: list[str] = self.tokenizer.convert_ids_to_tokens(keep.tolist())
        return tokens


def _no_images(image: Any) -> Tensor:
    raise ModelError("a text model takes text: tokenize with encode(texts)")


def _saved_directory(name: str | os.PathLike[str]) -> tuple[str, Path]:
    """`name` as given and the directory it names, checked to hold a save_pretrained model
    and transformers importable (ModelError otherwise)."""
    text = os.fspath(name)
    path = Path(text[len(PREFIX):] if is_hf(text) else text).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"model: {text!r} is not a directory written by save_pretrained "
                         "(it needs config.json)")
    if importlib.util.find_spec("transformers") is None:
        raise ModelError("hf: models need the transformers package: "
                         "pip install 'smoothgrad[text]'")
    return text, path


def load(name: str | os.PathLike[str], device: str | torch.device | None = None, *,
         progress: bool = True, quiet: bool = False) -> TextModel:
    """Load `hf:DIR` (or DIR): a local sequence-classification model and its tokenizer.

    Nothing is downloaded (`local_files_only=True`). The model is returned in eval mode on
    `device` (None: the CPU; "auto": see `smoothgrad.models.resolve_device`). While loading,
    `progress=False` hides transformers' progress bars, and `quiet` its messages too (its
    settings are restored afterwards).
    """
    _, path = _saved_directory(name)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = resolve_device(device)  # a device this machine lacks: refused before loading
    with _silenced(bars=not progress or quiet, messages=quiet):
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return TextModel(model.eval().to(target), tokenizer, f"{PREFIX}{path}", device=target)


@dataclass(frozen=True)
class CausalLM:
    """A causal language model (`module`, a Hugging Face `*ForCausalLM` in eval mode) and its
    tokenizer, for `smoothgrad.text.explain_generation(lm.module, lm.tokenizer, ...)`."""

    module: nn.Module
    tokenizer: Any
    name: str
    device: torch.device


def load_causal_lm(name: str | os.PathLike[str], device: str | torch.device | None = None,
                   *, progress: bool = True, quiet: bool = False) -> CausalLM:
    """Load `hf:DIR` (or DIR): a local causal LM (`AutoModelForCausalLM`) and its tokenizer.

    Nothing is downloaded (`local_files_only=True`); the model is returned in eval mode on
    `device` (None: the CPU; "auto": see `smoothgrad.models.resolve_device`). `progress` and
    `quiet` are `load`'s.
    """
    text, path = _saved_directory(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device)  # a device this machine lacks: refused before loading
    with _silenced(bars=not progress or quiet, messages=quiet):
        try:
            model: nn.Module = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except ValueError as exc:  # a config of a model that has no causal-LM class
            raise ModelError(f"model: {text!r} is not a causal language model "
                             f"({str(exc).splitlines()[0]})") from None
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return CausalLM(model.eval().to(target), tokenizer, f"{PREFIX}{path}", target)


@contextlib.contextmanager
def _silenced(*, bars: bool, messages: bool) -> Iterator[None]:
    """transformers without its progress `bars` and (`messages`) with errors only; its
    settings restored afterwards."""
    from transformers.utils import logging as hf_logging

    switch: Any = hf_logging  # its bar switches are untyped
    shown, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    if bars:
        switch.disable_progress_bar()
    if messages:
        hf_logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if shown:
            switch.enable_progress_bar()
