"""Explain a text classifier: SmoothGrad at the input embeddings, one score per token.

`explain_text` tokenizes the texts, runs `smooth` with the noise at the model's embedding
layer (padding masked out), reduces each token's embedding-level map to a score
(`smoothgrad.tokens`) and returns coloured, labelled `TokenScores`.

Example (`model = smoothgrad.hf.load("hf:DIR")`):

    shown = explain_text(model, ["a fine film", "dull"], samples=50)
    shown.texts[0].to_text()      # "[CLS](+0.01) a(+0.20) fine(+0.91) ..."
    shown                         # renders in Jupyter
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from smoothgrad.engine import smooth
from smoothgrad.generation import GenerationResult, explain_generation
from smoothgrad.hf import TextModel
from smoothgrad.result import SmoothResult
from smoothgrad.tokens import Normalize, TokenScores, html_page, token_scores

__all__ = ["TEXT_METHODS", "GenerationResult", "TextMaps", "default_reduce",
           "explain_generation", "explain_text"]

_SIGNED = ("input_x_gradient", "integrated_gradients", "deeplift")
TEXT_METHODS = ("gradient", "input_x_gradient", "guided_backprop", "integrated_gradients",
                "deeplift")
"""The built-in methods that explain a text at its embeddings (Grad-CAM needs a
convolution's channels, which a transformer has not)."""


def default_reduce(method: object) -> str:
    """"sum" (signed) for methods that multiply by the input, else "norm" (magnitude)."""
    return "sum" if method in _SIGNED else "norm"


@dataclass(frozen=True)
class TextMaps:
    """The smoothing result (at the embedding layer), one `TokenScores` per text, and the
    model's class probabilities for each (clean) text, (N, classes)."""

    result: SmoothResult
    texts: list[TokenScores]
    probabilities: torch.Tensor | None = None

    def _repr_html_(self) -> str:
        return "\n".join(text._repr_html_() for text in self.texts)

    def to_html(self, heading: str = "smoothgrad token scores") -> str:
        """A standalone HTML page with every text."""
        return html_page(heading, self._repr_html_())


def explain_text(
    model: TextModel,
    texts: str | Sequence[str],
    *,
    method: str | Any = "gradient",
    reduce: str | None = None,
    normalize: Normalize = None,
    max_length: int | None = None,
    **options: Any,
) -> TextMaps:
    """SmoothGrad of `texts` at `model.embeddings`, reduced to token scores.

    `reduce`: "sum", "norm" or "dot" (see `smoothgrad.tokens`); None picks
    `default_reduce(method)`. `options` go to `smooth` (samples, noise, target, seed, ...).
    Texts longer than `max_length` tokens are cut there; by default at the most the model
    takes, with a warning saying how many tokens each text lost (`TextModel.encode`).
    Methods that work at the embeddings: `TEXT_METHODS`, or any callable.
    """
    encoded = model.encode(texts, max_length=max_length)
    result = smooth(model, encoded.input_ids, method=method, layer=model.embeddings,
                    forward_kwargs=encoded.extra, **options)
    mask = encoded.attention_mask
    attribution = result.attribution
    assert isinstance(attribution, torch.Tensor) and isinstance(result.inputs, torch.Tensor)
    scores = token_scores(attribution, reduce or default_reduce(method),  # type: ignore[arg-type]
                          embeddings=result.inputs, mask=mask, normalize=normalize)
    with torch.no_grad():
        probabilities = model(encoded.input_ids, **encoded.extra).softmax(dim=1)
    shown = []
    for i in range(encoded.input_ids.shape[0]):
        keep = mask[i].bool()
        label = None if result.target is None else int(result.target[i])
        shown.append(TokenScores(
            model.tokens(encoded.input_ids[i], keep), scores[i][keep],
            label=None if label is None else model.labels[label],
            probability=None if label is None else float(probabilities[i, label])))
    return TextMaps(result, shown, probabilities)
