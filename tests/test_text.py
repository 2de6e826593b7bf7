"""Text transformers, layer noise, outputs that are not tensors (issue 11).

The BERT here is tiny and random (`text_models.tiny_bert`), saved with save_pretrained into a
temporary directory and loaded back offline; nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad import outputs, tokens
from smoothgrad.inputs import prepare
from smoothgrad.layers import BLOCK, sequence_normal

transformers = pytest.importorskip("transformers")
from text_models import WORDS, hit_rate, sentences, tiny_bert, train_planted  # noqa: E402


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert(bert_dir: Path) -> Iterator[nn.Module]:
    yield sg.models.load(f"hf:{bert_dir}")


def _ids(texts: list[str], model: nn.Module, length: int | None = None) -> tuple[Tensor, Tensor]:
    batch = model.tokenizer(texts, padding="max_length" if length else True,  # type: ignore[operator]
                            max_length=length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


# ---- loading -----------------------------------------------------------------------------

def test_hf_load_offline_labels_embeddings(bert: nn.Module, bert_dir: Path) -> None:
    assert isinstance(bert, sg.models.LoadedModel) and not bert.training
    assert bert.labels == ["negative", "positive"]
    with pytest.raises(ValueError, match="text model"):
        bert.preprocess(None)
    assert bert.embeddings is bert.module.get_input_embeddings()
    assert bert.name == f"hf:{bert_dir}"
    encoded = bert.encode(["w1 w2 w3", "w4"])
    assert encoded.input_ids.shape == (2, 5) and encoded.attention_mask[1].tolist() == [
        1, 1, 1, 0, 0]
    assert bert.tokens(encoded.input_ids[1], encoded.attention_mask[1]) == [
        "[CLS]", "w4", "[SEP]"]
    assert bert(encoded.input_ids, **encoded.extra).shape == (2, 2)
    top = bert.top_k(encoded.input_ids[:1], k=2)
    assert sorted(label for label, _ in top) == ["negative", "positive"]
    assert sum(p for _, p in top) == pytest.approx(1.0)


def test_hf_load_names_the_problem(tmp_path: Path) -> None:
    from smoothgrad import hf

    with pytest.raises(ValueError, match=r"model: .*save_pretrained"):
        hf.load(f"hf:{tmp_path}")


# ---- outputs -----------------------------------------------------------------------------

def test_outputs_tensor_tuple_dict_modeloutput() -> None:
    logits = torch.randn(2, 3)
    assert outputs.pick(logits) is logits
    assert outputs.pick((logits, torch.zeros(1))) is logits
    assert outputs.pick([logits]) is logits
    assert outputs.pick({"loss": torch.zeros(()), "logits": logits}) is logits
    hf_output = transformers.modeling_outputs.SequenceClassifierOutput(
        loss=torch.zeros(()), logits=logits)
    assert hf_output[0].dim() == 0  # the loss comes first when labels were passed
    assert outputs.pick(hf_output) is logits
    assert outputs.pick({"scores": logits}, lambda out: out["scores"]) is logits
    with pytest.raises(ValueError, match="'scores', 'hidden'"):
        outputs.pick({"scores": logits, "hidden": logits})
    with pytest.raises(TypeError, match="output"):
        outputs.check_output_fn(3)
    with pytest.raises(TypeError, match="output: the callable must return a tensor"):
        outputs.pick(logits, lambda out: "no")


# ---- layer noise and the runner ----------------------------------------------------------

def test_sequence_noise_ignores_padding_length_and_batch() -> None:
    alone = torch.ones(1, 5, dtype=torch.bool)
    padded = torch.zeros(2, 64, dtype=torch.bool)
    padded[0, :5] = True
    padded[1, :40] = True
    a = sequence_normal(3, [0, 7], alone, (4,))
    b = sequence_normal(3, [0, 7], padded, (4,))
    assert torch.equal(a[:, 0], b[:, 0, :5])
    assert not b[:, 0, 5:].any() and b[:, 1, :40].ne(0).all()
    left = torch.zeros(1, 9, dtype=torch.bool)
    left[0, 4:] = True  # left padding: the j-th real token gets the same noise
    assert torch.equal(sequence_normal(3, [0], left, (4,))[0, 0, 4:], a[0, 0])
    assert BLOCK < 40  # the longer example used more than one draw
    pair = sequence_normal(3, [0, 1], alone, (4,), antithetic=True)
    assert torch.equal(pair[1], -pair[0])


def test_layer_sigma_counts_real_positions_only(bert: nn.Module) -> None:
    ids, mask = _ids(["w1 w2", "w3 w4 w5 w6"], bert, length=8)
    subject = prepare(bert, ids, forward_kwargs={"attention_mask": mask}, layer=bert.embeddings)
    sigma = subject.sigma(0.1, None)
    for i in range(2):
        real = subject.explained[i][mask[i].bool()]
        assert torch.allclose(sigma[i], 0.1 * (real.max() - real.min()))
    assert subject.keep(slice(0, 2)).shape == (2, 8, 1)


def test_errors_name_the_argument(bert: nn.Module) -> None:
    ids, mask = _ids(["w1 w2"], bert)
    with pytest.raises(TypeError, match="x: token ids must be an integer tensor"):
        prepare(bert, ids.float(), layer=bert.embeddings)
    with pytest.raises(ValueError, match=r"attention_mask.*\(1, 4\)"):
        prepare(bert, ids, forward_kwargs={"attention_mask": mask[:, :3]}, layer=bert.embeddings)
    with pytest.raises(ValueError, match="noise_mask"):
        prepare(bert, ids, noise_mask=mask[:, :3], layer=bert.embeddings)
    with pytest.raises(ValueError, match=r"layer .*not a submodule"):
        prepare(bert, ids, layer=nn.Linear(2, 2))
    table = torch.randn(3, 4)
    subject = prepare(TwoInputs(), (torch.randn(3, 1, 4, 4), table))
    with pytest.raises(ValueError, match="stdev must be one value or one per floating input"):
        subject.sigma(0.1, (0.1, 0.2, 0.3))


# ---- several inputs ----------------------------------------------------------------------

class TwoInputs(nn.Module):
    """An image branch and a table branch, optionally with integer ids and a dict output."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.table = nn.Linear(4, 6)
        self.embed = nn.Embedding(10, 6)
        self.head = nn.Linear(2 * 16 + 6, 3)
        self.as_dict = as_dict

    def forward(self, image: Tensor, table: Tensor, ids: Tensor | None = None) -> object:
        extra = self.table(table).tanh()
        if ids is not None:
            extra = extra + self.embed(ids).mean(dim=1)
        logits = self.head(torch.cat([self.conv(image).relu().flatten(1), extra], dim=1))
        return {"logits": logits, "extra": extra} if self.as_dict else logits


def test_two_inputs_runner_matches_model_and_integers_untouched() -> None:
    torch.manual_seed(0)
    model = TwoInputs(as_dict=True).eval()
    image, table = torch.randn(2, 1, 4, 4), torch.randn(2, 4)
    ids = torch.randint(0, 10, (2, 5))
    subject = prepare(model, (image, table, ids))
    assert subject.floating == (0, 1) and subject.explained.shape == (2, 16 + 4)
    noisy = subject.explained.repeat(3, 1) + 0.1
    expected = model(image.repeat(3, 1, 1, 1) + 0.1, table.repeat(3, 1) + 0.1,
                     ids.repeat(3, 1))["logits"]
    torch.testing.assert_close(subject.runner()(noisy), expected)
    unpacked = subject.unpack(subject.explained)
    assert torch.equal(unpacked[0], image) and torch.equal(unpacked[1], table)
    assert subject.inputs[2].dtype == torch.long and torch.equal(subject.inputs[2], ids)
    sigma = subject.sigma(0.2, None)
    assert torch.allclose(sigma[:, :16], 0.2 * (image.flatten(1).amax(1) - image.flatten(1).amin(
        1))[:, None].expand(2, 16))
    per_input = subject.sigma(0.0, (0.5, torch.full((4,), 3.0)))
    assert per_input[:, :16].eq(0.5).all() and per_input[:, 16:].eq(3.0).all()


# ---- token scores and rendering ----------------------------------------------------------

def test_token_scores_reductions() -> None:
    a = torch.tensor([[[3.0, -4.0], [1.0, 1.0], [5.0, 5.0]]])
    e = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert tokens.token_scores(a, "sum", mask=mask).tolist() == [[-1.0, 2.0, 0.0]]
    assert tokens.token_scores(a, "norm", mask=mask).tolist() == [[5.0, pytest.approx(2**0.5),
                                                                    0.0]]
    assert tokens.token_scores(a, "dot", embeddings=e, mask=mask).tolist() == [[-1.0, 2.0, 0.0]]
    normed = tokens.token_scores(a, "sum", mask=mask, normalize="l1")
    assert normed.abs().sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reduce must be one of"):
        tokens.token_scores(a, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs embeddings"):
        tokens.token_scores(a, "dot")


def test_token_html_ansi_and_figure() -> None:
    shown = tokens.TokenScores(["[CLS]", "<b>", "bad"], [0.0, 1.0, -1.0], label="positive",
                               probability=0.75)
    page = shown._repr_html_()
    assert "&lt;b&gt;" in page and "positive (p = 0.750)" in page
    red, blue = shown.colors()[1], shown.colors()[2]
    assert red[0] > red[2] and blue[2] > blue[0] and shown.colors()[0][0] > 240
    assert "\x1b[48;2;" in shown.to_ansi()
    assert shown.to_html().startswith("<!DOCTYPE html>")
    figure = shown.figure()
    assert len(figure.axes) == 2
    with pytest.raises(ValueError, match="2 entries for 3 tokens"):
        tokens.TokenScores(["a", "b", "c"], [1.0, 2.0])


# ---- sg.smooth at a layer ----------------------------------------------------------------

def test_smooth_at_noise_zero_equals_captum_layer_methods(bert: nn.Module) -> None:
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    ids, mask = _ids(["w1 w2 w3 w4 w5", "w6 w7"], bert)
    options = {"layer": bert.embeddings, "forward_kwargs": {"attention_mask": mask},
               "noise": 0.0}
    result = sg.smooth(bert, ids, method="input_x_gradient", **options)
    theirs = LayerGradientXActivation(bert, bert.embeddings).attribute(
        ids, target=result.target, additional_forward_args=(mask,))
    torch.testing.assert_close(result.attribution, theirs * mask[..., None], rtol=1e-5,
                               atol=1e-7)
    assert result.samples == 1 and result.inputs.shape == (2, ids.shape[1], 32)
    pads = torch.zeros_like(ids)  # [PAD] everywhere: its layer output is the baseline
    result = sg.smooth(bert, ids, method="integrated_gradients", **options,
                       method_kwargs={"baseline": pads, "steps": 20})
    theirs = LayerIntegratedGradients(bert, bert.embeddings).attribute(
        ids, baselines=pads, target=result.target, additional_forward_args=(mask,),
        n_steps=20)
    torch.testing.assert_close(result.attribution, theirs * mask[..., None], rtol=1e-4,
                               atol=1e-6)


def test_smooth_at_a_layer_equals_a_hand_loop_over_inputs_embeds(bert: nn.Module) -> None:
    ids, mask = _ids(["w1 w2 w3 w4 w5 w6", "w7 w8"], bert)
    result = sg.smooth(bert, ids, layer=bert.embeddings, forward_kwargs={"attention_mask": mask},
                       samples=6, noise=0.1, seed=4, batch_size=4)
    clean = bert.embeddings(ids).detach()
    sigma = torch.stack([0.1 * (clean[i][mask[i].bool()].max() - clean[i][mask[i].bool()].min())
                         for i in range(2)])
    noise = sequence_normal(4, range(6), mask.bool(), (32,))
    total = torch.zeros_like(clean)
    for k in range(6):
        embeds = (clean + sigma[:, None, None] * noise[k]).requires_grad_(True)
        logits = bert.module(inputs_embeds=embeds, attention_mask=mask).logits
        (grad,) = torch.autograd.grad(logits.gather(1, result.target[:, None]).sum(), embeds)
        total += grad * mask[..., None]
    torch.testing.assert_close(result.attribution, total / 6, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.sigma, sigma)


def test_hf_model_output_is_read_by_its_logits(bert: nn.Module) -> None:
    ids, mask = _ids(["w1 w2 w3", "w4"], bert)
    options = {"forward_kwargs": {"attention_mask": mask}, "samples": 3}
    wrapped = sg.smooth(bert, ids, layer=bert.embeddings, **options)
    raw = sg.smooth(bert.module, ids, layer=bert.embeddings, **options)  # a ModelOutput
    assert torch.equal(wrapped.attribution, raw.attribution)


def test_padding_and_batching_do_not_change_a_sentence_map(bert: nn.Module) -> None:
    def smoothed(texts: list[str], length: int) -> Tensor:
        ids, mask = _ids(texts, bert, length)
        result = sg.smooth(bert, ids, layer=bert.embeddings, samples=4, seed=1, target=1,
                           forward_kwargs={"attention_mask": mask}, batch_size=3)
        assert not result.attribution[0][~mask[0].bool()].any()  # padding: zero attribution
        return result.attribution[0, : int(mask[0].sum())]

    alone = smoothed(["w3 w4 w5"], 8)
    torch.testing.assert_close(smoothed(["w3 w4 w5"], 64), alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(smoothed(["w3 w4 w5", " ".join(WORDS[:30])], 40), alone,
                               rtol=1e-4, atol=1e-6)


def test_integer_inputs_untouched_and_model_unchanged(bert: nn.Module) -> None:
    ids, mask = _ids(["w1 w2 w3"], bert)
    ids_copy, mask_copy = ids.clone(), mask.clone()
    state = {k: v.clone() for k, v in bert.state_dict().items()}
    hooks = sum(len(m._forward_hooks) for m in bert.modules())
    bert.train()
    with pytest.warns(UserWarning, match="training mode"):
        sg.smooth(bert, ids, layer=bert.embeddings, samples=2,
                  forward_kwargs={"attention_mask": mask})
    assert bert.training and all(p.requires_grad for p in bert.parameters())
    bert.eval()
    assert torch.equal(ids, ids_copy) and ids.dtype == torch.long and torch.equal(mask, mask_copy)
    assert all(torch.equal(v, state[k]) for k, v in bert.state_dict().items())
    assert sum(len(m._forward_hooks) for m in bert.modules()) == hooks


def test_smooth_errors_name_the_argument(bert: nn.Module) -> None:
    ids, mask = _ids(["w1 w2"], bert)
    with pytest.raises(TypeError, match="x: token ids must be an integer"):
        sg.smooth(bert, ids.float(), layer=bert.embeddings)
    with pytest.raises(ValueError, match="attention_mask"):
        sg.smooth(bert, ids, layer=bert.embeddings, forward_kwargs={"attention_mask": mask[:, 1:]})
    with pytest.raises(ValueError, match="layer"):
        sg.smooth(bert, ids, layer=nn.Embedding(3, 3))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sg.smooth(bert, ids)  # token ids without layer=: still the old message


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    """A tiny BERT trained (200 Adam steps, a few seconds) to find the trigger word."""
    from smoothgrad import hf

    return train_planted(hf.load(f"hf:{tiny_bert(tmp_path_factory.mktemp('planted'), seed=1)}"))


HIT_RATE = {"gradient": 0.8, "input_x_gradient": 0.8, "integrated_gradients": 0.8}


@pytest.mark.parametrize("method", list(HIT_RATE))
def test_planted_trigger_ranks_first(planted: nn.Module, method: str) -> None:
    from smoothgrad.text import explain_text

    texts, labels, where = sentences(30, torch.Generator().manual_seed(99))
    options = {"steps": 8} if method == "integrated_gradients" else {}
    shown = explain_text(planted, texts, method=method, samples=10, seed=0,
                         reduce="norm", method_kwargs=options)
    assert torch.equal(shown.result.target, labels)  # the model learned the task
    rate = hit_rate(shown.texts, where)
    print(f"planted trigger hit rate, {method}: {rate:.2f}")
    assert rate >= HIT_RATE[method]


# ---- the command line --------------------------------------------------------------------

def test_cli_explain_text(planted: nn.Module, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from smoothgrad.cli import main

    directory = tmp_path / "model"
    planted.module.save_pretrained(directory)
    planted.tokenizer.save_pretrained(directory)
    out = tmp_path / "out"
    code = main(["explain-text", "w12 w40 w1 w77", "w50 w0", "--model", f"hf:{directory}",
                 "--samples", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "1. positive" in printed and "<- explained" in printed
    assert "w1(+" in printed and "\x1b[" not in printed  # plain text: not a terminal
    assert {p.name for p in out.iterdir()} == {"explain-text.html", "text-1.png", "text-2.png"}
    assert "w40" in (out / "explain-text.html").read_text()


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "efficientnet_lite0"], "--model: explain-text needs a Hugging Face directory"),
    (["--model", "hf:/no/such/dir"], "is not a directory written by save_pretrained"),
])
def test_cli_explain_text_errors(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from smoothgrad.cli import main

    assert main(["explain-text", "w1", *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


# ---- issue 23: long texts, the methods offered, quiet loading, readable token colours ----

LONG = " ".join(f"w{10 + i % 80}" for i in range(600))  # 602 tokens with [CLS] and [SEP]


def test_long_text_is_truncated_to_the_model_with_one_warning(bert: nn.Module) -> None:
    """Issue 23: a text longer than BERT's 512 positions raised a size mismatch deep in the
    model; it is cut to the model's maximum with a warning saying what was dropped, and the
    map is the map of the text cut there by hand."""
    from smoothgrad.text import explain_text

    assert bert.max_length == 512
    with pytest.warns(UserWarning, match="takes at most 512 tokens: text 1 lost its last 90 "
                                         "tokens") as caught:
        shown = explain_text(bert, [LONG, "w1 w2"], samples=2)
    assert len(caught) == 1
    assert len(shown.texts[0].tokens) == 512 and shown.texts[1].tokens[1:3] == ["w1", "w2"]
    by_hand = explain_text(bert, [LONG, "w1 w2"], samples=2, max_length=512)  # no warning
    assert shown.texts[0].values == by_hand.texts[0].values
    with pytest.raises(ValueError, match="max_length 600 is more than the 512 tokens"):
        explain_text(bert, [LONG], samples=2, max_length=600)


def test_max_length_counts_roberta_position_offset(tmp_path: Path) -> None:
    """RoBERTa's positions start after its padding index: 514 embeddings take 512 tokens."""
    from smoothgrad import hf

    config = transformers.RobertaConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=8,
                                        max_position_embeddings=20, pad_token_id=1)
    module = transformers.RobertaForSequenceClassification(config).eval()
    tokenizer = type("Tokenizer", (), {"model_max_length": int(1e30)})()
    assert hf.TextModel(module, tokenizer, "roberta").max_length == 18


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smoothgrad", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_cli_long_text_warns_once_and_max_length_is_checked(
        bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23: 25 frames of traceback before; now one warning line, and the map."""
    from smoothgrad.cli import main

    done = run_cli("explain-text", LONG, "--model", f"hf:{bert_dir}", "--samples", "2",
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("smoothgrad: warning:")
    assert "text 1 lost its last 90 tokens" in done.stderr
    assert (tmp_path / "out" / "text-1.png").is_file()
    assert main(["explain-text", "w1", "--model", f"hf:{bert_dir}", "--max-length", "600",
                 "--out", str(tmp_path / "other"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error == ("smoothgrad: error: --max-length 600: the model takes at most 512 "
                     "tokens\n")
    assert not (tmp_path / "other").exists()


def test_cli_quiet_shows_nothing_not_even_transformers_progress(bert_dir: Path,
                                                               tmp_path: Path) -> None:
    """Issue 23: --quiet still showed transformers' "Loading weights" progress bar."""
    done = run_cli("explain-text", "w1 w2", "--model", f"hf:{bert_dir}", "--samples", "2",
                   "--quiet", "--out", str(tmp_path))
    assert done.returncode == 0 and (done.stdout, done.stderr) == ("", "")


def test_cli_offers_only_methods_that_explain_text(bert: nn.Module,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23: --method offered grad_cam and grad_cam_plus_plus, which always failed on
    text; every method offered now runs, and --help speaks of texts, not images."""
    from smoothgrad.cli.parser import build_parser
    from smoothgrad.text import explain_text

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["explain-text", "w1", "--model", "hf:x", "--method", "grad_cam"])
    assert exit_.value.code == 2 and "invalid choice: 'grad_cam'" in capsys.readouterr().err
    (action,) = [a for a in parser._subparsers._group_actions[0].choices[  # type: ignore[union-attr]
        "explain-text"]._actions if a.dest == "method"]
    assert action.choices
    for method in action.choices:
        with warnings.catch_warnings():  # guided backprop: "left tanh unmodified"; it runs
            warnings.simplefilter("ignore")
            explain_text(bert, ["w1 w2 w3"], method=method, samples=2,
                         **({"method_kwargs": {"steps": 4}} if "integrated" in method else {}))
    with pytest.raises(SystemExit):
        parser.parse_args(["explain-text", "--help"])
    shown = capsys.readouterr().out
    assert "image" not in shown and "per text" in shown and "every text" in shown


def test_token_text_contrasts_with_its_cell_as_rendered() -> None:
    """Issue 23: the PNG drew the strongest token in black on dark red (contrast 1.6). Each
    token's text, as drawn, must contrast with its cell by at least 4.5 (WCAG AA), in the
    figure's pixels, the HTML and the terminal."""
    import re

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    shown = tokens.TokenScores(["strong", "weak", "none", "against", "strongest"],
                               [0.9, 0.3, 0.0, -0.7, 1.0])
    figure = shown.figure()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    renderer = canvas.get_renderer()
    height = pixels.shape[0]
    for text in figure.axes[0].texts:
        box = text.get_bbox_patch().get_window_extent(renderer)  # type: ignore[union-attr]
        cell = pixels[height - int(box.y1) + 2:height - int(box.y0) - 2,
                      int(box.x0) + 2:int(box.x1) - 2].reshape(-1, 3)
        colours, counts = np.unique(cell, axis=0, return_counts=True)
        background = colours[counts.argmax()]
        ink = cell[np.abs(cell - background).sum(axis=1).argmax()]  # the text's strongest pixel
        assert tokens.contrast(ink, background) >= 4.5, (text.get_text(), ink, background)
    for style in re.findall(r"background: rgb\(([\d,]+)\).*?color: rgb\(([\d,]+)\)",
                            shown._repr_html_()):
        cell_rgb, ink_rgb = ([int(v) for v in part.split(",")] for part in style)
        assert tokens.contrast(cell_rgb, ink_rgb) >= 4.5
    for r, g, b, code in re.findall(r"48;2;(\d+);(\d+);(\d+)m\x1b\[(\d+)m", shown.to_ansi()):
        ink_rgb = (0, 0, 0) if code == "30" else (255, 255, 255)
        assert tokens.contrast((int(r), int(g), int(b)), ink_rgb) >= 4.5
