"""SmoothGrad over generation (issue 21): references, invariances, the planted copy task.

The models are tiny and random (`lm_models`), built from configs; nothing is downloaded. The
references: Captum's `LLMGradientAttribution` at noise 0, and a hand loop that calls the
model on `inputs_embeds` once per noisy copy and per target (no padding, no attention mask,
full logits) with the same noise.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad import precision
from smoothgrad.errors import OptionError
from smoothgrad.forcing import Forced, positions, target_maps
from smoothgrad.layers import sequence_normal

transformers = pytest.importorskip("transformers")
import lm_models  # noqa: E402
from lm_models import copy_prompts, embeddings_of  # noqa: E402

PROMPT = "w1 M w3 w4 w7"
LONGER = "w9 w2 w2 M w5 w11 w0 w13 w6 w8"
KINDS = ["gpt2", "llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The models here are tiny: one thread is as fast on a quiet machine and several times
    faster on a busy one (measured: the file took 8 min with two threads at load 8-10,
    1 min 46 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def model(kind: str) -> nn.Module:
    return lm_models.causal_lm(kind)


@pytest.fixture(scope="module")
def tok() -> Any:
    return lm_models.tokenizer()


def _generated_ids(lm: nn.Module, tok: Any, prompt: str, count: int) -> list[int]:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                      max_new_tokens=count, pad_token_id=tok.pad_token_id)
    return [int(i) for i in out[0, ids.shape[1]:]]


def hand_loop(lm: nn.Module, tok: Any, prompt: str, targets: list[int], *, method: str,
              reduce: str, noise: float, samples: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Scores and standard errors (T, P + T): one forward per copy and per target."""
    prompt_ids = tok(prompt)["input_ids"]
    ids = torch.tensor(prompt_ids + targets[:-1])
    size, count = len(prompt_ids), len(targets)
    clean = embeddings_of(lm, ids[None])[0]
    noised = ~torch.isin(ids, torch.tensor(tok.all_special_ids))
    sigma = noise * (clean[noised].max() - clean[noised].min())
    per_copy = []
    for k in range(samples if noise else 1):
        draw = sequence_normal(seed, [k], noised[None], clean.shape[1:])[0, 0]
        x = (clean + sigma * draw).requires_grad_(True)
        rows = []
        for t in range(count):
            logits = lm(inputs_embeds=x[None]).logits[0, size + t - 1]
            (grad,) = torch.autograd.grad(logits.log_softmax(dim=0)[targets[t]], x)
            rows.append(grad if method == "gradient" else x.detach() * grad)
        per_copy.append(torch.stack(rows))  # (T, L, D)
    maps = torch.stack(per_copy).double()
    copies = len(per_copy)
    if reduce == "norm":
        mean = maps.mean(dim=0).norm(dim=2)
        error = (maps.var(dim=0) / copies).sum(dim=2).sqrt() if copies > 1 else mean * 0
    else:
        reduced = maps.sum(dim=3) if reduce == "sum" else (maps * clean.double()).sum(dim=3)
        mean = reduced.mean(dim=0)
        error = (reduced.var(dim=0) / copies).sqrt() if copies > 1 else mean * 0
    pad = torch.zeros(count, 1, dtype=torch.float64)
    return torch.cat([mean, pad], dim=1), torch.cat([error, pad], dim=1)


def _close(ours: Tensor, reference: Tensor, rtol: float = 1e-4) -> None:
    scale = float(reference.abs().max())
    assert scale > 0
    np.testing.assert_allclose(ours.double().numpy(), reference.double().numpy(),
                               rtol=rtol, atol=rtol * scale)


# ---- generation --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_are_generates(kind: str, tok: Any) -> None:
    lm = model(kind)
    shown = sg.text.explain_generation(lm, tok, [PROMPT, LONGER], max_new_tokens=5, samples=2)
    for prompt, result in zip([PROMPT, LONGER], shown, strict=True):
        expected = tok.convert_ids_to_tokens(_generated_ids(lm, tok, prompt, 5))
        assert result.target_tokens == expected
        assert result.source_tokens == tok.convert_ids_to_tokens(
            tok(prompt)["input_ids"]) + expected
        count = len(expected)  # 5, or fewer when <eos> came first
        assert result.scores.shape == result.stderr.shape == (count, result.prompt_length + count)
        words = [token for token in expected if token != "<eos>"]
        assert result.text == "".join(" " + word for word in words)


# ---- references at noise 0 -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_noise0_equals_captum_llm_gradient_attribution(kind: str, method: str, tok: Any) -> None:
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    lm = model(kind)
    shown = sg.text.explain_generation(lm, tok, PROMPT, max_new_tokens=4, method=method,
                                       reduce="sum", noise=0.0)
    assert shown.samples == 1 and not shown.stderr.any()
    layer = LayerGradientXActivation(lm, lm.get_input_embeddings(),
                                     multiply_by_inputs=method == "input_x_gradient")
    targets = torch.tensor(tok.convert_tokens_to_ids(shown.target_tokens))
    captum = LLMGradientAttribution(layer, tok).attribute(TextTokenInput(PROMPT, tok),
                                                           target=targets)
    prompt_part = shown.scores[:, :shown.prompt_length]
    if kind == "gpt2" and method == "gradient":  # LayerNorm: the summed gradient is ~0
        assert float(captum.token_attr.abs().max()) < 1e-5
        assert float(prompt_part.abs().max()) < 1e-5
    else:
        _close(prompt_part, captum.token_attr)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_noise0_equals_hand_loop(kind: str, method: str, tok: Any) -> None:
    lm = model(kind)
    shown = sg.text.explain_generation(lm, tok, PROMPT, max_new_tokens=4, method=method,
                                       reduce="norm", noise=0.0)
    targets = tok.convert_tokens_to_ids(shown.target_tokens)
    scores, _ = hand_loop(lm, tok, PROMPT, targets, method=method, reduce="norm", noise=0.0,
                          samples=1)
    _close(shown.scores, scores)


# ---- with noise ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize(("method", "reduce"), [("gradient", "norm"),
                                                ("input_x_gradient", "sum"),
                                                ("input_x_gradient", "dot")])
def test_noisy_equals_hand_loop_with_the_same_noise(kind: str, method: str, reduce: str,
                                                    tok: Any) -> None:
    lm = model(kind)
    shown = sg.text.explain_generation(lm, tok, PROMPT, continuation="w2 w5 w6",
                                       method=method, reduce=reduce, noise=0.1, samples=5,
                                       seed=3, batch_size=2)
    targets = tok.convert_tokens_to_ids(["w2", "w5", "w6"])
    scores, errors = hand_loop(lm, tok, PROMPT, targets, method=method, reduce=reduce,
                               noise=0.1, samples=5, seed=3)
    _close(shown.scores, scores)
    _close(shown.stderr, errors, rtol=1e-3)
    assert shown.samples == 5 and shown.sigma > 0


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prompt_alone_or_beside_a_longer_one_padded_either_side(kind: str) -> None:
    lm = model(kind)
    alone = sg.text.explain_generation(lm, lm_models.tokenizer(), PROMPT, max_new_tokens=3,
                                       method="input_x_gradient", samples=6, batch_size=4)
    right = lm_models.tokenizer(padding_side="right")
    for batch_size in (1, 3, 16):
        pair = sg.text.explain_generation(lm, right, [LONGER, PROMPT], max_new_tokens=3,
                                          method="input_x_gradient", samples=6,
                                          batch_size=batch_size)
        assert pair[1].target_tokens == alone.target_tokens
        _close(pair[1].scores, alone.scores)
        _close(pair[1].stderr, alone.stderr)
        assert torch.equal(pair[1].flip_rate, alone.flip_rate)


def test_seeded(tok: Any) -> None:
    lm = model("gpt2")
    first, again, other = (
        sg.text.explain_generation(lm, tok, PROMPT, max_new_tokens=2, samples=4, seed=seed)
        for seed in (0, 0, 1))
    assert torch.equal(first.scores, again.scores)
    assert not torch.allclose(first.scores, other.scores)


def test_special_tokens_and_padding_get_no_noise(tok: Any) -> None:
    """<bos> is unnoised: σ comes from the words' embeddings only, and the gradient at <bos>
    equals the one at noise 0 when only <bos> would be perturbed."""
    lm = model("llama")
    shown = sg.text.explain_generation(lm, tok, PROMPT, continuation="w2", samples=3,
                                       noise=0.2)
    ids = torch.tensor(tok(PROMPT)["input_ids"])
    clean = embeddings_of(lm, ids[None])[0]
    words = clean[1:]
    assert shown.sigma == pytest.approx(0.2 * float(words.max() - words.min()), rel=1e-6)
    assert shown.source_tokens[0] == "<bos>"


@pytest.mark.parametrize("score", ["logit", "prob"])
def test_other_scores_equal_hand_gradients(score: str, tok: Any) -> None:
    lm = model("gpt2")
    shown = sg.text.explain_generation(lm, tok, PROMPT, continuation="w2 w5", score=score,
                                       noise=0.0, method="input_x_gradient", reduce="sum")
    ids = torch.tensor(tok(PROMPT)["input_ids"] + [tok.convert_tokens_to_ids("w2")])
    x = embeddings_of(lm, ids[None])[0].requires_grad_(True)
    size = shown.prompt_length
    for t, token in enumerate(["w2", "w5"]):
        logits = lm(inputs_embeds=x[None]).logits[0, size + t - 1]
        value = logits if score == "logit" else logits.softmax(dim=0)
        (grad,) = torch.autograd.grad(value[tok.convert_tokens_to_ids(token)], x)
        _close(shown.scores[t, :-1], (x.detach() * grad).sum(dim=1))


def test_probability_and_flip_rate(tok: Any) -> None:
    lm = model("gpt2")
    clean = sg.text.explain_generation(lm, tok, PROMPT, max_new_tokens=3, noise=0.0)
    ids = torch.tensor([tok(PROMPT)["input_ids"] + tok.convert_tokens_to_ids(
        clean.target_tokens)])
    with torch.no_grad():
        probabilities = lm(ids).logits[0].softmax(dim=1)
    for t, token in enumerate(clean.target_tokens):
        expected = probabilities[clean.prompt_length + t - 1, tok.convert_tokens_to_ids(token)]
        assert float(clean.probability[t]) == pytest.approx(float(expected), rel=1e-5)
    assert not clean.flip_rate.any()  # greedy tokens are the clean argmax
    loud = sg.text.explain_generation(lm, tok, PROMPT, max_new_tokens=3, noise=2.0, samples=10)
    assert loud.flip_rate.max() > 0.5


def test_later_positions_are_zero(tok: Any) -> None:
    shown = sg.text.explain_generation(model("qwen2"), tok, PROMPT, max_new_tokens=4,
                                       samples=3)
    for t in range(4):
        assert not shown.scores[t, shown.prompt_length + t:].any()
        assert shown.scores[t, : shown.prompt_length + t].abs().min() > 0


def test_head_called_apart_only_where_it_gives_the_models_logits(tok: Any) -> None:
    """GPT-2: decoder and head apart (the same maps as the whole model's logits); Gemma 2
    caps its logits after the head, so it is called whole, and still equals the hand loop."""
    ids = torch.tensor([tok(PROMPT)["input_ids"] + tok.convert_tokens_to_ids(["w2"])])
    mask = torch.ones_like(ids, dtype=torch.bool)
    targets = torch.tensor([tok.convert_tokens_to_ids(["w2", "w5"])])
    clean = embeddings_of(model("gpt2"), ids)
    split = Forced.of(model("gpt2"), mask, targets, "log_prob", clean)
    assert split.head is model("gpt2").get_output_embeddings()
    whole = dataclasses.replace(split, head=None)
    for (t, top, a), (u, top_whole, b) in zip(target_maps(split, clean, "input_x_gradient"),
                                              target_maps(whole, clean, "input_x_gradient"),
                                              strict=True):
        assert t == u and torch.equal(top, top_whole)
        _close(a, b, rtol=1e-5)
    gemma = model("gemma2")
    assert Forced.of(gemma, mask, targets, "log_prob", embeddings_of(gemma, ids)).head is None
    shown = sg.text.explain_generation(gemma, tok, PROMPT, continuation="w2 w5",
                                       method="input_x_gradient", noise=0.1, samples=3)
    scores, _ = hand_loop(gemma, tok, PROMPT, targets[0].tolist(), method="input_x_gradient",
                          reduce="norm", noise=0.1, samples=3)
    _close(shown.scores, scores)


# ---- the other base methods ----------------------------------------------------------------

def test_integrated_gradients_completeness(tok: Any) -> None:
    """Σ over positions and hidden size = score(x) − score(zero embeddings), per target.

    (GPT-2: its position embeddings keep the residual stream away from 0 on the path; with
    Llama's RMSNorm the path starts at a near-singularity that no quadrature resolves.)"""
    lm = model("gpt2")
    shown = sg.text.explain_generation(lm, tok, PROMPT, continuation="w2 w5",
                                       method="integrated_gradients", reduce="sum",
                                       noise=0.0, steps=64, batch_size=7)
    ids = torch.tensor(tok(PROMPT)["input_ids"] + [tok.convert_tokens_to_ids("w2")])
    x = embeddings_of(lm, ids[None])
    size = shown.prompt_length
    for t, token in enumerate(["w2", "w5"]):
        index = tok.convert_tokens_to_ids(token)
        with torch.no_grad():
            ends = [lm(inputs_embeds=e).logits[0, size + t - 1].log_softmax(dim=0)[index]
                    for e in (x, torch.zeros_like(x))]
        assert float(shown.scores[t].sum()) == pytest.approx(float(ends[0] - ends[1]),
                                                             rel=1e-3)


def test_deeplift_equals_one_target_at_a_time_and_names_what_it_cannot_reach(tok: Any) -> None:
    """Against the engine's DeepLIFT on a model whose 'classes' are the targets' scores."""
    lm = model("gpt2")
    with pytest.warns(UserWarning, match="deeplift applies the plain gradient"):
        shown = sg.text.explain_generation(lm, tok, PROMPT, continuation="w2 w5",
                                           method="deeplift", reduce="sum", noise=0.0)
    ids = torch.tensor(tok(PROMPT)["input_ids"] + [tok.convert_tokens_to_ids("w2")])
    targets = tok.convert_tokens_to_ids(["w2", "w5"])
    size = shown.prompt_length

    class Scores(nn.Module):
        def forward(self, embedded: Tensor) -> Tensor:
            logits = lm(inputs_embeds=embedded).logits.log_softmax(dim=2)
            return torch.stack([logits[:, size + t - 1, c] for t, c in enumerate(targets)], 1)

    x = embeddings_of(lm, ids[None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(2):
            expected = sg.methods.deeplift(Scores(), x, torch.tensor([t]))
            _close(shown.scores[t, :-1], expected[0].sum(dim=1))


# ---- memory: rows per pass ---------------------------------------------------------------

@pytest.mark.parametrize(("method", "batch_size"), [("gradient", 4), ("integrated_gradients", 5)])
def test_no_pass_exceeds_batch_size(method: str, batch_size: int, tok: Any) -> None:
    lm = model("gpt2")
    seen: list[int] = []
    handle = lm.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.append(out.shape[0]))
    rows: list[int] = []
    block = lm.transformer.h[0].register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        sg.text.explain_generation(lm, tok, [PROMPT, LONGER], max_new_tokens=2, samples=3,
                                   method=method, batch_size=batch_size, steps=8)
    finally:
        handle.remove()
        block.remove()
    assert max(rows) <= batch_size and len(rows) > 3


# ---- the planted copy task ---------------------------------------------------------------

@pytest.fixture(scope="module")
def copier() -> nn.Module:
    return lm_models.train_copy(lm_models.causal_lm("gpt2"))


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_copy_task_attribution_peaks_at_the_source(method: str, copier: nn.Module) -> None:
    """The model's greedy next token is the copy; the copy's attribution (at the default
    noise) peaks at its source in ≥ 95 % of 200 held-out prompts."""
    tok = lm_models.tokenizer(bos=False)
    prompts, sources = copy_prompts(200, torch.Generator().manual_seed(123))
    copies = [prompt.split()[source] for prompt, source in zip(prompts, sources, strict=True)]
    batch = tok(prompts, padding=True, return_tensors="pt")  # on the left
    with torch.no_grad():
        logits = copier(**batch, position_ids=positions(batch["attention_mask"])).logits
    greedy = tok.convert_ids_to_tokens(logits[:, -1].argmax(dim=1))
    assert np.mean(np.array(greedy) == np.array(copies)) >= 0.95
    shown = sg.text.explain_generation(copier, tok, prompts, continuation=copies,
                                       method=method, reduce="norm", samples=10, batch_size=64)
    hits = [int(r.scores[0, :r.prompt_length].argmax()) == s for r, s in zip(shown, sources,
                                                                             strict=True)]
    assert np.mean(hits) >= 0.95


# ---- results, errors, the user's model -------------------------------------------------------

def test_result_renders_html_text_and_figure(tok: Any) -> None:
    shown = sg.text.explain_generation(model("gpt2"), tok, "w1 <M> w3", max_new_tokens=2,
                                       samples=2)
    page = shown._repr_html_()
    assert page.count("<tr>") == 3 and "&lt;unk&gt;" in page and "p=" in page
    assert "<!DOCTYPE html>" in shown.to_html()
    assert len(shown.to_text().splitlines()) == 2
    figure = shown.figure()
    assert len(figure.axes[0].get_xticklabels()) == shown.scores.shape[1]
    assert shown.to_numpy().shape == tuple(shown.scores.shape)


@pytest.mark.parametrize(("options", "message"), [
    ({}, "either max_new_tokens"),
    ({"max_new_tokens": 2, "continuation": "w1"}, "either max_new_tokens"),
    ({"max_new_tokens": 0}, "max_new_tokens must be"),
    ({"continuation": ""}, "continuation must be"),
    ({"continuation": ["w1", "w2"]}, "continuation must be"),
    ({"max_new_tokens": 1, "method": "grad_cam"}, "method must be one of"),
    ({"max_new_tokens": 1, "reduce": "l1"}, "reduce must be one of"),
    ({"max_new_tokens": 1, "score": "loss"}, "score must be one of"),
    ({"max_new_tokens": 1, "samples": 0}, "samples must be"),
    ({"max_new_tokens": 1, "noise": -1.0}, "noise must be"),
    ({"max_new_tokens": 1, "batch_size": 0}, "batch_size must be"),
])
def test_bad_arguments_are_named(options: dict[str, Any], message: str, tok: Any) -> None:
    """Each is the user's to fix (an OptionError: the CLI shows one line, exit 2)."""
    with pytest.raises(OptionError, match=message):
        sg.text.explain_generation(model("gpt2"), tok, PROMPT, **options)


def test_empty_prompt_and_non_models_are_refused(tok: Any) -> None:
    with pytest.raises(OptionError, match="has no tokens"):
        sg.text.explain_generation(model("gpt2"), lm_models.tokenizer(bos=False), "",
                                   max_new_tokens=1)
    with pytest.raises(ValueError, match="prompts must be"):
        sg.text.explain_generation(model("gpt2"), tok, [], max_new_tokens=1)
    with pytest.raises(TypeError, match="causal language model"):
        sg.text.explain_generation(nn.Linear(2, 2), tok, PROMPT, max_new_tokens=1)


def test_prompts_past_the_models_positions_are_refused(tok: Any) -> None:
    """The tiny GPT-2 has 64 positions: a 61-token prompt reads 64 with 4 new tokens (the
    last is scored, never read); 5 new tokens, or a 5-token continuation, are refused by
    name (they raised an IndexError from the position embeddings)."""
    prompt = " ".join(["w1"] * 60)
    shown = sg.text.explain_generation(model("gpt2"), tok, prompt, max_new_tokens=4, samples=1)
    assert shown.scores.shape == (4, 65)
    with pytest.raises(OptionError, match=r"max_new_tokens: .* 61 tokens, and 5 more .* 64 "
                                          r"positions it has \(at most 4 more\)"):
        sg.text.explain_generation(model("gpt2"), tok, prompt, max_new_tokens=5, samples=1)
    with pytest.raises(OptionError, match=r"continuation: .*\(the prompt alone is too long"):
        sg.text.explain_generation(model("gpt2"), tok, " ".join(["w1"] * 70),
                                   continuation="w2", samples=1)


# ---- fast=True: bfloat16 where the check accepts it --------------------------------------

@pytest.fixture
def bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU has native bfloat16 (simulated: bfloat16 itself runs on any CPU)."""
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


FAST = {"max_new_tokens": 4, "samples": 8, "batch_size": 4}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients"])
def test_fast_runs_bfloat16_where_the_check_accepts_it(kind: str, method: str, tok: Any,
                                                       bf16: None) -> None:
    lm = model(kind)
    plain = sg.text.explain_generation(lm, tok, [PROMPT, LONGER], method=method, **FAST)
    quick = sg.text.explain_generation(lm, tok, [PROMPT, LONGER], method=method, fast=True,
                                       **FAST)
    for slow, fast in zip(plain, quick, strict=True):
        decided = fast.precision
        assert decided is not None and decided.dtype == "bfloat16", decided
        assert decided.decision == "accepted" and decided.samples == 2
        assert decided.correlation is not None and decided.correlation >= precision.CORRELATION
        assert decided.error_ratio is not None and decided.error_ratio <= precision.ERROR_RATIO
        assert not torch.equal(fast.scores, slow.scores)  # bfloat16 did run
        assert precision.pearson(fast.scores, slow.scores) >= 0.999
        assert fast.target_tokens == slow.target_tokens and fast.samples == slow.samples == 8
        assert "in bfloat16" in fast.caption() and slow.precision is None
        assert "in bfloat16" not in slow.caption()
    assert all(param.dtype == torch.float32 for param in lm.parameters())


def test_fast_refused_is_exactly_fast_false(tok: Any, bf16: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal (here a bar no precision can pass) runs float32: bit-identical to
    fast=False, scores, errors and flip rates."""
    monkeypatch.setattr(precision, "CORRELATION", 1.5)
    lm = model("gpt2")
    plain = sg.text.explain_generation(lm, tok, [PROMPT, LONGER], **FAST)
    quick = sg.text.explain_generation(lm, tok, [PROMPT, LONGER], fast=True, **FAST)
    for slow, fast in zip(plain, quick, strict=True):
        assert fast.precision is not None and fast.precision.dtype == "float32"
        assert fast.precision.decision.startswith("bfloat16 refused: map correlation")
        for name in ("scores", "stderr", "flip_rate", "probability"):
            assert torch.equal(getattr(fast, name), getattr(slow, name)), name


def test_fast_without_bfloat16_or_samples_to_check_runs_float32(
        tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = model("llama")
    plain = sg.text.explain_generation(lm, tok, PROMPT, **FAST)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    quick = sg.text.explain_generation(lm, tok, PROMPT, fast=True, **FAST)
    assert isinstance(plain, sg.text.GenerationResult)
    assert isinstance(quick, sg.text.GenerationResult) and quick.precision is not None
    assert quick.precision.decision.startswith("not supported: bfloat16 needs native support")
    assert torch.equal(quick.scores, plain.scores)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    few = sg.text.explain_generation(lm, tok, PROMPT, fast=True, **{**FAST, "samples": 3})
    assert isinstance(few, sg.text.GenerationResult) and few.precision is not None
    assert few.precision.decision == "too few samples (3) to check a lower precision"


def test_the_check_spreads_its_targets_over_a_long_continuation() -> None:
    from smoothgrad.generation import _JUDGED_VALUES, _judged

    assert _judged(16, 80 * 768) == list(range(16))
    assert _judged(10, _JUDGED_VALUES) == [9]
    assert _judged(10, _JUDGED_VALUES // 3) == [3, 6, 9]


def test_users_model_is_left_as_it_was(tok: Any) -> None:
    lm = lm_models.causal_lm("gpt2").train()
    with pytest.warns(UserWarning, match="training mode"):
        sg.text.explain_generation(lm, tok, PROMPT, max_new_tokens=1, samples=2)
    assert lm.training and all(p.requires_grad for p in lm.parameters())
    assert all(p.grad is None for p in lm.parameters())


# ---- hf:DIR ------------------------------------------------------------------------------------

def test_hf_dir_loads_a_causal_lm_offline(tmp_path: Path, tok: Any) -> None:
    from smoothgrad import hf

    directory = lm_models.save(model("llama"), tmp_path / "llama")
    lm = hf.load_causal_lm(f"hf:{directory}")
    assert not lm.module.training and lm.name == f"hf:{directory}"
    loaded = sg.text.explain_generation(lm.module, lm.tokenizer, PROMPT, max_new_tokens=2,
                                        samples=2)
    direct = sg.text.explain_generation(model("llama"), tok, PROMPT, max_new_tokens=2,
                                        samples=2)
    assert torch.allclose(loaded.scores, direct.scores, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="save_pretrained"):
        hf.load_causal_lm(f"hf:{tmp_path}")


# ---- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lm_models.save(model("gpt2"), tmp_path_factory.mktemp("gpt2"))


def test_cli_generate_prints_and_writes_the_matrices(lm_dir: Path, tmp_path: Path, tok: Any,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from smoothgrad.cli import main

    out = tmp_path / "out"
    code = main(["explain-text", PROMPT, LONGER, "--model", f"hf:{lm_dir}", "--generate", "3",
                 "--samples", "3", "--method", "input_x_gradient", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    expected = sg.text.explain_generation(model("gpt2"), tok, [PROMPT, LONGER],
                                          max_new_tokens=3, samples=3,
                                          method="input_x_gradient")
    assert f"generated: {expected[0].text!r}" in printed
    assert all(f"  {line}\n" in printed for line in expected[1].to_text().splitlines())
    assert "Gradient × Input" in printed
    assert {p.name for p in out.iterdir()} == {
        "generation.html", "generation-1.npy", "generation-1.png", "generation-2.npy",
        "generation-2.png"}
    for i, result in enumerate(expected, start=1):
        np.testing.assert_allclose(np.load(out / f"generation-{i}.npy"), result.to_numpy(),
                                   rtol=1e-6)
    assert (out / "generation.html").read_text().count("<table") == 2


def test_cli_continuation(lm_dir: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from smoothgrad.cli import main

    code = main(["explain-text", PROMPT, "--model", f"hf:{lm_dir}", "--continuation", "w2 w5",
                 "--samples", "2", "--score", "prob", "--top", "1", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0 and "continuation: ' w2 w5'" in printed and "score: prob" in printed
    assert np.load(tmp_path / "generation-1.npy").shape == (2, 8)


@pytest.mark.parametrize(("argv", "message"), [
    (["--generate", "2", "--method", "guided_backprop"], "--method: generation supports"),
    (["--generate", "2", "--target", "1"], "--target does not apply"),
    (["--generate", "2", "--samples", "auto"], "--samples: generation takes a number"),
    (["--score", "logit"], "--score applies only with --generate"),
    (["--generate", "0"], "expected a positive integer"),
    (["--generate", "2", "--continuation", "w1"], "not allowed with argument"),
    (["--generate", "64"], "--generate: prompt 'w1 M w3 w4 w7' has 6 tokens, and 64 more"),
])
def test_cli_generate_errors(argv: list[str], message: str, lm_dir: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from smoothgrad.cli import main

    try:
        code = main(["explain-text", PROMPT, "--model", f"hf:{lm_dir}", *argv,
                     "--out", str(tmp_path / "out")])
    except SystemExit as exit:  # argparse's own errors
        code = int(str(exit.code))
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
