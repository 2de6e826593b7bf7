"""`smoothgrad.evaluation` and the `sweep`/`evaluate` commands, against direct metric calls."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import smoothgrad as sg
from conftest import call
from smoothgrad import evaluation, images, metrics, models, viz
from smoothgrad.cli import main
from smoothgrad.methods import gradient, guided_backprop

SCRIPT = Path(sys.executable).with_name("smoothgrad")
CAT = str(images.sample_path("chelsea"))
COFFEE = str(images.sample_path("coffee"))


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A small ReLU CNN on 3x16x16 images (SSIM needs 11+ pixels a side)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4))
    return model.eval()


def batch(n: int = 2) -> Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- library


def test_evaluate_rows_are_the_metrics_of_the_engine_maps() -> None:
    model, x = tiny_cnn(), batch()
    rows = evaluation.evaluate(model, x, methods=["gradient", "guided_backprop"],
                               aggregates=["mean", "var"], samples=6, noise=0.2, seed=3,
                               steps=8, names=["a", "b"])
    assert [(r["image"], r["method"], r["smoothing"]) for r in rows[:6]] == [
        ("a", "gradient", "none"), ("b", "gradient", "none"), ("a", "gradient", "mean"),
        ("b", "gradient", "mean"), ("a", "gradient", "var"), ("b", "gradient", "var")]
    target = model(x).argmax(dim=1)
    for row in rows:
        i = "ab".index(row["image"])
        base = {"gradient": gradient, "guided_backprop": guided_backprop}[row["method"]]
        if row["smoothing"] == "none":
            m = base(model, x, target)
            assert row["samples"] == 1 and row["relative_error"] is None
        else:
            result = sg.smooth(model, x, method=base, samples=6, noise=0.2, seed=3,
                               aggregate=row["smoothing"])
            m = result.attribution
            assert row["relative_error"] == pytest.approx(float(result.relative_error()[i]))
            assert result.flip_rate is not None
            assert row["flip_rate"] == pytest.approx(float(result.flip_rate[i]))
        expected = {
            "total_variation": metrics.total_variation(m),
            "gini": metrics.gini(m.abs().sum(dim=1)),
            "deletion_auc": metrics.deletion_auc(model, x, m, target, steps=8, reduce="abs"),
            "insertion_auc": metrics.insertion_auc(model, x, m, target, steps=8, reduce="abs"),
            "infidelity": metrics.infidelity(model, x, m, target),
        }
        for key, value in expected.items():
            assert row[key] == pytest.approx(float(value[i]), rel=1e-5, abs=1e-7), key


def test_evaluate_sensitivity_and_randomization_columns() -> None:
    model, x = tiny_cnn(seed=3), batch(1)  # not 0: re-initialising from seed 0 gives it back
    rows = evaluation.evaluate(model, x, methods=["gradient"], aggregates=["mean"], samples=4,
                               metrics=["sensitivity", "randomization"], steps=4)
    plain, smoothed = rows
    assert plain["sensitivity_max"] == pytest.approx(
        float(metrics.sensitivity_max(gradient, model, x)[0]), rel=1e-5)
    assert "sensitivity_floor" not in plain and smoothed["sensitivity_floor"] > 0
    for row in rows:
        assert -1 <= row["randomization_spearman"] < 0.9  # a re-initialised model's map differs
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluation.evaluate(model, x, metrics=["speed"])


def test_grouped_randomization_equals_the_layerwise_check_for_single_layers() -> None:
    model, x = tiny_cnn(), batch()
    grouped = evaluation.randomization(gradient, model, x,
                                       groups={"fc": ["6"], "conv2": ["2"], "conv1": ["0"]})
    layerwise = metrics.randomization_check(gradient, model, x, layers=["6", "2", "0"])
    assert [row.layer for row in grouped] == ["original", "fc", "conv2", "conv1", "random map"]
    for a, b in zip(grouped, layerwise, strict=True):
        torch.testing.assert_close(a.spearman_abs, b.spearman_abs)
        torch.testing.assert_close(a.ssim, b.ssim)


def test_a_group_resets_all_its_layers_at_once_and_the_model_is_kept() -> None:
    model, x = tiny_cnn(), batch()
    before = copy.deepcopy(model.state_dict())
    seen: list[list[Tensor]] = []

    def recording(m: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        seen.append([p.detach().clone() for p in m.parameters()])
        return gradient(m, x, target)

    # seed 0 would redraw tiny_cnn's own initialisation (also from seed 0)
    rows = evaluation.randomization(recording, model, x, groups={"all": [""]}, seed=5)
    assert [row.layer for row in rows] == ["original", "all", "random map"]
    original, randomised = seen[0], seen[-1]
    assert len(randomised) == len(list(model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(original, randomised, strict=True))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert not model.training
    with pytest.raises(ValueError, match="matches no module"):
        evaluation.randomization(gradient, model, x, groups={"none": ["1"]})  # a ReLU


def test_sweep_maps_and_comparisons_come_from_the_engine() -> None:
    model, x = tiny_cnn(), batch(1)
    result = evaluation.sweep(model, x, noises=[0.0, 0.3], samples=[2, 5], at_noise=0.2,
                              at_samples=3, reference_samples=12, seed=4, steps=4)
    assert [(r["row"], r["noise"], r["samples"]) for r in result.rows] == [
        ("noise", 0.0, 1), ("noise", 0.3, 3), ("samples", 0.2, 2), ("samples", 0.2, 5)]
    target = model(x).argmax(dim=1)
    torch.testing.assert_close(result.noise_maps[0][1], gradient(model, x, target)[0])
    reference = sg.smooth(model, x, samples=12, noise=0.2, seed=5).attribution
    torch.testing.assert_close(result.reference.attribution, reference)
    for (n, m), row in zip(result.sample_maps, result.rows[2:], strict=True):
        expected = sg.smooth(model, x, samples=n, noise=0.2, seed=4).attribution
        torch.testing.assert_close(m, expected[0])
        assert row["relative_l2"] == pytest.approx(float(metrics.relative_l2(expected,
                                                                             reference)[0]))
        shown = expected.abs().sum(dim=1), reference.abs().sum(dim=1)
        assert row["processed_l2"] == pytest.approx(float(metrics.relative_l2(*shown)[0]))
        assert row["spearman"] == pytest.approx(float(metrics.spearman(*shown)[0]))
    assert all(r["relative_l2"] is None for r in result.rows[:2])
    with pytest.raises(ValueError, match="one example"):
        evaluation.sweep(model, batch(2))
    with pytest.raises(ValueError, match="must exceed"):
        evaluation.sweep(model, x, samples=[2, 50], reference_samples=50)


def test_tables_render_missing_values() -> None:
    rows = [{"method": "gradient", "smoothing": "none", "relative_error": None, "gini": 0.25},
            {"method": "gradient", "smoothing": "mean", "relative_error": 0.5,
             "gini": float("nan")}]
    table = evaluation.format_table(rows).splitlines()
    assert table[0].split() == ["method", "smoothing", "rel.err", "Gini↑"]
    assert table[1].split() == ["gradient", "none", "–", "0.250"]
    assert table[2].split() == ["gradient", "mean", "0.500", "–"]
    parsed = list(csv.DictReader(evaluation.to_csv(rows).splitlines()))
    assert parsed[0]["relative_error"] == "" and float(parsed[1]["relative_error"]) == 0.5
    assert json.loads(evaluation.to_json({"n": 2}, rows))["rows"][1]["gini"] is None


def test_table_prints_one_number_layout_per_column() -> None:
    # issue 23: infidelity printed as `0.4` beside `0.381` (`.3g` per cell)
    rows = [{"method": "gradient", "smoothing": s, "infidelity": v, "deletion_auc": d}
            for s, v, d in (("none", 0.4, 0.1), ("mean", 0.38123, 0.0779), ("var", 1.5, 0.18))]
    lines = evaluation.format_table(rows).splitlines()
    assert [line.split()[-1] for line in lines[1:]] == ["0.40", "0.38", "1.50"]
    assert evaluation.format_table(rows[:2]).splitlines()[1].endswith("0.400")  # beside 0.381
    assert [line.split()[-2] for line in lines[1:]] == ["0.100", "0.078", "0.180"]
    tiny = [{"infidelity": 2.5e-6}, {"infidelity": 1e-7}, {"infidelity": None}]
    cells = [line.strip() for line in evaluation.format_table(tiny).splitlines()[1:]]
    assert cells == ["2.50e-06", "1.00e-07", "–"]
    sweep_rows = [{"row": "noise", "relative_l2": 0.5}, {"row": "noise", "relative_l2": 1.25}]
    assert evaluation.format_table(sweep_rows, evaluation.SWEEP_COLUMNS).splitlines()[1].endswith(
        "0.500")
    # the CSV keeps every value at full precision, one field per value
    parsed = list(csv.DictReader(evaluation.to_csv(rows).splitlines()))
    assert [float(row["infidelity"]) for row in parsed] == [0.4, 0.38123, 1.5]


def test_convergence_figure() -> None:
    fig = viz.convergence_figure([2, 8, 32], {"a": [1.0, 0.5, 0.25], "b": [None, 0.4, 0.2]},
                                 tol=0.3)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines) == ["a", "b", "∝ 1/√n", "tol 0.3"]
    assert list(lines["b"].get_xdata()) == [8, 32]
    assert list(lines["∝ 1/√n"].get_ydata()) == pytest.approx([1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="one value per sample count"):
        viz.convergence_figure([2, 8], {"a": [1.0]})


def _visible_tick_labels(fig: object, axis: str) -> list[str]:
    """The non-empty tick labels (major and minor) drawn inside the axis' view limits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # type: ignore[arg-type]
    ax = fig.axes[0]  # type: ignore[attr-defined]
    low, high = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = [*getattr(ax, f"{axis}axis").get_major_ticks(),
             *getattr(ax, f"{axis}axis").get_minor_ticks()]
    return sorted({t.label1.get_text() for t in ticks if t.label1.get_visible()
                   and t.label1.get_text() and low <= t.get_loc() <= high})


def test_convergence_figure_labels_a_range_under_a_decade() -> None:
    # issue 23: values from 1.3 to 4.6 on a log y axis showed a single tick label ("2")
    for samples, errors in (([20, 50], {"map vs reference": [4.6, 2.9], "stderr": [1.9, 1.3]}),
                            ([20, 50, 100], {"a": [1.9, 1.6, 1.5], "b": [1.45, 1.4, 1.3]})):
        figure = viz.convergence_figure(samples, errors)
        labels = _visible_tick_labels(figure, "y")
        assert len(labels) >= 3, labels
        low, high = sorted(figure.axes[0].get_ylim())
        values = sorted(float(label) for label in labels)
        assert values[-1] - values[0] >= (high - low) / 2, labels  # they span the axis
    wide = viz.convergence_figure([2, 5, 20, 50, 100], {"a": [5.0, 2.0, 0.8, 0.4, 0.2]})
    assert wide.axes[0].get_yscale() == "log"  # a decade or more: log axis as before
    assert len(_visible_tick_labels(wide, "y")) >= 3


# ------------------------------------------------------------ preprocessing parity


def _photo(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _resize_256_crop_224(image: Image.Image) -> np.ndarray:
    """torchvision's Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet) by its
    documented rules, in PIL and numpy: the shorter side becomes 256 and the longer
    int(256 * long / short) (bilinear, antialiased as PIL always is); the crop starts at
    int(round((size - 224) / 2)) on each axis. Returns (224, 224, 3) float64."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    size = (256, int(256 * long / short)) if width <= height else (int(256 * long / short), 256)
    resized = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    top, left = (round((extent - 224) / 2) for extent in resized.shape[:2])
    crop = resized[top : top + 224, left : left + 224] / 255.0
    return (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


@pytest.mark.parametrize("size", [(640, 427), (427, 640)])
def test_imagenet_preprocess_equals_a_pil_reference_on_a_non_square_photo(
        size: tuple[int, int]) -> None:
    image = _photo(*size)
    ours = models.imagenet_preprocess(image)
    assert ours.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), _resize_256_crop_224(image),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(640, 427), (427, 640)])
def test_imagenet_preprocess_equals_torchvision_on_a_non_square_photo(
        size: tuple[int, int]) -> None:
    transforms = pytest.importorskip(
        "torchvision.transforms",
        reason="torchvision is not installed (it needs torch 2.14.1; this project pins 2.13)")
    pipeline = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(models.IMAGENET_MEAN, models.IMAGENET_STD)])
    image = _photo(*size)
    torch.testing.assert_close(models.imagenet_preprocess(image), pipeline(image)[None])


# ------------------------------------------------------------------------------ CLI


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def default_model() -> nn.Module:
    return models.load("efficientnet_lite0")


def test_sweep_command(tmp_path: Path, default_model: nn.Module) -> None:
    out, report = tmp_path / "out", tmp_path / "sweep.json"
    done = run("sweep", CAT, "--noise", "0,0.1", "--samples", "1,2", "--at-samples", "1",
               "--reference-samples", "3", "--steps", "2", "--out", str(out), "--json",
               str(report))
    assert done.returncode == 0, done.stderr
    for kind in ("noise", "samples"):
        with Image.open(out / f"chelsea_gradient_{kind}.png") as png:
            assert png.size == (750, 250)  # input + two maps, 2.5 in at 100 dpi
    assert (out / "chelsea_gradient_convergence.png").stat().st_size > 0
    payload = json.loads(report.read_text())
    rows = payload["rows"]
    assert [(r["row"], r["noise"], r["samples"]) for r in rows] == [
        ("noise", 0.0, 1), ("noise", 0.1, 1), ("samples", 0.15, 1), ("samples", 0.15, 2)]
    with open(out / "chelsea_gradient_sweep.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 4
    x = default_model.preprocess(images.load(CAT))
    reference = sg.smooth(default_model, x, samples=3, seed=1).attribution
    mine = sg.smooth(default_model, x, samples=2, seed=0).attribution
    assert rows[3]["relative_l2"] == pytest.approx(
        float(metrics.relative_l2(mine, reference)[0]), rel=1e-4)
    assert f"wrote {out / 'chelsea_gradient_noise.png'}" in done.stdout


def test_evaluate_command(tmp_path: Path, default_model: nn.Module) -> None:
    report, table = tmp_path / "scores.json", tmp_path / "scores.csv"
    done = run("evaluate", CAT, COFFEE, "--methods", "gradient", "--aggregates", "mean",
               "--metrics", "total_variation,deletion", "--samples", "2", "--steps", "2",
               "--json", str(report), "--csv", str(table))
    assert done.returncode == 0, done.stderr
    assert "chelsea: explaining 'tiger cat'" in done.stdout
    assert "coffee: explaining 'espresso'" in done.stdout
    rows = json.loads(report.read_text())["rows"]
    assert [(r["image"], r["smoothing"], r["samples"]) for r in rows] == [
        ("chelsea", "none", 1), ("chelsea", "mean", 2), ("coffee", "none", 1),
        ("coffee", "mean", 2)]
    with open(table, newline="") as file:
        assert [r["image"] for r in csv.DictReader(file)] == ["chelsea"] * 2 + ["coffee"] * 2
    x = default_model.preprocess(images.load(COFFEE))
    plain = gradient(default_model, x, default_model(x).argmax(dim=1))
    assert rows[2]["total_variation"] == pytest.approx(
        float(metrics.total_variation(plain)[0]), rel=1e-4)
    quiet = run("evaluate", CAT, "--methods", "gradient", "--aggregates", "mean",
                "--metrics", "gini", "--samples", "2", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


TINY_MODEL = """
import numpy as np
import torch
from torch import nn


def preprocess(image):
    pixels = np.asarray(image.convert("RGB").resize((48, 48)), dtype=np.float32)
    return (torch.from_numpy(pixels).permute(2, 0, 1)[None] - 127.0) / 128.0


def build():
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval(), preprocess
"""


def _scores(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str
            ) -> tuple[dict[str, object], list[dict[str, object]], str]:
    """Run a command on a tiny model (48x48 inputs: RISE's 224-pixel steps are 11 steps);
    its JSON settings, rows and printed table."""
    (tmp_path / "tiny_model.py").write_text(TINY_MODEL)
    report = tmp_path / "report.json"
    command, *rest = args
    extra = ["--out", str(tmp_path / "out")] if command == "sweep" else []
    code = main([command, CAT, "--model", f"{tmp_path / 'tiny_model.py'}:build",
                 "--json", str(report), *extra, *rest])
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads(report.read_text())
    return payload["settings"], payload["rows"], out


EVALUATE = ("evaluate", "--methods", "gradient", "--aggregates", "mean", "--samples", "2",
            "--metrics", "deletion,insertion,infidelity", "--steps", "4")


@pytest.mark.parametrize(("flags", "columns", "recorded"), [
    (["--substrate", "zeros"], ["deletion_auc", "insertion_auc"],
     {"substrate": {"deletion": "zeros", "insertion": "zeros"}}),
    (["--substrate", "blur"], ["deletion_auc"],
     {"substrate": {"deletion": "blur", "insertion": "blur"}}),
    (["--rise"], ["deletion_auc", "insertion_auc"],
     {"rise": True, "steps": None, "substrate": {"deletion": "zeros", "insertion": "blur"}}),
    (["--infidelity-std", "0.5"], ["infidelity"], {"infidelity_std": 0.5}),
    (["--no-infidelity-normalize"], ["infidelity"], {"infidelity_normalize": False}),
])
def test_evaluate_curve_and_infidelity_flags_change_the_scores(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str],
        columns: list[str], recorded: dict[str, object]) -> None:
    base_args = EVALUATE[:-2] if "--rise" in flags else EVALUATE  # --rise fixes the steps
    base_settings, base, _ = _scores(capsys, tmp_path, *EVALUATE)
    settings, rows, _ = _scores(capsys, tmp_path, *base_args, *flags)
    for key, value in recorded.items():
        assert settings[key] == value and base_settings[key] != value, key
    for column in columns:
        assert [r[column] for r in rows] != [r[column] for r in base], column


def test_evaluate_sensitivity_radius_changes_the_scores(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    args = ("evaluate", "--methods", "gradient", "--aggregates", "mean", "--samples", "2",
            "--metrics", "sensitivity", "--sensitivity-perturbations", "2", "--floor-seeds", "1")
    base_settings, base, _ = _scores(capsys, tmp_path, *args)
    settings, rows, _ = _scores(capsys, tmp_path, *args, "--sensitivity-radius", "0.5")
    assert (base_settings["sensitivity_radius"], settings["sensitivity_radius"]) == (0.02, 0.5)
    assert rows[0]["sensitivity_max"] > base[0]["sensitivity_max"]


@pytest.mark.parametrize("flags", [["--substrate", "zeros"], ["--rise"]])
def test_sweep_curve_flags_change_the_scores(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             flags: list[str]) -> None:
    args = ("sweep", "--noise", "0,0.1", "--samples", "2", "--at-samples", "2",
            "--reference-samples", "3")
    base_settings, base, _ = _scores(capsys, tmp_path, *args)
    settings, rows, _ = _scores(capsys, tmp_path, *args, *flags)
    assert settings["substrate"] != base_settings["substrate"]
    assert [r["deletion_auc"] for r in rows] != [r["deletion_auc"] for r in base]
    with open(tmp_path / "out" / "chelsea_gradient_sweep.csv", newline="") as file:
        written = [float(r["deletion_auc"]) for r in csv.DictReader(file)]
    assert written == pytest.approx([r["deletion_auc"] for r in rows])


@pytest.mark.parametrize(("args", "message"), [
    (["sweep", CAT, "--noise", "0,x"], "finite number >= 0"),
    (["sweep", CAT, "--noise", ","], "comma-separated list"),
    (["sweep", CAT, "--samples", "2,0"], "positive integer"),
    (["sweep", CAT, "--samples", "2,600"], "--reference-samples 500 must exceed"),
    (["sweep", CAT, "--aggregate", "var", "--samples", "1,2"], "at least 2 samples"),
    (["sweep", CAT, "--save", "png,gif"], "unknown 'gif'"),
    (["sweep", CAT, CAT], "unrecognized arguments"),
    (["sweep", CAT, "--json", "nowhere/s.json"], "--json: no such folder 'nowhere'"),
    (["evaluate", CAT, "--methods", "gradient,smoothgradcam"], "unknown 'smoothgradcam'"),
    (["evaluate", CAT, "--aggregates", "median"], "unknown 'median'"),
    (["evaluate", CAT, "--metrics", "speed,gini"], "unknown 'speed'"),
    (["evaluate", CAT, "--aggregates", "var", "--samples", "1"], "needs --samples >= 2"),
    (["evaluate", CAT, "--csv", "nowhere/s.csv"], "--csv: no such folder"),
    (["evaluate", CAT, "--steps", "0"], "positive integer"),
    (["evaluate", CAT, "--rise", "--steps", "10"], "--rise is RISE's protocol"),
    (["evaluate", CAT, "--rise", "--substrate", "mean"], "leave out --steps and --substrate"),
    (["evaluate", CAT, "--substrate", "black"], "invalid choice: 'black'"),
    (["evaluate", CAT, "--infidelity-std", "0"], "--infidelity-std"),
    (["evaluate", CAT, "--sensitivity-radius", "-1"], "--sensitivity-radius"),
    (["sweep", CAT, "--rise", "--steps", "10"], "--rise is RISE's protocol"),
    (["evaluate", "missing.jpg"], "missing.jpg"),
])
def test_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                       message: str) -> None:
    out = tmp_path / "out"
    extra = ["--out", str(out)] if args[0] == "sweep" else []
    code, err = call(capsys, *args, *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


# ------------------------------------------------------------------ settings, bounds, sharing


class Recording(nn.Module):
    """Wraps a model and records the rows of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows.append(x.shape[0])
        out: Tensor = self.model(x)
        return out


def test_every_forward_pass_is_bounded_by_batch_size_and_shared_work_is_done_once() -> None:
    model, x = Recording(tiny_cnn()).eval(), batch(1)
    seen: dict[str, int] = {}
    totals: dict[str, int] = {}

    def progress(task: str, done: int, total: int) -> None:
        assert 0 < done <= total, (task, done, total)
        seen[task], totals[task] = done, total

    config = evaluation.Evaluation.of(methods=["gradient"], aggregates=["mean", "square"],
                                      metrics=list(evaluation.METRICS), samples=4, steps=6,
                                      batch_size=3, infidelity_perturbations=7,
                                      sensitivity_perturbations=2, floor_seeds=2)
    assert config.options.steps == 6
    assert config.smoothing == sg.SmoothConfig(samples=4, batch_size=3)
    rows = evaluation.evaluate(model, x, config, progress=progress)
    assert len(rows) == 3 and max(model.rows) <= 3
    assert {"infidelity", "gradient none deletion/insertion", "gradient mean deletion/insertion",
            "gradient sensitivity", "gradient noise floor", "gradient randomization"} <= set(seen)
    assert seen == totals  # every task reported to its end
    assert seen["infidelity"] == 7  # 7 perturbed inputs (the clean output is shared), all rows
    assert seen["gradient noise floor"] == 2 * 4  # two seeds of 4 samples, one run for both
    # the options reach the metrics: the same numbers as the direct calls with them
    target = tiny_cnn()(x).argmax(dim=1)
    plain = gradient(tiny_cnn(), x, target)
    assert rows[0]["infidelity"] == pytest.approx(float(metrics.infidelity(
        tiny_cnn(), x, plain, target, n_perturb_samples=7)[0]), rel=1e-5)
    assert rows[0]["sensitivity_max"] == pytest.approx(float(metrics.sensitivity_max(
        gradient, tiny_cnn(), x, n_perturb_samples=2)[0]), rel=1e-5)


def test_curve_and_infidelity_options_reach_the_metrics() -> None:
    model, x = tiny_cnn(), batch(1)
    target = model(x).argmax(dim=1)
    plain = gradient(model, x, target)
    for options, curve_options, normalize in (
            ({"substrate": "zeros", "steps": 4}, {"substrate": "zeros", "steps": 4}, True),
            ({"rise": True}, {"rise": True}, True),
            ({"infidelity_normalize": False, "steps": 4}, {"steps": 4}, False)):
        rows = evaluation.evaluate(model, x, methods=["gradient"], aggregates=[],
                                   metrics=["deletion", "insertion", "infidelity"], **options)
        row = rows[0]
        assert row["deletion_auc"] == pytest.approx(float(metrics.deletion_auc(
            model, x, plain, target, reduce="abs", **curve_options)[0]), rel=1e-5), options
        assert row["insertion_auc"] == pytest.approx(float(metrics.insertion_auc(
            model, x, plain, target, reduce="abs", **curve_options)[0]), rel=1e-5), options
        assert row["infidelity"] == pytest.approx(float(metrics.infidelity(
            model, x, plain, target, normalize=normalize)[0]), rel=1e-5), options
    assert evaluation.MetricOptions().substrates() == {"deletion": "mean", "insertion": "blur"}
    assert evaluation.MetricOptions(rise=True).substrates() == {"deletion": "zeros",
                                                                "insertion": "blur"}
    with pytest.raises(ValueError, match="substrate must be one of"):
        evaluation.MetricOptions(substrate="black")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leave steps and substrate out"):
        evaluation.MetricOptions(rise=True, steps=50)


def test_settings_objects_validate_and_keywords_override_them() -> None:
    base = evaluation.Evaluation(methods=("gradient",), aggregates=("mean",))
    config = evaluation.Evaluation.of(steps=3, samples=2)
    assert config.options == evaluation.MetricOptions(steps=3) and config.smoothing.samples == 2
    model, x = tiny_cnn(), batch(1)
    rows = evaluation.evaluate(model, x, base, metrics=["gini"], samples=2)
    assert [row["smoothing"] for row in rows] == ["none", "mean"] and rows[1]["samples"] == 2
    with pytest.raises(ValueError, match="positive integer"):
        evaluation.MetricOptions(infidelity_perturbations=0)
    with pytest.raises(TypeError, match="aggregate"):
        evaluation.Evaluation.of(aggregate="mean")
    sweep = evaluation.SweepSettings.of(samples=[2, 3], reference_samples=4, steps=2)
    assert sweep.samples == (2, 3) and sweep.options.steps == 2
    with pytest.raises(ValueError, match="must exceed"):
        evaluation.SweepSettings(samples=(2, 5), reference_samples=5)


def test_table_arrows_come_from_the_metrics() -> None:
    for key, score in metrics.SCORES.items():
        if key in evaluation.COLUMNS:
            header = evaluation.COLUMNS[key][0]
            assert header.endswith({"higher": "↑", "lower": "↓", None: ""}[score.better] or
                                   header[-1]), key
    assert metrics.SCORES["deletion_auc"].better == "lower"
    assert metrics.SCORES["insertion_auc"].better == "higher"


def test_evaluate_and_sweep_take_a_smooth_config() -> None:
    """The smoothing of evaluate and sweep is one `SmoothConfig` (issue 19): given whole, or
    built from keywords, with a misspelt option named and the calls' own options refused."""
    model, x = tiny_cnn(), batch(1)
    smoothing = sg.SmoothConfig(samples=3, seed=5, batch_size=2)
    config = evaluation.Evaluation(methods=("gradient",), aggregates=("mean",),
                                   metrics=("gini",), smoothing=smoothing)
    rows = evaluation.evaluate(model, x, config)
    target = model(x).argmax(dim=1)
    expected = sg.smooth(model, x, smoothing, target=target)
    assert rows[1]["samples"] == 3
    assert rows[1]["relative_error"] == pytest.approx(float(expected.relative_error()[0]))
    assert evaluation.Evaluation.of(samples=3, seed=5, batch_size=2).smoothing == smoothing
    with pytest.raises(TypeError, match="did you mean 'samples'"):
        evaluation.Evaluation.of(sample=3)
    with pytest.raises(TypeError, match="smoothing must be a SmoothConfig"):
        evaluation.Evaluation(smoothing={"samples": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sweep sets"):
        evaluation.SweepSettings.of(stdev=0.1)
    swept = evaluation.sweep(model, x, evaluation.SweepSettings(
        noises=(0.1,), samples=(2,), at_samples=2, reference_samples=4,
        options=evaluation.MetricOptions(steps=2), smoothing=sg.SmoothConfig(aggregate="var")))
    reference = sg.smooth(model, x, target=target, samples=4, noise=sg.DEFAULT_NOISE, seed=1,
                          aggregate="var")
    assert torch.equal(swept.reference.attribution, reference.attribution)
