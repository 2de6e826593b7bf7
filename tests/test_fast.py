"""The fast path (an optimised copy, checked); the batch-size search is in test_tuning.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import smoothgrad as sg
from conftest import images, seeded
from smoothgrad import fast, guard, precision
from smoothgrad.inputs import prepare


class BatchNormCNN(nn.Module):
    """Foldable pairs (conv-BN with and without bias, affine-free BN, linear-BN1d) and
    unfoldable ones: a conv whose output is also a residual, a BN used twice."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6, affine=False)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.bn3 = nn.BatchNorm2d(6)  # conv3's output is reused: must not fold
        self.bn_shared = nn.BatchNorm2d(6)  # called twice: must not fold
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.bn4 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn2(self.conv2(x)))
        y = self.conv3(x)
        x = F.relu(self.bn3(y) + y)
        x = self.bn_shared(self.bn_shared(x))
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(F.relu(self.bn4(self.fc1(x))))


@pytest.fixture
def bn_cnn() -> nn.Module:
    return seeded(BatchNormCNN())


def state(model: nn.Module) -> tuple[object, ...]:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()},
            [type(m).__name__ for m in model.modules()])


def assert_same_state(a: tuple[object, ...], b: tuple[object, ...]) -> None:
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3]
    sa, sb = a[2], b[2]
    assert isinstance(sa, dict) and isinstance(sb, dict) and sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_folding_keeps_the_logits_and_folds_only_safe_pairs(bn_cnn: nn.Module) -> None:
    x = images(4)
    copy = fast.optimize(bn_cnn, x, channels_last=False)
    assert copy.report.folded == 3  # bn1, bn2, bn4; not bn3 (residual) nor bn_shared
    kinds = [type(m).__name__ for m in copy.inner.modules()]
    assert kinds.count("BatchNorm2d") == 2 and kinds.count("BatchNorm1d") == 0
    with torch.no_grad():
        torch.testing.assert_close(copy(images(3, seed=5)), bn_cnn(images(3, seed=5)),
                                   rtol=1e-5, atol=1e-5)
    assert copy.report.logit_error < 1e-5


def test_fast_map_matches_fp32_and_leaves_the_model_alone(bn_cnn: nn.Module) -> None:
    x = images(2)
    before = state(bn_cnn)
    reference = sg.smooth(bn_cnn, x, samples=16, seed=1)
    quick = sg.smooth(bn_cnn, x, samples=16, seed=1, fast=True)
    assert_same_state(before, state(bn_cnn))
    a, b = reference.attribution.flatten().double(), quick.attribution.flatten().double()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.999
    torch.testing.assert_close(quick.attribution, reference.attribution, rtol=1e-3, atol=1e-5)
    assert torch.equal(quick.target, reference.target)
    for batch_size in (1, 5):
        torch.testing.assert_close(sg.smooth(bn_cnn, x, samples=16, seed=1, fast=True,
                                             batch_size=batch_size).attribution,
                                   quick.attribution, rtol=1e-5, atol=1e-7)


def test_guided_backprop_survives_the_fast_path(bn_cnn: nn.Module) -> None:
    x = images(2)
    guided = sg.smooth(bn_cnn, x, method="guided_backprop", samples=6, fast=True)
    plain = sg.smooth(bn_cnn, x, samples=6, fast=True)
    reference = sg.smooth(bn_cnn, x, method="guided_backprop", samples=6)
    torch.testing.assert_close(guided.attribution, reference.attribution, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(guided.attribution, plain.attribution)


def test_prepare_caches_until_the_weights_change(bn_cnn: nn.Module) -> None:
    x = images(1)
    first = fast.cached_copy(bn_cnn, x)
    assert fast.cached_copy(bn_cnn, images(1, seed=9)) is first  # same shape: reused
    assert fast.cached_copy(bn_cnn, images(1, size=16)) is not first  # new shape: rebuilt
    again = fast.cached_copy(bn_cnn, x)
    with torch.no_grad():
        bn_cnn.conv1.weight.mul_(2)
    changed = fast.cached_copy(bn_cnn, x)
    assert changed is not again
    with torch.no_grad():
        torch.testing.assert_close(changed(x), bn_cnn(x), rtol=1e-5, atol=1e-5)


def test_lossy_dtype_reports_and_is_refused_below_the_bar(bn_cnn: nn.Module) -> None:
    x = images(2)
    half = fast.optimize(bn_cnn, x, dtype=torch.bfloat16, min_correlation=0.0)
    assert half.report.dtype == torch.bfloat16
    assert 0.5 < half.report.map_correlation < 1.0
    assert half(x).dtype == torch.float32
    with pytest.raises(fast.FastPathError, match="correlate"):
        fast.optimize(bn_cnn, x, dtype=torch.bfloat16, min_correlation=0.999999)


def test_non_foldable_models_pass_through_unchanged() -> None:
    model = seeded(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)))
    copy = fast.optimize(model, images(2))
    assert copy.report.folded == 0
    with torch.no_grad():
        torch.testing.assert_close(copy(images(2)), model(images(2)))


def test_reusing_freed_memory_changes_nothing_but_the_allocator(bn_cnn: nn.Module) -> None:
    x = images(2)
    plain = sg.smooth(bn_cnn, x, samples=6).attribution
    with guard.reusing_freed_memory() as active:
        reused = sg.smooth(bn_cnn, x, samples=6).attribution
        big = torch.ones(64 * 2**20 // 4)  # over glibc's mapping threshold: from the heap now
        assert float(big.sum()) == big.numel()
    assert isinstance(active, bool)
    assert torch.equal(plain, reused)


# ------------------------------------------------- every input kind, reduced precision

transformers = pytest.importorskip("transformers")


@pytest.fixture
def bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU has native bfloat16 (simulated: the check itself runs whatever the CPU)."""
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


@pytest.fixture
def no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU has no native bfloat16 (simulated)."""
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))


def bert(init: float = 0.02, attention: str = "sdpa") -> nn.Module:
    """A random 2-layer BERT classifier; weights drawn with std `init` (BERT's own 0.02
    makes maps that hardly move with the noise; 0.2 makes them vary as a trained model's)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=2, initializer_range=init,
        attn_implementation=attention)
    return transformers.BertForSequenceClassification(config).eval()


def text_call(model: nn.Module) -> dict[str, object]:
    """Two sentences, the second padded: noise at the word embeddings, mask as kwarg."""
    ids = torch.randint(5, 99, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return {"x": ids, "layer": model.get_input_embeddings(), "samples": 20, "seed": 3,
            "forward_kwargs": {"attention_mask": mask}, "batch_size": 8}


def smoothed(model: nn.Module, call: dict[str, object], **options: object) -> sg.SmoothResult:
    return sg.smooth(model, **{**call, **options})  # type: ignore[arg-type]


def correlations(a: Tensor, b: Tensor) -> list[float]:
    return [float(torch.corrcoef(torch.stack([p, q]))[0, 1])
            for p, q in zip(a.flatten(1).double(), b.flatten(1).double(), strict=True)]


class Inputs(nn.Module):
    """An image, a table and token ids; returns a dict with the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.table = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(4, 6)
        self.embed, self.head = nn.Embedding(10, 6), nn.Linear(2 * 16 + 6, 3)

    def forward(self, image: Tensor, table: Tensor, ids: Tensor) -> dict[str, Tensor]:
        extra = self.table(table).tanh() + self.embed(ids).mean(dim=1)
        return {"logits": self.head(torch.cat([self.conv(image).relu().flatten(1), extra], 1))}


def test_fast_takes_every_input_kind_and_equals_fast_false_in_float32(no_bf16: None) -> None:
    """Issue 20: fast=True used to refuse layer=, forward_kwargs, tuple inputs, noise_mask and
    output=. In float32 with nothing to change (the transformer), the map is fast=False's bit
    for bit; with an image input (channels-last weights), to rounding."""
    model = bert()
    call = text_call(model)
    calls = [call, {**call, "noise_mask": torch.ones(2, 12, dtype=torch.bool),
                    "output": lambda out: out.logits}]
    inputs = seeded(Inputs())
    image, table = images(2, size=4)[:, :1], torch.randn(2, 4)
    ids = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0))
    calls.append({"x": (image, table, ids), "samples": 10, "batch_size": 4})
    for options in calls:
        subject = inputs if isinstance(options["x"], tuple) else model
        plain = smoothed(subject, options)
        quick = smoothed(subject, options, fast=True)
        assert quick.precision is not None and quick.precision.dtype == "float32"
        assert torch.equal(plain.flip_rate, quick.flip_rate)
        if subject is model:
            assert torch.equal(plain.attribution, quick.attribution)
            continue
        for a, b in zip(plain.attribution, quick.attribution, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fast_takes_a_model_output() -> None:
    """Issue 24: fast=True raised AttributeError ('...ImageClassifierOutput...' has no
    attribute 'to') on transformers image classifiers; fast=False took them."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], num_labels=5)
    model = transformers.ResNetForImageClassification(config).eval()
    x = images(2, size=32)
    plain = sg.smooth(model, x, samples=6, batch_size=6)
    quick = sg.smooth(model, x, samples=6, batch_size=6, fast=True)
    assert fast.cached_copy(model, x).report.folded > 0  # BatchNorms folded through it
    torch.testing.assert_close(quick.attribution, plain.attribution, rtol=1e-4, atol=1e-6)
    assert torch.equal(quick.target, plain.target)


def test_bfloat16_accepted_on_a_bert_like_model(bf16: None) -> None:
    """Reduced precision where the map holds: the check accepts bfloat16, says so, and the map
    agrees with float32's within the check's bars; the check's copies count as samples."""
    model = bert(init=0.2)
    call = text_call(model)
    counted: list[int] = []
    quick = smoothed(model, call, fast=True, progress=counted.append)
    plain = smoothed(model, call)
    decided = quick.precision
    assert decided is not None and decided.dtype == "bfloat16" and decided.reduced
    assert decided.decision == "accepted" and decided.samples == 2
    assert decided.correlation is not None and decided.correlation >= precision.CORRELATION
    assert decided.error_ratio is not None and decided.error_ratio <= precision.ERROR_RATIO
    assert "bfloat16 (accepted" in str(decided)
    assert min(correlations(quick.attribution, plain.attribution)) >= 0.999
    error = (quick.attribution - plain.attribution).flatten(1).norm(dim=1)
    assert bool((error <= 0.1 * plain.stderr.flatten(1).norm(dim=1)).all())
    assert not torch.equal(quick.attribution, plain.attribution)  # bfloat16 did run
    assert sum(counted) == quick.samples == 20
    auto = smoothed(model, call, fast=True, samples="auto", max_samples=30, tol=0.5)
    assert auto.precision is not None and auto.precision.samples == 2
    assert auto.samples % 10 == 0


def test_bfloat16_refused_falls_back_to_exactly_fast_false(bf16: None) -> None:
    """Where the check fails (a map that hardly moves with the noise: bfloat16's error is
    0.27 of the standard error), the call runs float32: bit-identical to fast=False."""
    model = bert(init=0.02)
    call = text_call(model)
    quick = smoothed(model, call, fast=True)
    assert quick.precision is not None and quick.precision.dtype == "float32"
    assert "bfloat16 refused: precision error" in quick.precision.decision
    assert quick.precision.error_ratio is not None and quick.precision.error_ratio > 0.1
    assert torch.equal(quick.attribution, smoothed(model, call).attribution)
    assert torch.equal(quick.stderr, smoothed(model, call).stderr)


def test_bfloat16_refused_where_the_map_moves(bf16: None, bn_cnn: nn.Module,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A CNN whose bfloat16 map correlates < 0.999: refused, float32 fast path exactly (with
    BatchNorm folded, as without bfloat16), and far below the bar it is not checked again."""
    x = images(2)
    quick = sg.smooth(bn_cnn, x, samples=16, batch_size=8, fast=True)
    decided = quick.precision
    assert decided is not None and decided.dtype == "float32"
    assert decided.correlation is not None and decided.correlation < precision.CORRELATION
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset())
    without = sg.smooth(bn_cnn, x, samples=16, batch_size=8, fast=True)
    assert torch.equal(quick.attribution, without.attribution)
    assert without.precision is not None and without.precision.decision.startswith(
        "not supported")


def test_bfloat16_refused_on_efficientnet_lite0(bf16: None) -> None:
    """ANCHORS: EfficientNet-Lite0's bfloat16 gradients correlate ~0.9 with float32's (the
    cat at 64×64 to keep the test short: 0.92 there)."""
    model = sg.models.load("efficientnet_lite0")
    x = F.interpolate(model.preprocess(sg.images.load(sg.images.sample_path("chelsea"))),
                      size=64, mode="bilinear")
    first = sg.smooth(model, x, samples=4, batch_size=4, fast=True).precision
    assert first is not None and first.dtype == "float32" and first.samples == 2
    assert first.correlation is not None and first.correlation < precision.REMEMBER_BELOW
    again = sg.smooth(model, x, samples=4, batch_size=4, fast=True).precision
    assert again is not None and "not checked again" in again.decision


def test_without_bfloat16_the_check_says_not_supported(no_bf16: None) -> None:
    model = bert(init=0.2)
    call = text_call(model)
    quick = smoothed(model, call, fast=True)
    assert quick.precision is not None and quick.precision.dtype == "float32"
    assert quick.precision.decision.startswith("not supported: bfloat16 needs native support")
    assert quick.precision.correlation is None and quick.precision.samples == 0
    assert torch.equal(quick.attribution, smoothed(model, call).attribution)
    assert smoothed(model, call).precision is None  # fast=False: no record


def test_reduced_dtype_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(precision._cpu_flags(), frozenset)  # this machine's, or none
    cpu = torch.device("cpu")
    for flags, expected in (({"amx_bf16"}, torch.bfloat16), ({"avx512_bf16"}, torch.bfloat16),
                            ({"avx512f", "avx2"}, None), (set(), None)):
        monkeypatch.setattr(precision, "_cpu_flags", lambda flags=flags: frozenset(flags))
        dtype, why = precision.reduced_dtype(cpu)
        assert dtype is expected and (why == "") == (expected is not None)
    assert precision.reduced_dtype(torch.device("meta"))[0] is None
    assert precision.check_samples(50) == 2 and precision.check_samples(3) == 0
    assert precision.check_samples(500) == 8 and precision.check_samples(50, antithetic=True) == 4


def test_the_check_estimates_the_final_maps_precision_error() -> None:
    """judge against the error it should predict: per-sample maps μ + s·z and a reduced
    precision adding a bias b and its own noise e·w; the error of an n-sample map is
    √(‖b‖² + F e²/n) and its standard error √(F s²/n)."""
    generator = torch.Generator().manual_seed(0)
    k, features, n = 400, 200, 50
    mean = torch.randn(1, features, generator=generator)
    full = mean + 0.5 * torch.randn(k, 1, features, generator=generator)
    bias = 0.01 * torch.randn(1, features, generator=generator)
    reduced = full + bias + 0.02 * torch.randn(k, 1, features, generator=generator)
    expected = math.sqrt((float(bias.square().sum()) + features * 0.02**2 / n)
                         / (features * 0.5**2 / n))
    decided = precision.judge(full, reduced, torch.bfloat16, samples=n)
    assert decided.error_ratio == pytest.approx(expected, rel=0.05)
    assert decided.dtype == "float32" and "precision error" in decided.decision  # ≈ 0.14
    assert precision.judge(full, full + bias / 4, torch.bfloat16, samples=n).reduced
    paired = precision.judge(full, reduced, torch.bfloat16, samples=n, paired=True)
    assert paired.error_ratio == pytest.approx(expected, rel=0.1)  # independent pairs: same
    stops = features * 0.5**2 / (0.05**2 * float(mean.square().sum()))  # samples="auto"
    auto = precision.judge(full, reduced, torch.bfloat16, samples=500, tol=0.05)
    assert auto.error_ratio == pytest.approx(math.sqrt(
        (float(bias.square().sum()) + features * 0.02**2 / stops) / (features * 0.5**2 / stops)),
        rel=0.1)
    broken = reduced.clone()
    broken[0, 0, 0] = math.inf
    assert "non-finite" in precision.judge(full, broken, torch.bfloat16, samples=n).decision


def test_copies_share_tensors_and_leave_the_model_alone(bf16: None) -> None:
    """The reduced copy holds only its cast weights (the rest is the model's own tensors),
    switches SDPA to eager attention (on a CPU) in its own config, and the model is left as
    it was."""
    model = bert(init=0.2, attention="sdpa")
    before = state(model)
    call = text_call(model)
    smoothed(model, call, fast=True)
    assert_same_state(before, state(model))
    assert model.config._attn_implementation == "sdpa"
    subject = prepare(model, call["x"], layer=call["layer"],  # type: ignore[arg-type]
                                forward_kwargs=call["forward_kwargs"])  # type: ignore[arg-type]
    with guard.explaining(model):
        copies = fast.fast_subjects(model, subject, reduced=torch.bfloat16)
    assert copies.full is subject  # nothing to fold: the model itself
    assert copies.reduced is not None
    copy = copies.reduced.model.inner
    assert copy.config._attn_implementation == "eager"
    assert copies.reduced.layer is copy.get_input_embeddings()
    assert copy.get_input_embeddings().weight is model.get_input_embeddings().weight
    assert fast.reduced_copy(model, torch.bfloat16) is copies.reduced.model  # kept, reusable
    dense = copy.bert.encoder.layer[0].intermediate.dense
    assert dense.weight.dtype == torch.bfloat16
    assert model.bert.encoder.layer[0].intermediate.dense.weight.dtype == torch.float32


def test_fast_at_a_layer_leaves_that_layers_batchnorm_unfolded(no_bf16: None,
                                                                bn_cnn: nn.Module) -> None:
    """Noise at conv1's output: folding bn1 into conv1 would change what is noised."""
    x = images(2)
    options = {"layer": bn_cnn.conv1, "samples": 8, "batch_size": 8}
    quick = sg.smooth(bn_cnn, x, fast=True, **options)  # type: ignore[arg-type]
    plain = sg.smooth(bn_cnn, x, **options)  # type: ignore[arg-type]
    torch.testing.assert_close(quick.attribution, plain.attribution, rtol=1e-4, atol=1e-6)
    subject = prepare(bn_cnn, x, layer=bn_cnn.conv1)
    with guard.explaining(bn_cnn):
        assert fast.fast_subjects(bn_cnn, subject).report.folded == 2  # bn2, bn4; not bn1


def test_linear_then_batchnorm_over_another_dimension_is_not_folded() -> None:
    """BatchNorm1d over (N, C, L) normalises dimension 1; after a Linear on the last
    dimension that is not the Linear's outputs, so folding would change the function."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(16, 2))
    seeded(model)
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    copy = fast.optimize(model, torch.randn(3, 4, 4))
    assert copy.report.folded == 0 and copy.report.logit_error == 0.0


def test_folded_layers_are_torchs_fused_layers(bn_cnn: nn.Module) -> None:
    """Issue 19: the folded weights are `torch.nn.utils.fusion`'s (conv and linear), and the
    caller's layers keep their own tensors."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    before = state(bn_cnn)
    copy = fast.optimize(bn_cnn, images(2), channels_last=False).inner
    fused = {"conv1": fuse_conv_bn_eval(bn_cnn.conv1, bn_cnn.bn1),
             "conv2": fuse_conv_bn_eval(bn_cnn.conv2, bn_cnn.bn2),
             "fc1": fuse_linear_bn_eval(bn_cnn.fc1, bn_cnn.bn4)}
    for name, reference in fused.items():
        layer = copy.get_submodule(name)
        torch.testing.assert_close(layer.weight, reference.weight, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(layer.bias, reference.bias, rtol=1e-6, atol=1e-7)
        assert layer.weight is not bn_cnn.get_submodule(name).weight
    assert_same_state(before, state(bn_cnn))


def test_explain_text_fast_prints_the_precision(tmp_path: Path, no_bf16: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from smoothgrad.cli import main
    from text_models import tiny_bert

    (tmp_path / "model").mkdir()
    directory = tiny_bert(tmp_path / "model")
    code = main(["explain-text", "w12 w1", "--model", f"hf:{directory}", "--samples", "4",
                 "--fast", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "precision: float32 (not supported: bfloat16 needs native support" in printed
