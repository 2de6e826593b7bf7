"""SmoothGrad over generation: what each token a decoder writes owes to the tokens before it.

`explain_generation` generates greedily (the tokens of `model.generate(do_sample=False)`),
or takes a given `continuation` (teacher forcing), then averages, over noisy copies of the
input embeddings, a base method's map of every generated token's score. One forward pass per
chunk of noisy copies serves all T targets (`smoothgrad.forcing`), so the cost is one
forward and T backward passes per chunk, and memory is bounded by `batch_size` rows, never
by T × samples.

The noise: σ = noise × the range of each sequence's embeddings over its real, non-special
tokens; special tokens (BOS, EOS) and padding get none. Several prompts share passes,
left-padded, and the noise of a sequence's j-th noised token depends only on (seed, sample,
j), so a prompt's scores do not depend on the other prompts, their lengths or the
tokenizer's padding side.

Example (a Hugging Face causal LM and its tokenizer):

    shown = explain_generation(model, tokenizer, "The capital of France is",
                               max_new_tokens=5, method="input_x_gradient")
    shown.text            # " Paris, and the"
    shown.scores.shape    # (5, P + 5)
    shown                 # renders as a heatmap in Jupyter
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from smoothgrad.config import DEFAULT_NOISE, as_flag, as_integer, as_real
from smoothgrad.errors import OptionError
from smoothgrad.fast import reduced_copy
from smoothgrad.forcing import METHODS, SCORES, Forced, Score, target_maps
from smoothgrad.generated import GenerationResult
from smoothgrad.guard import explaining, gradients_on
from smoothgrad.layers import masked_range, sequence_normal
from smoothgrad.methods.integrated_gradients import DEFAULT_STEPS
from smoothgrad.noise import checked_sigma
from smoothgrad.precision import Precision, candidate, check_samples, judge
from smoothgrad.stats import SampleStats
from smoothgrad.tokens import REDUCTIONS
from smoothgrad.tuning import default_batch_size

__all__ = ["GenerationResult", "explain_generation"]

@dataclass(frozen=True)
class _Options:
    method: str
    samples: int
    noise: float
    seed: int
    reduce: str
    score: Score
    rows: int
    steps: int
    new_tokens: int | None
    fast: bool


@dataclass(frozen=True)
class _Sequence:
    """One prompt and its targets: `ids` (P + T,), the first P the prompt's."""

    prompt: str
    ids: Tensor
    prompt_length: int
    noised: Tensor  # (P + T,) bool: real, non-special tokens

    @property
    def targets(self) -> int:
        return self.ids.shape[0] - self.prompt_length


def explain_generation(
    model: nn.Module,
    tokenizer: Any,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int | None = None,
    continuation: str | Sequence[str] | None = None,
    method: str = "gradient",
    samples: int = 50,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    reduce: str = "norm",
    score: Literal["log_prob", "logit", "prob"] = "log_prob",
    batch_size: int | Literal["auto"] = "auto",
    steps: int = DEFAULT_STEPS,
    fast: bool = False,
) -> GenerationResult | list[GenerationResult]:
    """SmoothGrad of each generated token's `score` with respect to the input embeddings.

    Give `max_new_tokens` to generate greedily first, or `continuation` (one text, or one per
    prompt) to explain a given target text. `method`: gradient, input_x_gradient,
    integrated_gradients (zero baseline, `steps` nodes) or deeplift (rescale rule where it
    reaches; what it cannot reach is named in a warning). `reduce`: "norm" (default, for
    every method), "sum" or "dot" over the hidden size (see `smoothgrad.tokens`): on the
    planted copy task (README) the signed sum of input × gradient ranked the source first in
    2.5 % of prompts, its norm in 100 %. `batch_size`: rows per forward pass (noisy copies
    × prompts, or path points for integrated gradients). `fast`: run in bfloat16 (float16
    on older GPUs) where the device has it and a check on the first noisy copies finds the
    map unchanged (as `smooth(fast=True)`; the result's `precision` says what ran and why),
    else exactly as without it. One prompt gives one
    `GenerationResult`, a list of prompts a list. The model is explained in eval mode and
    left as it was.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    options = _checked(model, texts, max_new_tokens, continuation, method=method,
                       samples=samples, noise=noise, seed=seed, reduce=reduce, score=score,
                       batch_size=batch_size, steps=steps, fast=fast)
    forced_texts = _continuations(continuation, len(texts))
    with explaining(model), gradients_on():
        sequences = [_sequence(model, tokenizer, text, options.new_tokens, forced)
                     for text, forced in zip(texts, forced_texts, strict=True)]
        results = []
        for first in range(0, len(sequences), options.rows):
            part = sequences[first:first + options.rows]
            results += _explain_part(model, tokenizer, part, options)
    return results[0] if isinstance(prompts, str) else results


def _checked(model: nn.Module, texts: list[str], max_new_tokens: int | None,
             continuation: object, **given: Any) -> _Options:
    """The options, each checked, or an OptionError (a ValueError) naming the argument."""
    if not isinstance(model, nn.Module) or not callable(
            getattr(model, "get_input_embeddings", None)):
        raise TypeError("model must be a causal language model with get_input_embeddings() "
                        f"(a Hugging Face *ForCausalLM), not {type(model).__name__}")
    if not texts or not all(isinstance(text, str) for text in texts):
        raise OptionError("prompts must be a string or a non-empty list of strings")
    if (max_new_tokens is None) == (continuation is None):
        raise OptionError("give either max_new_tokens (generate greedily) or continuation "
                         "(the target text), not both or neither")
    new_tokens = None if max_new_tokens is None else as_integer("max_new_tokens",
                                                                max_new_tokens, low=1)
    if given["method"] not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}, got {given['method']!r}")
    if given["reduce"] not in REDUCTIONS:
        raise OptionError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {given['reduce']!r}")
    if given["score"] not in SCORES:
        raise OptionError(f"score must be one of {', '.join(SCORES)}, got {given['score']!r}")
    size = given["batch_size"]
    device = next(model.parameters()).device
    rows = default_batch_size(device) if size == "auto" else as_integer("batch_size", size, low=1)
    return _Options(
        method=given["method"], samples=as_integer("samples", given["samples"], low=1),
        noise=as_real("noise", given["noise"]), seed=as_integer("seed", given["seed"]),
        reduce=given["reduce"], score=given["score"], rows=rows,
        steps=as_integer("steps", given["steps"], low=1), new_tokens=new_tokens,
        fast=as_flag("fast", given["fast"]))


def _continuations(continuation: str | Sequence[str] | None, n: int) -> list[str | None]:
    if continuation is None:
        return [None] * n
    given: list[str | None] = ([continuation] * n if isinstance(continuation, str)
                               else list(continuation))
    if len(given) != n or not all(isinstance(text, str) and text for text in given):
        raise OptionError(f"continuation must be one non-empty string or {n} of them "
                         "(one per prompt)")
    return given


def _sequence(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int | None,
              continuation: str | None) -> _Sequence:
    """The prompt's ids followed by its targets: greedy tokens, or the continuation's."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(tokenizer(prompt)["input_ids"], dtype=torch.long, device=device)
    if ids.numel() == 0:
        raise OptionError(f"prompt {prompt!r} has no tokens")
    if continuation is not None:
        targets = torch.as_tensor(tokenizer(continuation, add_special_tokens=False)["input_ids"],
                                  dtype=torch.long, device=device)
        if targets.numel() == 0:
            raise OptionError(f"continuation {continuation!r} has no tokens")
        _check_length(model, prompt, ids.shape[0], targets.shape[0], "continuation")
    else:
        assert max_new_tokens is not None
        _check_length(model, prompt, ids.shape[0], max_new_tokens, "max_new_tokens")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                ids[None], attention_mask=torch.ones_like(ids[None]), do_sample=False,
                max_new_tokens=max_new_tokens, pad_token_id=pad)
        targets = out[0, ids.shape[0]:]
    full = torch.cat([ids, targets])
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long,
                           device=device)
    return _Sequence(prompt, full, ids.shape[0], ~torch.isin(full, special))


def _check_length(model: nn.Module, prompt: str, length: int, count: int, name: str) -> None:
    """Refuse a prompt whose `count` targets would take the model past its positions (the
    last target is scored, never read: prompt + targets − 1 positions are read)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and length + count - 1 > limit:
        shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        room = limit + 1 - length
        allowed = f"at most {room} more" if room > 0 else "the prompt alone is too long"
        raise OptionError(f"{name}: prompt {shown!r} has {length} tokens, and {count} more "
                          f"take the model past the {limit} positions it has ({allowed})")


def _padded(part: list[_Sequence], pad: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Left-padded inputs (every sequence less its last token): ids, mask and noised (n, L),
    and the targets (n, K), -1 before a shorter sequence's first target."""
    n, device = len(part), part[0].ids.device
    length = max(s.ids.shape[0] - 1 for s in part)
    count = max(s.targets for s in part)
    ids = torch.full((n, length), pad, dtype=torch.long, device=device)
    mask = torch.zeros((n, length), dtype=torch.bool, device=device)
    noised = torch.zeros_like(mask)
    targets = torch.full((n, count), -1, dtype=torch.long, device=device)
    for i, s in enumerate(part):
        size = s.ids.shape[0] - 1
        ids[i, length - size:] = s.ids[:-1]
        mask[i, length - size:] = True
        noised[i, length - size:] = s.noised[:-1]
        targets[i, count - s.targets:] = s.ids[s.prompt_length:]
    return ids, mask, noised, targets


def _explain_part(model: nn.Module, tokenizer: Any, part: list[_Sequence],
                  options: _Options) -> list[GenerationResult]:
    """The results of the sequences `part`, explained together (left-padded)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask, noised, targets = _padded(part, pad)
    with torch.no_grad():
        clean = model.get_input_embeddings()(ids).detach()  # type: ignore[operator]
    sigma = checked_sigma(options.noise * masked_range(clean, noised), f"noise={options.noise}")
    forced = Forced.of(model, mask, targets, options.score, clean)
    with torch.no_grad():
        logits = forced.logits(clean).float()
        probability = logits.softmax(dim=2).gather(2, targets.clamp(min=0)[..., None])[..., 0]
    limit = options.samples if bool(sigma.any()) else 1
    copies = _Copies(clean, sigma, noised, options, max(1, options.rows // len(part)))
    run, done, chosen = _Stats(part, targets, clean, options), 0, None
    if options.fast:
        chosen, forced, run, done = _go_fast(model, forced, copies, run, limit)
    copies.explain(forced, range(done, limit), run)
    return [run.result(i, tokenizer, probability[i], sigma[i], limit, noisy=bool(sigma.any()),
                       precision=chosen)
            for i in range(len(part))]


@dataclass(frozen=True)
class _Copies:
    """How the noisy copies of a part's sequences are made and explained."""

    clean: Tensor
    sigma: Tensor
    noised: Tensor
    options: _Options
    per_pass: int

    def explain(self, forced: Forced, indices: range, run: _Stats,
                kept: dict[int, list[Tensor]] | None = None, keep: int = 0) -> None:
        """Add copies `indices` of every sequence, explained through `forced`, to `run`
        (and, for the targets in `kept`, the maps `run` averages of the copies numbered
        below `keep` to `kept`)."""
        for first in range(indices.start, indices.stop, self.per_pass):
            chosen = range(first, min(indices.stop, first + self.per_pass))
            draw = sequence_normal(self.options.seed, list(chosen), self.noised,
                                   self.clean.shape[2:], dtype=self.clean.dtype)
            x = (self.clean + self.sigma[:, None, None] * draw).reshape(-1, *self.clean.shape[1:])
            for t, top, attribution in target_maps(
                    forced.repeated(len(chosen)), x, self.options.method,
                    steps=self.options.steps, rows=self.options.rows,
                    name_unreached=first == 0):
                maps = attribution.view(len(chosen), *self.clean.shape)
                run.flips[:, t] += (top.view(len(chosen), -1) != run.targets[:, t]).sum(dim=0)
                run.add(t, maps)
                if kept is not None and t in kept and first < keep:
                    kept[t].append(run.averaged(maps[:keep - first]))


def _go_fast(model: nn.Module, forced: Forced, copies: _Copies, run: _Stats, limit: int
             ) -> tuple[Precision, Forced, _Stats, int]:
    """The precision `fast=True` runs in, as `smooth(fast=True)` chooses it: a reduced one
    where the device has it and `smoothgrad.precision.judge` accepts it on the part's first
    noisy copies, explained in float32 and through the model's reduced-precision copy. Then
    also the call to run, the statistics (with the reduced copies' first pass when accepted)
    and the copies done; a refusal starts again in float32 (the map `fast=False` makes)."""
    check = check_samples(limit)
    dtype, why = candidate(copies.clean.device, limit, check)
    if dtype is None:
        return Precision("float32", why), forced, run, 0
    lower = reduced_copy(model, dtype)
    fast = Forced.of(lower.inner, forced.mask, forced.targets, forced.score, copies.clean,
                     dtype)
    judged = _judged(run.targets.shape[1], run.averaged(copies.clean[None]).numel())
    full: dict[int, list[Tensor]] = {t: [] for t in judged}
    reduced: dict[int, list[Tensor]] = {t: [] for t in judged}
    checked = _Stats(run.part, run.targets, run.clean, run.options)
    copies.explain(forced, range(check), checked, full, check)
    first = min(max(check, copies.per_pass), limit)
    faster = _Stats(run.part, run.targets, run.clean, run.options)
    copies.explain(fast, range(first), faster, reduced, check)
    decision = judge(_stacked(full), _stacked(reduced), dtype, samples=limit)
    if decision.reduced:
        return decision, fast, faster, first
    return decision, forced, run, 0


_JUDGED_VALUES = 1 << 22
"""The most values per copy the precision check keeps (its targets are spread over the
continuation when all of them would exceed it)."""


def _judged(count: int, values: int) -> list[int]:
    """The targets whose maps the precision check compares: all of `count` when their maps
    (`values` each, per copy) fit `_JUDGED_VALUES`, else as many as fit, evenly spread and
    the last (the longest context) always among them."""
    kept = max(1, min(count, _JUDGED_VALUES // max(values, 1)))
    return sorted(count - 1 - j * count // kept for j in range(kept))


def _stacked(maps: dict[int, list[Tensor]]) -> Tensor:
    """The kept maps of every target: (copies, sequences, targets, ...)."""
    return torch.stack([torch.cat(maps[t]) for t in sorted(maps)], dim=2)


class _Stats:
    """Running statistics per (sequence, target): token scores, or hidden-size maps for
    `reduce="norm"` (the norm is taken of the mean map, as `smoothgrad.text` does)."""

    def __init__(self, part: list[_Sequence], targets: Tensor, clean: Tensor,
                 options: _Options) -> None:
        self.part, self.targets, self.clean, self.options = part, targets, clean, options
        self.flips = torch.zeros(targets.shape, dtype=torch.long, device=targets.device)
        width = clean.shape[2:] if options.reduce == "norm" else ()
        self.stats = [[SampleStats((s.ids.shape[0] - 1, *width), ("mean",), device=clean.device)
                       for _ in range(s.targets)] for s in part]

    def averaged(self, attribution: Tensor) -> Tensor:
        """What is averaged of maps (copies, n, L, D): token scores (copies, n, L) for
        `reduce` "sum" and "dot", the maps themselves for "norm"."""
        if self.options.reduce == "sum":
            return attribution.flatten(3).sum(dim=3)
        if self.options.reduce == "dot":
            return (attribution * self.clean).flatten(3).sum(dim=3)
        return attribution

    def add(self, t: int, attribution: Tensor) -> None:
        """Target column t's maps (copies, n, L, D) for every sequence that has it."""
        count, length = self.targets.shape[1], self.clean.shape[1]
        averaged = self.averaged(attribution).detach()
        for i, s in enumerate(self.part):
            own = t - (count - s.targets)
            if own >= 0:
                self.stats[i][own].update(averaged[:, i, length - (s.ids.shape[0] - 1):])

    def result(self, i: int, tokenizer: Any, probability: Tensor, sigma: Tensor, samples: int,
               *, noisy: bool, precision: Precision | None) -> GenerationResult:
        s, count = self.part[i], self.targets.shape[1]
        mean = torch.stack([stats.aggregate("mean") for stats in self.stats[i]])
        error = torch.stack([stats.stderr("mean") for stats in self.stats[i]])
        if self.options.reduce == "norm":
            mean, error = mean.flatten(2).norm(dim=2), error.flatten(2).square().sum(dim=2).sqrt()
        if not noisy:
            error = torch.zeros_like(error)
        columns = s.ids.shape[0]
        causal = torch.arange(columns, device=mean.device)[None] < (
            s.prompt_length + torch.arange(s.targets, device=mean.device)[:, None])
        scores = torch.zeros((s.targets, columns), dtype=torch.float64, device=mean.device)
        stderr = torch.zeros_like(scores)
        scores[:, :-1], stderr[:, :-1] = mean, error
        own = slice(count - s.targets, None)
        tokens = tokenizer.convert_ids_to_tokens(s.ids.tolist())
        return GenerationResult(
            prompt=s.prompt, text=_continuation_text(tokenizer, s),
            source_tokens=list(tokens), target_tokens=list(tokens[s.prompt_length:]),
            prompt_length=s.prompt_length, scores=(scores * causal).float().cpu(),
            stderr=torch.where(causal, stderr, 0.0).float().cpu(),
            probability=probability[own].cpu(),
            flip_rate=(self.flips[i, own].double() / samples).float().cpu(), samples=samples,
            sigma=float(sigma), method=self.options.method, reduce=self.options.reduce,
            score=self.options.score, precision=precision)


def _continuation_text(tokenizer: Any, s: _Sequence) -> str:
    """The targets as text, with the space that joins them to the prompt where the tokenizer
    writes one (the full text less the prompt's, else the targets decoded alone)."""
    whole = tokenizer.decode(s.ids.tolist(), skip_special_tokens=True)
    start = tokenizer.decode(s.ids[:s.prompt_length].tolist(), skip_special_tokens=True)
    if whole.startswith(start):
        return str(whole[len(start):])
    return str(tokenizer.decode(s.ids[s.prompt_length:].tolist(), skip_special_tokens=True))
