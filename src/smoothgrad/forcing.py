"""Teacher-forced passes over a decoder: every target token's map from one forward pass.

A causal LM scores target token t of a sequence at the position before it, so one forward
pass over the sequence (prompt + targets, the last target left out) holds the scores of all
T targets. `Forced` is that call, on left-padded rows: the attention mask hides the padding,
the position ids count each sequence's own tokens from 0 (so padding moves nothing), and the
LM head runs only at the last K positions, where the targets are scored: per target where
calling the decoder and the head apart gives the model's own logits (then a target's
backward pass crosses the head at its own position only), else by `logits_to_keep`.

With a reduced `dtype` (the fast path: the model a `smoothgrad.fast.reduced_copy`), the
decoder and the head run under autocast; the scores and gradients come back in float32.

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
    ...                    torch.tensor([[3, 4]]), "log_prob", embeddings)
    >>> [(t, tuple(m.shape)) for t, top, m in target_maps(forced, embeddings, "gradient")]
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
from smoothgrad.overrides import Rescaling, uncovered_by_deeplift
from smoothgrad.precision import autocast

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
    at the last K positions (position j scores target j), -1 where a row has fewer targets.
    With a `head` (the model's output embeddings, found by `of` to give the model's own
    logits), the call stops at the decoder's hidden states and the head runs per target, so
    each target's backward pass goes through the head at its own position only; else the
    model's logits at the K positions are used. `dtype`: the autocast precision of the
    decoder and head (None: the model's own).
    """

    model: nn.Module
    mask: Tensor
    targets: Tensor
    score: Score
    head: nn.Module | None
    dtype: torch.dtype | None = None

    @classmethod
    def of(cls, model: nn.Module, mask: Tensor, targets: Tensor, score: Score,
           clean: Tensor, dtype: torch.dtype | None = None) -> Forced:
        """The call for `model`, checked on the clean embeddings `clean`: the decoder and
        head are called apart only where that gives the model's own logits (a model that
        scales or caps its logits after the head is called whole)."""
        whole = cls(model, mask, targets, score, None, dtype)
        decoder = getattr(model, "get_decoder", None)
        head = getattr(model, "get_output_embeddings", None)
        if not callable(decoder) or not callable(head) or not isinstance(head(), nn.Module):
            return whole
        split = cls(model, mask, targets, score, head(), dtype)
        with torch.no_grad():
            expected = whole.logits(clean)
            try:
                got = split.logits(clean)
            except (TypeError, ValueError, AttributeError):
                return whole
        tolerance = 1e-4 if dtype is None else 1e-2  # bfloat16 rounds the two calls apart
        close = got.shape == expected.shape and torch.allclose(
            got.float(), expected.float(), rtol=tolerance,
            atol=tolerance * float(expected.abs().max()))
        return split if close else whole

    def repeated(self, copies: int) -> Forced:
        """The call for `copies` copies of every row, copy-major (as noisy batches are built)."""
        if copies == 1:
            return self
        return Forced(self.model, self.mask.repeat(copies, 1), self.targets.repeat(copies, 1),
                      self.score, self.head, self.dtype)

    def outputs(self, embeddings: Tensor) -> Tensor:
        """At the K scored positions: hidden states (rows, K, D) with a head, else logits
        (rows, K, vocabulary)."""
        keep = self.targets.shape[1]
        options = dict(inputs_embeds=embeddings, attention_mask=self.mask.long(),
                       position_ids=positions(self.mask), use_cache=False)
        with autocast(embeddings.device, self.dtype):
            if self.head is not None:
                decoder: nn.Module = self.model.get_decoder()  # type: ignore[operator]
                return pick(decoder(**options), _hidden)[:, -keep:]
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
                options["logits_to_keep"] = keep
            return pick(self.model(**options))[:, -keep:]

    def step(self, outputs: Tensor, t: int) -> Tensor:
        """The logits (rows, vocabulary) at scored position t."""
        if self.head is None:
            return outputs[:, t]
        with autocast(outputs.device, self.dtype):
            logits: Tensor = self.head(outputs[:, t])
        return logits

    def logits(self, embeddings: Tensor) -> Tensor:
        """The logits (rows, K, vocabulary) at the positions that score the targets."""
        outputs = self.outputs(embeddings)
        if self.head is None:
            return outputs
        return torch.stack([self.step(outputs, t) for t in range(outputs.shape[1])], dim=1)

    def scores(self, logits: Tensor, t: int) -> Tensor:
        """Target t's score per row (rows,) from its logits; 0, with no gradient, where a row
        has no target."""
        target = self.targets[:, t]
        index = target.clamp(min=0).unsqueeze(1)
        if self.score == "logit":
            chosen = logits.gather(1, index).squeeze(1)
        else:
            chosen = logits.float().log_softmax(dim=1).gather(1, index).squeeze(1)
            if self.score == "prob":
                chosen = chosen.exp()
        return torch.where(target >= 0, chosen, torch.zeros_like(chosen))


def _hidden(output: object) -> Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    if not isinstance(hidden, Tensor):
        raise TypeError("the decoder returned no last_hidden_state")
    return hidden


def target_maps(forced: Forced, x: Tensor, method: str, *, steps: int = DEFAULT_STEPS,
                rows: int | None = None, name_unreached: bool = True,
                ) -> Iterator[tuple[int, Tensor, Tensor]]:
    """For target t = 0, 1, ..., K−1: t, the top token per row at its position, its map.

    `x` (rows, L, D): the (noisy) input embeddings. Each map is shaped like `x`. One forward
    pass, then one backward pass per target as the iterator is read. Integrated gradients
    (zero baseline, `steps` Gauss-Legendre nodes) sends its path through the model in passes
    of at most `rows` rows (all at once when None). DeepLIFT names what its rule cannot
    reach in a warning (unless `name_unreached` is False).
    """
    if method == "integrated_gradients":
        yield from _integrated(forced, x, steps, rows or steps * x.shape[0])
        return
    leaf = x.detach().requires_grad_(True)
    rescaling = Rescaling() if method == "deeplift" else None
    session = contextlib.nullcontext() if rescaling is None else rescaling.inputs()
    if rescaling is not None:
        with torch.no_grad(), rescaling.baseline():
            forced.outputs(torch.zeros_like(x))
    with session:
        outputs = forced.outputs(leaf)
    count = outputs.shape[1]
    for t in range(count):
        logits = forced.step(outputs, t)
        score = forced.scores(logits, t)
        if rescaling is not None and name_unreached and t == 0:
            _warn_unreached(score, leaf, forced.model)
        (grad,) = torch.autograd.grad(score.sum(), leaf, retain_graph=t < count - 1)
        yield t, logits.detach().argmax(dim=1), grad if method == "gradient" else x * grad


def _integrated(forced: Forced, x: Tensor, steps: int, rows: int
                ) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Integrated gradients from a zero baseline: x × Σ_s w_s ∇score(α_s x), per target."""
    with torch.no_grad():
        top = forced.logits(x).argmax(dim=2)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = ((nodes + 1) / 2).tolist()
    n, count = x.shape[0], forced.targets.shape[1]
    per_pass = max(1, rows // n)
    integral = torch.zeros((count, *x.shape), dtype=x.dtype, device=x.device)
    for first in range(0, steps, per_pass):
        chosen = range(first, min(first + per_pass, steps))
        path = torch.cat([alphas[s] * x for s in chosen])
        for t, _, grad in target_maps(forced.repeated(len(chosen)), path, "gradient"):
            for j, s in enumerate(chosen):
                integral[t] += weights[s] / 2 * grad[j * n:(j + 1) * n]
    for t in range(count):
        yield t, top[:, t], x * integral[t]


def _warn_unreached(scores: Tensor, leaf: Tensor, model: nn.Module) -> None:
    left = uncovered_by_deeplift(scores.grad_fn, leaf, model)
    if left:
        warnings.warn("deeplift applies the plain gradient (not the rescale rule) to: "
                      + ", ".join(left) + "; the attributions do not sum to f(x) − f(baseline)",
                      stacklevel=4)
