"""Token scores: reduce an embedding-level map (N, T, D) to one score per token, and show it.

Three reductions are in use, and they answer different questions:

- `"sum"`: the signed sum over D (Captum's BERT tutorials, then divided by the L2 norm);
- `"norm"`: the L2 norm over D, unsigned (inseq's default for gradient methods);
- `"dot"`: gradient · embedding, Σ_d a_d · e_d with the clean embedding e (AllenNLP's
  SimpleGradient, which then divides |score| by its L1 norm); on a smoothed *gradient* this is
  the dot product of the mean gradient with the embedding.

`normalize="l1"` or `"l2"` divides each example's scores by their L1 or L2 norm over its real
tokens. Padding (`mask` 0) scores exactly 0.

Example:
    >>> import torch
    >>> a = torch.tensor([[[1.0, -3.0], [0.5, 0.5]]])
    >>> token_scores(a, "sum")
    tensor([[-2.,  1.]])
    >>> TokenScores(["good", "film"], [0.9, -0.2]).to_text()
    'good(+0.9) film(-0.2)'
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["REDUCTIONS", "Normalize", "Reduction", "TokenScores", "contrast", "html_page", "ink",
           "token_scores"]

Reduction = Literal["sum", "norm", "dot"]
Normalize = Literal["l1", "l2"] | None
REDUCTIONS: tuple[str, ...] = ("sum", "norm", "dot")
COLORMAP = "RdBu_r"
"""Diverging: red for evidence for the class, blue against, white for none."""


def token_scores(
    attribution: Tensor,
    reduce: Reduction = "sum",
    *,
    embeddings: Tensor | None = None,
    mask: Tensor | None = None,
    normalize: Normalize = None,
) -> Tensor:
    """Scores (N, T) from an attribution (N, T, D, ...) by `reduce` (see the module docs)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    if normalize not in (None, "l1", "l2"):
        raise ValueError(f"normalize must be None, 'l1' or 'l2', got {normalize!r}")
    if not isinstance(attribution, Tensor) or attribution.dim() < 3:
        got = tuple(attribution.shape) if isinstance(attribution, Tensor) else attribution
        raise ValueError(f"attribution must be shaped (N, T, D, ...), got {got}")
    flat = attribution.flatten(2)
    if reduce == "dot":
        if embeddings is None or embeddings.shape != attribution.shape:
            raise ValueError("reduce='dot' needs embeddings shaped like the attribution "
                             "(result.inputs of a layer run)")
        scores = (flat * embeddings.flatten(2)).sum(dim=2)
    elif reduce == "sum":
        scores = flat.sum(dim=2)
    else:
        scores = flat.norm(dim=2)
    if mask is not None:
        scores = scores * mask.to(scores.dtype)
    if normalize is not None:
        size = scores.abs().sum(dim=1) if normalize == "l1" else scores.norm(dim=1)
        scores = scores / torch.where(size > 0, size, 1.0).unsqueeze(1)
    return scores


def _luminance(rgb: Sequence[float]) -> float:
    """WCAG 2 relative luminance of an sRGB colour given as 0..255 channels."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4
              for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: Sequence[float], second: Sequence[float]) -> float:
    """WCAG 2 contrast ratio of two RGB colours (0..255), from 1 (none) to 21.

    >>> round(contrast((0, 0, 0), (255, 255, 255)), 1)
    21.0
    """
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def ink(background: Sequence[float]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with `background` (RGB, 0..255): the text
    colour of a token drawn on it.

    >>> ink((103, 0, 31)), ink((247, 247, 247))
    ((255, 255, 255), (0, 0, 0))
    """
    black, white = (0, 0, 0), (255, 255, 255)
    return black if contrast(background, black) >= contrast(background, white) else white


def html_page(heading: str, body: str) -> str:
    """A standalone UTF-8 HTML page: `heading` (escaped) above `body` (HTML)."""
    title = html.escape(heading)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f"</head>\n<body>\n<h3>{title}</h3>\n{body}\n</body></html>\n")


@dataclass
class TokenScores:
    """One text's tokens and their scores, rendered as coloured HTML, terminal text or a figure.

    `label` and `probability` describe the explained class, when known. In Jupyter the
    object renders itself (`_repr_html_`).
    """

    tokens: Sequence[str]
    scores: Sequence[float] | npt.NDArray[np.floating[Any]] | Tensor
    label: str | None = None
    probability: float | None = None
    values: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        scores = self.scores
        if isinstance(scores, Tensor):
            scores = scores.detach().cpu().double().numpy()
        self.values = [float(v) for v in np.asarray(scores, dtype=np.float64).reshape(-1)]
        if len(self.values) != len(self.tokens):
            raise ValueError(f"scores has {len(self.values)} entries for {len(self.tokens)} "
                             "tokens")

    def colors(self) -> list[tuple[int, int, int]]:
        """One RGB colour per token from the diverging colormap, symmetric around 0."""
        from matplotlib import colormaps

        top = max((abs(v) for v in self.values), default=0.0) or 1.0
        cmap = colormaps[COLORMAP]
        return [tuple(round(255 * c) for c in cmap(0.5 + 0.5 * v / top)[:3])  # type: ignore[misc]
                for v in self.values]

    def title(self) -> str:
        """The explained class and its probability, as every figure names it."""
        from smoothgrad.viz import class_label

        return "" if self.label is None else class_label(self.label, self.probability)

    def to_text(self) -> str:
        """Plain text: each token with its score."""
        return " ".join(f"{token}({value:+.3g})"
                        for token, value in zip(self.tokens, self.values, strict=True))

    def to_ansi(self) -> str:
        """Tokens on coloured backgrounds (24-bit terminal colours)."""
        parts = []
        for token, (r, g, b) in zip(self.tokens, self.colors(), strict=True):
            text = "30" if ink((r, g, b)) == (0, 0, 0) else "97"
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[{text}m {token} \x1b[0m")
        return "".join(parts)

    def _repr_html_(self) -> str:
        spans = []
        for token, value, (r, g, b) in zip(self.tokens, self.values, self.colors(), strict=True):
            text = "rgb({},{},{})".format(*ink((r, g, b)))
            spans.append(f'<span title="{value:+.4f}" style="background: rgb({r},{g},{b}); '
                         f'padding: 1px 3px; margin: 1px; border-radius: 3px; '
                         f'color: {text}">{html.escape(token)}</span>')
        title = f"<div><b>{html.escape(self.title())}</b></div>" if self.label else ""
        return (f'<div style="font-family: monospace; line-height: 1.9">{title}'
                f'{" ".join(spans)}</div>')

    def to_html(self, heading: str = "smoothgrad token scores") -> str:
        """A standalone HTML page."""
        return html_page(heading, self._repr_html_())

    def figure(self, width: float = 8.0) -> Figure:
        """A matplotlib figure: tokens as coloured boxes, wrapped, with a colour bar."""
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize as ColorNorm
        from matplotlib.figure import Figure

        per_line = max(1, int(width * 1.6))
        lines = [list(range(i, min(i + per_line, len(self.tokens))))
                 for i in range(0, len(self.tokens), per_line)] or [[]]
        figure = Figure(figsize=(width, 0.5 + 0.45 * len(lines)))
        axes = figure.add_axes((0.01, 0.02, 0.86, 0.9 if self.label else 0.96))
        axes.set_axis_off()
        axes.set_xlim(0, per_line)
        axes.set_ylim(len(lines), 0)
        colors = self.colors()
        for row, line in enumerate(lines):
            for col, i in enumerate(line):
                axes.text(col + 0.5, row + 0.5, self.tokens[i], ha="center", va="center",
                          fontsize=8, family="monospace",
                          color=tuple(c / 255 for c in ink(colors[i])),
                          bbox={"facecolor": tuple(c / 255 for c in colors[i]),
                                "edgecolor": "none", "boxstyle": "round,pad=0.25"})
        if self.label:
            axes.set_title(self.title(), fontsize=9)
        top = max((abs(v) for v in self.values), default=0.0) or 1.0
        bar = figure.add_axes((0.9, 0.1, 0.02, 0.8))
        figure.colorbar(ScalarMappable(ColorNorm(-top, top), COLORMAP), cax=bar)
        return figure
