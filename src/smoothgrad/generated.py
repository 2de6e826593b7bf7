"""What `explain_generation` returns for one prompt: the matrix of scores and how to show it.

Row t of `scores` is generated token t's attribution to every position before it: the prompt's
tokens, then the tokens generated before t (its own column and later ones are 0). Colours are
scaled per row (each row by its largest |score|), since a late token's scores can be orders
of magnitude apart from an early one's; the numbers themselves are not rescaled.

Example:
    >>> import torch
    >>> shown = GenerationResult(
    ...     prompt="a b", text=" c d", source_tokens=["a", "b", "c", "d"],
    ...     target_tokens=["c", "d"], prompt_length=2,
    ...     scores=torch.tensor([[0.25, 0.75, 0.0, 0.0], [0.5, 0.25, 0.125, 0.0]]),
    ...     stderr=torch.zeros(2, 4), probability=torch.tensor([0.8, 0.6]),
    ...     flip_rate=torch.tensor([0.0, 0.1]), samples=20, sigma=0.3, method="gradient",
    ...     reduce="norm", score="log_prob")
    >>> shown.top_sources(1)
    [[(1, 'b', 0.75)], [(0, 'a', 0.5)]]
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from smoothgrad.methods.registry import title
from smoothgrad.tokens import COLORMAP, html_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from smoothgrad.precision import Precision

__all__ = ["GenerationResult"]


@dataclass(frozen=True)
class GenerationResult:
    """One prompt's SmoothGrad over generation.

    - scores, stderr: (T, P + T), generated token t (rows) against the source positions
      (columns: the P prompt tokens, then the T generated ones); `stderr` is the standard
      error of each score over the noisy copies (for `reduce="norm"`, the root of the summed
      squared errors over the hidden size, which bounds the error of the norm).
    - probability: (T,) each target's probability on the clean input; flip_rate: (T,) the
      share of noisy copies whose top token at that step is not the target.
    - text: the generated (or given) continuation, decoded; sigma: the noise σ used.
    - precision: with fast=True, the precision the passes ran in and the check that chose it
      (`smoothgrad.precision.Precision`); None otherwise.
    """

    prompt: str
    text: str
    source_tokens: list[str]
    target_tokens: list[str]
    prompt_length: int
    scores: Tensor
    stderr: Tensor
    probability: Tensor
    flip_rate: Tensor
    samples: int
    sigma: float
    method: str
    reduce: str
    score: str
    precision: Precision | None = None

    def top_sources(self, k: int = 3) -> list[list[tuple[int, str, float]]]:
        """Per generated token, its `k` source positions of largest |score|: (column, token,
        score), the largest first; only positions before the token are candidates."""
        chosen = []
        for t in range(len(self.target_tokens)):
            row = self.scores[t, : self.prompt_length + t]
            order = row.abs().argsort(descending=True, stable=True)[:k].tolist()
            chosen.append([(int(j), self.source_tokens[j], float(row[j])) for j in order])
        return chosen

    def to_text(self, k: int = 3) -> str:
        """One line per generated token: its probability, flip rate and top `k` sources."""
        lines = []
        for t, sources in enumerate(self.top_sources(k)):
            found = "  ".join(f"{token}@{j}({value:+.3g})" for j, token, value in sources)
            lines.append(f"{self.target_tokens[t]!r:>14} p={float(self.probability[t]):.3f} "
                         f"flips={float(self.flip_rate[t]):.2f}  <- {found}")
        return "\n".join(lines)

    def caption(self) -> str:
        """What the matrix shows, in one line."""
        ran = "" if self.precision is None or not self.precision.reduced else (
            f", in {self.precision.dtype}")
        return (f"{title(self.method)}, SmoothGrad over {self.samples} samples at the input "
                f"embeddings (σ={self.sigma:.3g}){ran}, {self.reduce} over the hidden size, "
                f"score: {self.score}; colours scaled per row")

    def _colours(self) -> list[list[tuple[int, int, int]]]:
        from matplotlib import colormaps

        cmap = colormaps[COLORMAP]
        rows = []
        for row in self.scores.double().tolist():
            top = max(abs(v) for v in row) or 1.0
            rows.append([_rgb(cmap(0.5 + 0.5 * v / top)) for v in row])
        return rows

    def _repr_html_(self) -> str:
        cell = "padding: 2px 4px; font-family: monospace; font-size: 12px; white-space: pre"
        edges = ["border-left: 2px solid #444; " if j == self.prompt_length else ""
                 for j in range(len(self.source_tokens))]
        head = "".join(f'<th style="{cell}; {edge}writing-mode: vertical-rl">'
                       f"{html.escape(token)}</th>"
                       for edge, token in zip(edges, self.source_tokens, strict=True))
        body = []
        for t, colours in enumerate(self._colours()):
            cells = []
            for j, (r, g, b) in enumerate(colours):
                value, error = float(self.scores[t, j]), float(self.stderr[t, j])
                cells.append(f'<td title="{html.escape(self.source_tokens[j])}: {value:+.4g} '
                             f'± {error:.2g}" style="{edges[j]}background: rgb({r},{g},{b}); '
                             'min-width: 14px"></td>')
            label = (f"{html.escape(self.target_tokens[t])} "
                     f"<small>p={float(self.probability[t]):.2f}</small>")
            body.append(f'<tr><th style="{cell}; text-align: right">{label}</th>'
                        f'{"".join(cells)}</tr>')
        return ('<div style="overflow-x: auto; margin: 0 0 16px 0">'
                f"<div><b>{html.escape(self.prompt)}</b>"
                f"<b style=\"color: #a00\">{html.escape(self.text)}</b></div>"
                f"<div><small>{html.escape(self.caption())}</small></div>"
                f'<table style="border-collapse: collapse"><tr><th></th>{head}</tr>'
                f'{"".join(body)}</table></div>')

    def to_html(self, heading: str = "smoothgrad generation") -> str:
        """A standalone HTML page with the matrix."""
        return html_page(heading, self._repr_html_())

    def figure(self, width: float | None = None) -> Figure:
        """A matplotlib heatmap: generated tokens (rows) against source tokens (columns)."""
        from matplotlib.figure import Figure

        rows, columns = self.scores.shape
        width = width or min(24.0, max(6.0, 2.0 + 0.22 * columns))
        figure = Figure(figsize=(width, 1.6 + 0.22 * rows + 0.05 * _longest(self.source_tokens)))
        axes = figure.add_subplot()
        top = self.scores.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
        axes.imshow((self.scores / top).double().numpy(), cmap=COLORMAP, vmin=-1, vmax=1,
                    aspect="auto", interpolation="nearest")
        axes.set_xticks(range(columns), self.source_tokens, rotation=90, fontsize=7,
                        family="monospace")
        axes.set_yticks(range(rows), self.target_tokens, fontsize=7, family="monospace")
        axes.axvline(self.prompt_length - 0.5, color="#444", linewidth=1)
        axes.set_xlabel("source tokens (prompt | generated)", fontsize=8)
        axes.set_ylabel("generated token", fontsize=8)
        axes.set_title(textwrap.fill(self.caption(), int(width * 13)), fontsize=8)
        figure.tight_layout()
        return figure

    def to_numpy(self) -> Any:
        """`scores` as a float64 NumPy array (T, P + T)."""
        return self.scores.detach().cpu().double().numpy()


def _rgb(colour: tuple[float, ...]) -> tuple[int, int, int]:
    return round(255 * colour[0]), round(255 * colour[1]), round(255 * colour[2])


def _longest(tokens: list[str]) -> int:
    return max((len(token) for token in tokens), default=1)
