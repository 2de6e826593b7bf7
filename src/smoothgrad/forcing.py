"""Teacher-forced passes over a decoder: every target token's map from one forward pass.

A causal LM scores target token t of a sequence at the position before it, so one forward
pass over the sequence (prompt + targets, the last target left out) holds the scores of all
T targets. `Forced` is that call, on left-padded rows: the attention mask hides the padding,
the position ids count each sequence's own tokens from 0 (so padding moves nothing), and the
LM head runs only at the last K positions (`logits_to_keep`), where the targets are scored.

`target_maps` then takes one backward pass per target through the retained graph (measured
faster on CPU than batched cotangents with `is_grads_batched`, and far cheaper than Captum's
one forward per target) and yields each target's map at the input embeddings for the base
methods: gradient, input × gradient, DeepLIFT (rescale rule) and integrated gradients.

Example:
    >>> import torch, transformers
    >>> config = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1,
    ...                                  n_head=2)
    >>> model = transformers.GPT2LMHeadModel(config).eval()
    >>> embeddings = model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
    >>> forced = Forced.of(model, torch.ones(1, 3, dtype=torch.bool),
    ...                    torch.tensor([[3, 4]]), "log_prob")
    >>> top, maps = target_maps(forced, embeddings, "gradient")
    >>> [(t, tuple(m.shape)) for t, m in maps]
    [(0, (1, 3, 8)), (1, (1, 3, 8))]
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from smoothgrad.methods.integrated_gradients import DEFAULT_STEPS
from smoothgrad.outputs import pick
from smoothgrad.overrides import Rescaling, unmodified_by_deeplift

__all__ = ["METHODS", "SCORES", "Forced", "Score", "positions", "target_maps"]

Score = Literal["log_prob", "logit", "prob"]
SCORES: tuple[str, ...] = ("log_prob", "logit", "prob")
"""What is differentiated per target: its log-probability (Captum's choice), logit or
probability."""

METHODS: tuple[str, ...] = ("gradient", "input_x_gradient", "integrated_gradients",
                            "deeplift")
"""The base methods over generation (the engine's, less those that need an image)."""


def positions(mask: Tensor) -> Tensor:
    """Position ids of left-padded rows: each sequence counts its own tokens from 0.

    >>> positions(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[0, 0, 0, 1],
            [0, 1, 2, 3]])
    """
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Forced:
    """The teacher-forced call on rows of left-padded sequences.

    `mask` (rows, L) marks real positions; `targets` (rows, K) holds the target ids scored
    at the last K positions (logit j scores target j), -1 where a row has fewer targets.
    """

    model: nn.Module
    mask: Tensor
    targets: Tensor
    score: Score
    keeps_logits: bool

    @classmethod
    def of(cls, model: nn.Module, mask: Tensor, targets: Tensor, score: Score) -> Forced:
        """The call for `model` (whether its forward takes `logits_to_keep` is looked up)."""
        accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
        return cls(model, mask, targets, score, accepts)

    def repeated(self, copies: int) -> Forced:
        """The call for `copies` copies of every row, copy-major (as noisy batches are built)."""
        if copies == 1:
            return self
        return Forced(self.model, self.mask.repeat(copies, 1), self.targets.repeat(copies, 1),
                      self.score, self.keeps_logits)

    def logits(self, embeddings: Tensor) -> Tensor:
        """The logits (rows, K, vocabulary) at the positions that score the targets."""
        keep = self.targets.shape[1]
        options = {"logits_to_keep": keep} if self.keeps_logits else {}
        output = self.model(inputs_embeds=embeddings, attention_mask=self.mask.long(),
                            position_ids=positions(self.mask), use_cache=False, **options)
        return pick(output)[:, -keep:]

    def scores(self, logits: Tensor) -> Tensor:
        """Each target's score (rows, K); 0, with no gradient, where a row has no target."""
        valid = self.targets >= 0
        index = self.targets.clamp(min=0).unsqueeze(2)
        if self.score == "logit":
            chosen = logits.gather(2, index).squeeze(2)
        else:
            chosen = logits.float().log_softmax(dim=2).gather(2, index).squeeze(2)
            if self.score == "prob":
                chosen = chosen.exp()
        return torch.where(valid, chosen, torch.zeros_like(chosen))


def target_maps(forced: Forced, x: Tensor, method: str, *, steps: int = DEFAULT_STEPS,
                rows: int | None = None, name_unreached: bool = True,
                ) -> tuple[Tensor, Iterator[tuple[int, Tensor]]]:
    """The top token at each scored position (rows, K) and the maps of target 0, 1, ..., K−1.

    `x` (rows, L, D): the (noisy) input embeddings. Each map is shaped like `x`. The forward
    pass runs here; the backward passes run as the iterator is read, one per target.
    Integrated gradients (zero baseline, `steps` Gauss-Legendre nodes) sends its path through
    the model in passes of at most `rows` rows (all at once when None). DeepLIFT names what
    its rule cannot reach in a warning (unless `name_unreached` is False).
    """
    if method == "integrated_gradients":
        with torch.no_grad():
            top = forced.logits(x).argmax(dim=2)
        return top, _integrated(forced, x, steps, rows or steps * x.shape[0])
    leaf = x.detach().requires_grad_(True)
    rescaling = Rescaling() if method == "deeplift" else None
    session = contextlib.nullcontext() if rescaling is None else rescaling.inputs()
    if rescaling is not None:
        with torch.no_grad(), rescaling.baseline():
            forced.logits(torch.zeros_like(x))
    with session:
        logits = forced.logits(leaf)
    scores = forced.scores(logits)
    if rescaling is not None and name_unreached:
        _warn_unreached(scores, forced.model)
    factor = None if method == "gradient" else x
    return logits.detach().argmax(dim=2), _backward(scores, leaf, factor)


def _backward(scores: Tensor, leaf: Tensor, factor: Tensor | None
              ) -> Iterator[tuple[int, Tensor]]:
    """One backward pass per target through the retained graph, × `factor` if given."""
    count = scores.shape[1]
    for t in range(count):
        (grad,) = torch.autograd.grad(scores[:, t].sum(), leaf, retain_graph=t < count - 1)
        yield t, grad if factor is None else factor * grad


def _integrated(forced: Forced, x: Tensor, steps: int, rows: int
                ) -> Iterator[tuple[int, Tensor]]:
    """Integrated gradients from a zero baseline: x × Σ_s w_s ∇score(α_s x), per target."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = ((nodes + 1) / 2).tolist()
    n, count = x.shape[0], forced.targets.shape[1]
    per_pass = max(1, rows // n)
    integral = torch.zeros((count, *x.shape), dtype=x.dtype, device=x.device)
    for first in range(0, steps, per_pass):
        chosen = range(first, min(first + per_pass, steps))
        path = torch.cat([alphas[s] * x for s in chosen])
        for t, grad in target_maps(forced.repeated(len(chosen)), path, "gradient")[1]:
            for j, s in enumerate(chosen):
                integral[t] += weights[s] / 2 * grad[j * n:(j + 1) * n]
    for t in range(count):
        yield t, x * integral[t]


def _warn_unreached(scores: Tensor, model: nn.Module) -> None:
    left = unmodified_by_deeplift(scores.grad_fn, model)
    if left:
        warnings.warn("deeplift applies the plain gradient (not the rescale rule) to: "
                      + ", ".join(left) + "; the attributions do not sum to f(x) − f(baseline)",
                      stacklevel=4)
