"""The fast path (an optimised copy, checked); the batch-size search is in test_tuning.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import smoothgrad as sg
from conftest import images, seeded
from smoothgrad import fast, guard


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
