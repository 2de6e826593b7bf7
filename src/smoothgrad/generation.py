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

from smoothgrad.config import DEFAULT_NOISE, as_integer, as_real
from smoothgrad.errors import OptionError
from smoothgrad.forcing import METHODS, SCORES, Forced, Score, target_maps
from smoothgrad.generated import GenerationResult
from smoothgrad.guard import explaining, gradients_on
from smoothgrad.layers import masked_range, sequence_normal
from smoothgrad.methods.integrated_gradients import DEFAULT_STEPS
from smoothgrad.noise import checked_sigma
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
) -> GenerationResult | list[GenerationResult]:
    """SmoothGrad of each generated token's `score` with respect to the input embeddings.

    Give `max_new_tokens` to generate greedily first, or `continuation` (one text, or one per
    prompt) to explain a given target text. `method`: gradient, input_x_gradient,
    integrated_gradients (zero baseline, `steps` nodes) or deeplift (rescale rule where it
    reaches; what it cannot reach is named in a warning). `reduce`: "norm" (default, for
    every method), "sum" or "dot" over the hidden size (see `smoothgrad.tokens`): on the
    planted copy task (README) the signed sum of input × gradient ranked the source first in
    2.5 % of prompts, its norm in 100 %. `batch_size`: rows per forward pass (noisy copies
    × prompts, or path points for integrated gradients). One prompt gives one
    `GenerationResult`, a list of prompts a list. The model is explained in eval mode and
    left as it was.
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    options = _checked(model, texts, max_new_tokens, continuation, method=method,
                       samples=samples, noise=noise, seed=seed, reduce=reduce, score=score,
                       batch_size=batch_size, steps=steps)
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
        steps=as_integer("steps", given["steps"], low=1), new_tokens=new_tokens)


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
    copies = max(1, options.rows // len(part))
    run = _Stats(part, targets, clean, options)
    for done in range(0, limit, copies):
        indices = list(range(done, min(limit, done + copies)))
        draw = sequence_normal(options.seed, indices, noised, clean.shape[2:], dtype=clean.dtype)
        x = (clean + sigma[:, None, None] * draw).reshape(-1, *clean.shape[1:])
        for t, top, attribution in target_maps(
                forced.repeated(len(indices)), x, options.method, steps=options.steps,
                rows=options.rows, name_unreached=done == 0):
            run.flips[:, t] += (top.view(len(indices), -1) != targets[:, t]).sum(dim=0)
            run.add(t, attribution.view(len(indices), *clean.shape))
    return [run.result(i, tokenizer, probability[i], sigma[i], limit, noisy=bool(sigma.any()))
            for i in range(len(part))]


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

    def add(self, t: int, attribution: Tensor) -> None:
        """Target column t's maps (copies, n, L, D) for every sequence that has it."""
        count, length = self.targets.shape[1], self.clean.shape[1]
        for i, s in enumerate(self.part):
            own = t - (count - s.targets)
            if own < 0:
                continue
            size = s.ids.shape[0] - 1
            maps = attribution[:, i, length - size:]
            if self.options.reduce == "sum":
                maps = maps.flatten(2).sum(dim=2)
            elif self.options.reduce == "dot":
                maps = (maps * self.clean[i, length - size:]).flatten(2).sum(dim=2)
            self.stats[i][own].update(maps.detach())

    def result(self, i: int, tokenizer: Any, probability: Tensor, sigma: Tensor, samples: int,
               *, noisy: bool) -> GenerationResult:
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
            score=self.options.score)


def _continuation_text(tokenizer: Any, s: _Sequence) -> str:
    """The targets as text, with the space that joins them to the prompt where the tokenizer
    writes one (the full text less the prompt's, else the targets decoded alone)."""
    whole = tokenizer.decode(s.ids.tolist(), skip_special_tokens=True)
    start = tokenizer.decode(s.ids[:s.prompt_length].tolist(), skip_special_tokens=True)
    if whole.startswith(start):
        return str(whole[len(start):])
    return str(tokenizer.decode(s.ids[s.prompt_length:].tolist(), skip_special_tokens=True))
