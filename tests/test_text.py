"""Text transformers, several inputs, layer noise, outputs that are not tensors (issue 11).

The BERT here is tiny and random (vocab 99, hidden 32, 2 layers), saved with save_pretrained
into a temporary directory and loaded back offline; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from smoothgrad import outputs, tokens
from smoothgrad.inputs import layer_output, prepare
from smoothgrad.layers import BLOCK, sequence_normal
from smoothgrad.methods.gradient import input_x_gradient
from smoothgrad.methods.integrated_gradients import integrated_gradients

transformers = pytest.importorskip("transformers")

WORDS = [f"w{i}" for i in range(94)]
"""The tiny vocabulary: 5 special tokens + w0..w93 = 99 ids."""


def _vocab(directory: Path) -> Path:
    path = directory / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


def tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A random tiny BERT classifier + tokenizer written with save_pretrained to `directory`."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1}, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config).eval()
    tokenizer = transformers.BertTokenizer(str(_vocab(directory)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def bert(bert_dir: Path) -> Iterator[nn.Module]:
    from smoothgrad import hf

    yield hf.load(f"hf:{bert_dir}")


def _ids(texts: list[str], model: nn.Module, length: int | None = None) -> tuple[Tensor, Tensor]:
    batch = model.tokenizer(texts, padding="max_length" if length else True,  # type: ignore[operator]
                            max_length=length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


# ---- loading -----------------------------------------------------------------------------

def test_hf_load_offline_labels_embeddings(bert: nn.Module, bert_dir: Path) -> None:
    assert bert.labels == ["negative", "positive"]
    assert bert.embeddings is bert.model.get_input_embeddings()
    assert bert.name == f"hf:{bert_dir}"
    encoded = bert.encode(["w1 w2 w3", "w4"])
    assert encoded.input_ids.shape == (2, 5) and encoded.attention_mask[1].tolist() == [
        1, 1, 1, 0, 0]
    assert bert.tokens(encoded.input_ids[1], encoded.attention_mask[1]) == [
        "[CLS]", "w4", "[SEP]"]
    assert bert(encoded.input_ids, **encoded.extra).shape == (2, 2)
    top = bert.top_k(encoded, k=2)
    assert [label for label, _ in top[0]] in (["negative", "positive"], ["positive", "negative"])


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

def test_runner_at_noise_zero_equals_captum_layer_methods(bert: nn.Module) -> None:
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    ids, mask = _ids(["w1 w2 w3 w4 w5", "w6 w7"], bert)
    target = torch.tensor([0, 1])
    subject = prepare(bert, ids, forward_kwargs={"attention_mask": mask}, layer=bert.embeddings)
    runner = subject.runner()
    ours = input_x_gradient(runner, subject.explained, target)
    theirs = LayerGradientXActivation(bert, bert.embeddings).attribute(
        ids, target=target, additional_forward_args=(mask,))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    pads = torch.zeros_like(ids)
    baseline = layer_output(bert, bert.embeddings, (pads,), {"attention_mask": mask})
    ours = integrated_gradients(runner, subject.explained, target, baseline=baseline, steps=20)
    theirs = LayerIntegratedGradients(bert, bert.embeddings).attribute(
        ids, baselines=pads, target=target, additional_forward_args=(mask,), n_steps=20)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


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
    assert "&lt;b&gt;" in page and "positive (0.750)" in page
    red, blue = shown.colors()[1], shown.colors()[2]
    assert red[0] > red[2] and blue[2] > blue[0] and shown.colors()[0][0] > 240
    assert "\x1b[48;2;" in shown.to_ansi()
    assert shown.to_html().startswith("<!DOCTYPE html>")
    figure = shown.figure()
    assert len(figure.axes) == 2
    with pytest.raises(ValueError, match="2 entries for 3 tokens"):
        tokens.TokenScores(["a", "b", "c"], [1.0, 2.0])
