"""batch_size='auto': the search, its memory cap and what it does to the maps (issue 24)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import smoothgrad as sg
from conftest import ReusedReluCNN, images, seeded
from smoothgrad import tuning
from smoothgrad.tuning import FIXED_SHARE, BatchTuner


def drive(tuner: BatchTuner, cost: dict[int, float] | None = None, passes: int = 30,
          fixed: float = 0.0, work: float = 1.0) -> list[int]:
    """Feed the tuner full passes whose cost per row is `cost[rows]` (or `fixed / rows +
    work`); return the sizes tried, in order, each once (each is measured REPEATS times)."""
    tried = []
    for _ in range(passes):
        if tuner.finished:
            break
        rows = tuner.rows
        tried.append(rows)
        per_row = cost[rows] if cost is not None else fixed / rows + work
        tuner.record(rows, per_row * rows)
    return list(dict.fromkeys(tried))


def test_tuner_grows_fast_where_rows_are_cheap() -> None:
    """A pass costs a + b·rows: from two sizes the tuner jumps to where a is 3 % of a pass."""
    tuner = BatchTuner(8, 2, 4096)
    tried = drive(tuner, fixed=10.0, work=0.01)  # a = 10, b = 0.01: 3 % at ~33,000 rows
    assert tried == [8, 32, 256, 2048, 4096]  # 4×, then eightfold (the most per step)
    assert tuner.rows == 4096  # the range's end


def test_tuner_settles_where_the_fixed_cost_is_small() -> None:
    tuner = BatchTuner(8, 2, 4096)
    drive(tuner, fixed=1.0, work=1.0)  # the fixed cost is 3 % of a pass at 1/0.03 ≈ 33 rows
    target = 1.0 / (FIXED_SHARE * 1.0)
    assert tuner.finished and target / 2 <= tuner.rows <= 2 * target


def test_tuner_stops_where_rows_get_dearer() -> None:
    """EfficientNet-Lite0 at 224×224 on 2 cores (ms per row, BENCHMARKS.md): 8 → 59,
    12 → 54, 16 → 64, and dearer beyond (page faults). The tuner goes back between."""
    tuner = BatchTuner(8, 2, 4096)
    tried = drive(tuner, {8: 59, 12: 54, 16: 64, 32: 75})
    assert tried == [8, 32, 16, 12] and tuner.finished and tuner.rows == 12


def test_tuner_stays_at_the_start_when_growing_does_not_pay() -> None:
    tuner = BatchTuner(8, 2, 4096)
    tried = drive(tuner, {6: 0.9, 8: 1.0, 12: 1.1, 16: 1.2, 32: 1.4})
    assert tried == [8, 32] and tuner.rows == 8  # 1.4× dearer: nothing to find between
    tuner = BatchTuner(8, 2, 4096)
    tried = drive(tuner, {6: 0.9, 8: 1.0, 12: 1.1, 16: 1.15, 32: 1.25})
    assert tried == [8, 32, 16, 12] and tuner.rows == 8


def test_tuner_prefers_the_smaller_size_within_three_percent() -> None:
    tuner = BatchTuner(8, 2, 64)
    drive(tuner, {8: 1.0, 12: 0.98, 16: 1.1, 32: 1.2})
    assert tuner.rows == 8


def test_tuner_takes_a_whole_call_as_its_size() -> None:
    """Calls of 100 rows that the tuner would put in larger passes: that size is measured,
    and the search ends there."""
    tuner = BatchTuner(8, 2, 4096)
    drive(tuner, {8: 2.0, 32: 1.0}, passes=7)
    assert tuner.rows == 256 and not tuner.finished
    for per_row in (0.5, 0.6):
        tuner.record(100, per_row * 100, whole_call=True)
        assert tuner.rows == 256 and not tuner.finished  # measured again in the next call
    tuner.record(100, 0.7 * 100, whole_call=True)
    assert tuner.finished and tuner.rows == 100 and tuner.cost[100] == 0.5


def test_tuner_starts_where_a_pass_keeps_32_mib() -> None:
    """Rows that keep little for the backward pass (a 64×64 ResNet: 0.19 MB) start large,
    rows that keep a lot (EfficientNet-Lite0 at 224: 78 MB) at the start size, capped by the
    budget."""
    small, large = BatchTuner(8, 2, 4096), BatchTuner(8, 2, 4096)
    small.limit_memory(0.19e6, budget=3 * 2**30, start_bytes=32 * 2**20)
    large.limit_memory(78e6, budget=3 * 2**30, start_bytes=32 * 2**20)
    assert small.rows == 176 and small.most == 4096
    assert large.rows == 8 and large.most == 20


def test_tuner_memory_cap_and_out_of_memory() -> None:
    tuner = BatchTuner(64, 16, 8192)
    tuner.limit_memory(bytes_per_row=2**20, budget=2**28)  # 1 MiB a row, twice while backward
    assert tuner.most == 128
    drive(tuner, fixed=100.0, work=0.01)
    assert tuner.rows == 128
    tuner = BatchTuner(64, 16, 1024)
    for seconds in (1.0, 0.64, 0.7, 0.66):  # warm-up, then 64 rows three times
        tuner.record(64, seconds)
    assert tuner.rows == 256
    tuner.out_of_memory(256)
    assert tuner.finished and tuner.rows == 64 and tuner.most == 128


@pytest.fixture
def cnn() -> nn.Module:
    return seeded(ReusedReluCNN())


def test_auto_batch_size_searches_once_and_gives_the_same_maps(cnn: nn.Module) -> None:
    x = images(1)
    tuning.forget()
    results = [sg.smooth(cnn, x, samples=40, seed=2).attribution for _ in range(10)]
    tuner = tuning.tuner_for(cnn, "gradient", x, False)
    assert tuner.finished and tuner.cost  # small rows: the whole call, from the first measure
    assert tuning.tuner_for(cnn, "gradient", images(1, size=16), False) is not tuner
    fixed = sg.smooth(cnn, x, samples=40, seed=2, batch_size=3).attribution
    for result in results:
        torch.testing.assert_close(result, fixed, rtol=1e-5, atol=1e-7)


def test_auto_batch_size_tunes_calls_of_many_examples(cnn: nn.Module) -> None:
    """Calls of 8 examples tune too (passes hold whole copies of all 8)."""
    x = images(8)
    tuning.forget()
    for _ in range(3):
        sg.smooth(cnn, x, samples=20)
    tuner = tuning.tuner_for(cnn, "gradient", x, False)
    assert tuner.cost and all(rows % 8 == 0 for rows in tuner.cost)


def test_passes_stay_under_the_memory_budget(cnn: nn.Module,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes the autograd graph keeps per row are counted on the first measured pass;
    no later pass holds more rows than the budget allows."""
    x, sizes = images(1), []

    def counted(model: nn.Module, batch: Tensor, target: Tensor) -> Tensor:
        sizes.append(batch.shape[0])
        return sg.methods.gradient(model, batch, target)

    leaf = x.repeat(10, 1, 1, 1).requires_grad_(True)
    kept: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            sg.guard.explaining(cnn):
        cnn(leaf.clone())
    per_row = sum(kept.values()) / 10
    monkeypatch.setattr(tuning, "memory_budget", lambda device: int(24 * 2 * per_row))
    tuning.forget(cnn)
    for _ in range(4):
        sizes.clear()
        sg.smooth(cnn, x, samples=100, method=counted)
    tuner = tuning.tuner_for(cnn, counted, x, False)
    assert tuner.bytes_per_row is not None
    assert 0.5 < tuner.bytes_per_row / per_row < 2
    assert max(sizes) <= 24 * 2


# ------------------------------------------- what "the same for any batch size" means (24)


def test_noise_and_target_are_the_same_for_any_batch_and_pass_size(cnn: nn.Module) -> None:
    """Issue 24: the guarantee is the noisy inputs and the target of each example, bit for
    bit, alone or in a batch, at any pass size; the maps then differ only as PyTorch's own
    float32 results differ with the batch a convolution runs in."""
    x = images(4)
    seen: list[tuple[Tensor, Tensor]] = []

    def recording(model: nn.Module, batch: Tensor, target: Tensor) -> Tensor:
        seen.append((batch.clone(), target.clone()))
        return sg.methods.gradient(model, batch, target)

    def rows_of(example: int, examples: int) -> tuple[Tensor, Tensor]:
        """Example `example`'s noisy copies and targets, in sample order (passes are copy
        -major: row r of a pass is example r mod the examples it holds)."""
        batches = torch.cat([b for b, _ in seen]).view(-1, examples, *x.shape[1:])
        targets = torch.cat([t for _, t in seen]).view(-1, examples)
        return batches[:, example], targets[:, example]

    sg.smooth(cnn, x, samples=9, method=recording, batch_size=12)
    together = [rows_of(i, 4) for i in range(4)]
    for i in range(4):
        for batch_size in (1, 5):
            seen.clear()
            sg.smooth(cnn, x[i:i + 1], samples=9, method=recording, batch_size=batch_size)
            alone = rows_of(0, 1)
            assert torch.equal(alone[0], together[i][0]) and torch.equal(alone[1], together[i][1])


def test_maps_are_the_same_for_any_batch_where_pytorch_is_exact(cnn: nn.Module) -> None:
    """In float64 PyTorch's batch-size differences are at 1e-16: the maps agree alone and in
    a batch, for every pass size, to that precision."""
    model, x = cnn.double(), images(4).double()
    whole = sg.smooth(model, x, samples=9, batch_size=36).attribution
    for batch_size in (1, 4, 7, "auto"):
        parts = torch.cat([sg.smooth(model, x[i:i + 1], samples=9, batch_size=batch_size)
                           .attribution for i in range(4)])
        torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-14)



def _rowwise(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """A map computed row by row, exactly the same whatever the batch it comes in."""
    return 2 * x


@pytest.mark.parametrize("aggregate", ["mean", "abs"])
def test_same_seed_same_map_whatever_the_pass_sizes(cnn: nn.Module, aggregate: str) -> None:
    """The auto search sizes a repeated call's passes otherwise; where the method's rows do
    not depend on their batch, the map must still be bit for bit the same (the mean is a
    running float64 sum, not merged float32 chunk means)."""
    x = images(2)
    maps = [sg.smooth(cnn, x, samples=25, seed=3, batch_size=size, aggregate=aggregate,
                      method=_rowwise).attribution for size in (50, 4, 10, 2, 14)]
    for other in maps[1:]:
        assert torch.equal(other, maps[0])


def test_tuner_looks_between_only_where_the_larger_size_is_close() -> None:
    """EfficientNet-Lite0 at 224×224 on one core (CPU seconds per row, measured 2026-12-04):
    8 → 0.087, 19 (the memory cap) → 0.132. The search tried 16 and 12 after that, each for
    three passes of a user's calls; a rise of 1.5× leaves nothing to find in between."""
    tuner = BatchTuner(8, 2, 19)
    tried = drive(tuner, {8: 0.087, 12: 0.095, 16: 0.105, 19: 0.132})
    assert tried == [8, 19] and tuner.finished and tuner.rows == 8


def test_balanced_passes_stay_where_the_cost_per_row_was_flat() -> None:
    """A call's passes are spread evenly up to BALANCE × the tuned size, but not into sizes
    the search measured dearer (EfficientNet-Lite0: 8 rows tuned, 19 measured 1.5× the cost
    per row; 50 copies went in passes of 10); where the cost was still falling, up to the cap."""
    steep = BatchTuner(8, 2, 19)
    drive(steep, {8: 0.087, 19: 0.132})
    assert steep.rows == 8 and steep.balance_limit() == 8
    falling = BatchTuner(8, 2, 4096)
    drive(falling, fixed=10.0, work=0.01)
    assert falling.balance_limit() == falling.most


def test_the_memory_a_row_keeps_leaves_out_the_weights() -> None:
    """The first pass counts what the autograd graph saves per row; the weights (and their
    casts) are saved too but do not grow with the pass. Counted, they made a bfloat16 copy of
    BERT-base look 2.4× as large per row as it is, capping its passes at 7 rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 4)).eval()
    x = torch.randn(1, 512)
    tuning.forget()
    sg.smooth(model, x, samples=8)
    tuner = tuning.tuner_for(model, "gradient", x, False)
    activations = 4 * (512 + 512 + 512)  # bytes a row: the input, the hidden layer, its ReLU
    weights = 4 * 512 * 512  # the first layer's 1 MiB, saved for the input's gradient
    assert tuner.bytes_per_row is not None
    assert tuner.bytes_per_row <= 2 * activations < weights / 64
