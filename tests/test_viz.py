"""smoothgrad.viz against known answers: numpy formulas, matplotlib's colormaps, decoded files."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from smoothgrad import viz

RNG = np.random.default_rng(0)


def ramp(side: int = 10) -> np.ndarray:
    return np.linspace(0.0, 1.0, side * side).reshape(side, side)


def cmap_rgb(name: str, position: float) -> list[int]:
    """The reference colour: matplotlib's own colormap value, as 8-bit RGB."""
    return [round(c * 255) for c in matplotlib.colormaps[name](position)[:3]]


def test_docstring_examples_run() -> None:
    assert doctest.testmod(viz).failed == 0


# process ----------------------------------------------------------------------------------------


def test_percentile_clips_one_outlier_and_keeps_the_structure() -> None:
    attribution = ramp(100)
    attribution[0, 0] = 1e6  # one huge outlier (0.01% of the pixels) where the ramp had its 0
    out = viz.process(attribution, percentile=99.0, skew=1.0)
    cap = np.percentile(np.abs(attribution), 99.0)
    assert out[0, 0] == 1.0
    rest = np.ones_like(attribution, dtype=bool)
    rest[0, 0] = False
    np.testing.assert_allclose(out[rest], np.minimum(attribution[rest] / cap, 1.0), rtol=1e-6)
    assert out[rest].min() == pytest.approx(attribution[rest].min() / cap)
    assert out[rest].max() == 1.0
    # without clipping the outlier would flatten the ramp to ~1e-6
    assert viz.process(attribution, percentile=100.0, skew=1.0)[rest].max() < 1e-5


def test_percentile_100_is_max_normalisation() -> None:
    attribution = RNG.normal(size=(8, 8))
    expected = np.abs(attribution) / np.abs(attribution).max()
    np.testing.assert_allclose(
        viz.process(attribution, percentile=100, skew=1), expected, rtol=1e-6
    )


@pytest.mark.parametrize("skew", [0.25, 0.5, 1.0, 2.0])
def test_skew_is_a_gamma_on_a_ramp(skew: float) -> None:
    out = viz.process(ramp(), percentile=100.0, skew=skew)
    np.testing.assert_allclose(out, ramp() ** skew, rtol=1e-6, atol=1e-7)


def test_positive_and_negative_select_the_sign() -> None:
    attribution = RNG.normal(size=(12, 12))
    pos = np.maximum(attribution, 0)
    neg = np.maximum(-attribution, 0)
    out_pos = viz.process(attribution, activation="positive", percentile=100, skew=1)
    out_neg = viz.process(attribution, activation="negative", percentile=100, skew=1)
    np.testing.assert_allclose(out_pos, pos / pos.max(), rtol=1e-6)
    np.testing.assert_allclose(out_neg, neg / neg.max(), rtol=1e-6)
    assert np.all(out_pos[attribution <= 0] == 0) and np.all(out_neg[attribution >= 0] == 0)


def test_all_keeps_zero_and_is_symmetric() -> None:
    attribution = RNG.normal(size=(3, 16, 16))
    attribution[:, :4, :4] = 0.0
    out = viz.process(attribution, activation="all")
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.all(out[:4, :4] == 0.0)
    np.testing.assert_array_equal(viz.process(-attribution, activation="all"), -out)
    summed = attribution.sum(axis=0)
    np.testing.assert_array_equal(np.sign(out), np.sign(summed))
    # the scale is the percentile of the magnitude: both tails saturate at the same level
    cap = np.percentile(np.abs(summed), 99.0)
    np.testing.assert_array_equal(np.abs(out) == 1.0, np.abs(summed) >= cap)


def test_channel_sum_of_abs_matches_pair_grayscale() -> None:
    attribution = RNG.normal(size=(3, 20, 20))
    # PAIR's VisualizeImageGrayscale, channels last, with vmin = 0 (we keep zero at zero)
    hwc = np.moveaxis(attribution, 0, -1)
    image_2d = np.sum(np.abs(hwc), axis=2)
    expected = np.clip(image_2d / np.percentile(image_2d, 99), 0, 1)
    out = viz.process(attribution, skew=1.0)
    assert out.shape == (20, 20) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # same answer for a batch of one and for a torch tensor
    np.testing.assert_array_equal(viz.process(attribution[None], skew=1.0), out)
    np.testing.assert_array_equal(viz.process(torch.from_numpy(attribution), skew=1.0), out)


def test_sum_identities_between_activations() -> None:
    attribution = RNG.normal(size=(3, 6, 6))
    raw = {
        a: viz.process(attribution, activation=a, percentile=100, skew=1)
        for a in ("abs", "positive", "negative", "all")
    }
    pos, neg = np.maximum(attribution, 0).sum(0), np.maximum(-attribution, 0).sum(0)
    np.testing.assert_allclose(raw["abs"], (pos + neg) / (pos + neg).max(), rtol=1e-6)
    np.testing.assert_allclose(raw["all"], (pos - neg) / np.abs(pos - neg).max(), rtol=1e-6)


def test_reduce_max_keeps_the_largest_magnitude_and_its_sign() -> None:
    attribution = np.zeros((3, 1, 2))
    attribution[:, 0, 0] = [1.0, -3.0, 2.0]
    attribution[:, 0, 1] = [1.5, 0.5, -1.0]
    signed = viz.process(attribution, activation="all", reduce="max", percentile=100, skew=1)
    np.testing.assert_allclose(signed, [[-1.0, 0.5]])
    magnitude = viz.process(attribution, reduce="max", percentile=100, skew=1)
    np.testing.assert_allclose(magnitude, [[1.0, 0.5]])


@pytest.mark.parametrize("activation", ["abs", "positive", "negative", "all"])
def test_all_zero_map_gives_zeros(activation: Any) -> None:
    out = viz.process(np.zeros((3, 5, 5)), activation=activation)
    assert out.dtype == np.float32 and not np.isnan(out).any() and not out.any()


def test_sparse_map_falls_back_to_the_maximum() -> None:
    attribution = np.zeros((20, 20))
    attribution[3, 4] = 2.0  # 99th percentile of |a| is 0
    out = viz.process(attribution)
    assert out[3, 4] == 1.0 and np.count_nonzero(out) == 1


@pytest.mark.parametrize(
    ("attribution", "kwargs"),
    [
        (np.zeros((2, 3, 4, 4)), {}),
        (np.zeros(5), {}),
        (np.full((2, 2), np.nan), {}),
        (np.ones((2, 2)), {"activation": "square"}),
        (np.ones((2, 2)), {"reduce": "mean"}),
        (np.ones((2, 2)), {"skew": 0.0}),
        (np.ones((2, 2)), {"percentile": 0.0}),
    ],
)
def test_process_rejects_bad_input(attribution: np.ndarray, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        viz.process(attribution, **kwargs)


# colorize and overlay ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["viridis", "magma", "gray", "hot"])
def test_colorize_endpoints_match_the_colormap(name: str) -> None:
    rgb = viz.colorize(np.array([[0.0, 1.0]]), colormap=name)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    assert rgb[0, 0].tolist() == cmap_rgb(name, 0.0)
    assert rgb[0, 1].tolist() == cmap_rgb(name, 1.0)


def test_colorize_defaults_and_signed_centre() -> None:
    assert viz.colorize(np.array([[1.0]]))[0, 0].tolist() == cmap_rgb("viridis", 1.0)
    signed = viz.colorize(np.array([[-1.0, 0.0, 1.0]]), activation="all")
    assert signed[0].tolist() == [cmap_rgb("RdBu_r", p) for p in (0.0, 0.5, 1.0)]
    gray = viz.colorize(np.array([[0.0, 1.0]]), colormap="gray")
    assert gray[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_unknown_colormap_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="viridis"):
        viz.colorize(np.zeros((2, 2)), colormap="viridiss")


@pytest.mark.parametrize(
    ("values", "activation"),
    [(np.array([[-0.5]]), "abs"), (np.array([[1.5]]), "all"), (np.zeros((2, 2, 3)), "abs")],
)
def test_colorize_rejects_unprocessed_maps(values: np.ndarray, activation: Any) -> None:
    with pytest.raises(ValueError):
        viz.colorize(values, activation=activation)


def test_overlay_blends_and_resizes() -> None:
    photo = np.empty((8, 6, 3), dtype=np.uint8)
    photo[:] = (10, 20, 30)
    heat = np.empty((4, 3, 3), dtype=np.uint8)
    heat[:] = (110, 120, 130)
    half = viz.overlay(photo, heat, alpha=0.5)
    assert half.shape == (4, 3, 3) and half.dtype == np.uint8
    assert np.all(half == (60, 70, 80))
    np.testing.assert_array_equal(viz.overlay(Image.fromarray(photo), heat, alpha=1.0), heat)
    assert np.all(viz.overlay(photo / 255.0, heat, alpha=0.0) == (10, 20, 30))
    with pytest.raises(ValueError):
        viz.overlay(photo, heat, alpha=1.5)


# figures and files ------------------------------------------------------------------------------


def make_rows() -> list[viz.Row]:
    photo = RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    maps = [viz.process(RNG.normal(size=(3, 32, 32))) for _ in range(2)]
    return [viz.Row(photo, maps, "tabby 0.77"), viz.Row(Image.fromarray(photo), maps, "")]


def test_comparison_figure_layout() -> None:
    fig = viz.comparison_figure(make_rows(), suptitle="SmoothGrad")
    axes = fig.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["Input", "Gradient", "SmoothGrad"]
    assert axes[0].get_ylabel() == "tabby 0.77" and axes[3].get_ylabel() == ""
    with pytest.raises(ValueError, match="titles"):
        viz.comparison_figure(make_rows(), titles=("Input", "Gradient"))
    ragged = make_rows()
    ragged[1] = viz.Row(ragged[1].image, ragged[1].maps[:1])
    with pytest.raises(ValueError, match="same number"):
        viz.comparison_figure(ragged)


def test_comparison_png_size_is_figsize_times_dpi(tmp_path: Path) -> None:
    fig = viz.comparison_figure(make_rows(), panel_size=1.5, dpi=80)
    width, height = fig.get_size_inches() * fig.dpi
    (path,) = viz.save(fig, tmp_path / "grid.png")
    assert path == tmp_path / "grid.png"
    with Image.open(path) as png:
        png.load()
        assert png.format == "PNG" and png.size == (round(width), round(height)) == (360, 240)


def test_row_figure_for_sweeps(tmp_path: Path) -> None:
    maps = [viz.process(RNG.normal(size=(16, 16)), activation="all") for _ in range(3)]
    titles = [f"σ={s:.2f}" for s in (0.1, 0.2, 0.3)]
    fig = viz.row_figure(maps, titles, suptitle="noise", activation="all")
    assert [ax.get_title() for ax in fig.axes] == titles
    paths = viz.save(fig, tmp_path / "sigma0.15", formats=("png", "svg", "pdf"))
    assert [p.name for p in paths] == ["sigma0.15.png", "sigma0.15.svg", "sigma0.15.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert b"<svg" in paths[1].read_bytes()[:1000]
    assert paths[2].read_bytes().startswith(b"%PDF")
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)


def test_figures_leave_pyplot_alone(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = (plt.get_fignums(), matplotlib.get_backend(), dict(matplotlib.rcParams))
    viz.save(viz.comparison_figure(make_rows()), tmp_path / "f.png")
    assert (plt.get_fignums(), matplotlib.get_backend(), dict(matplotlib.rcParams)) == before


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, smoothgrad.viz; assert 'matplotlib' not in sys.modules, 'eager import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_format_writes_nothing(tmp_path: Path) -> None:
    fig = viz.row_figure([np.zeros((4, 4))])
    with pytest.raises(ValueError, match="formats"):
        viz.save(fig, tmp_path / "x.png", formats=("png", "nope"))
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: Any) -> None:
    fig = viz.row_figure([np.zeros((4, 4))])
    existing = tmp_path / "keep.png"
    existing.write_bytes(b"old")

    def half_write(file: IO[bytes], **kwargs: Any) -> None:
        if kwargs["format"] == "svg":
            file.write(b"<svg half")
            raise OSError("disk full")
        file.write(b"png bytes")

    monkeypatch.setattr(fig, "savefig", half_write)
    with pytest.raises(OSError, match="disk full"):
        viz.save(fig, existing, formats=("png", "svg"))
    assert os.listdir(tmp_path) == ["keep.png"] and existing.read_bytes() == b"old"


def test_save_heatmap_png_roundtrip_and_validation(tmp_path: Path) -> None:
    rgb = viz.colorize(viz.process(RNG.normal(size=(3, 9, 7))))
    path = viz.save_heatmap_png(rgb, tmp_path / "map.png")
    with Image.open(path) as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), rgb)
    with pytest.raises(ValueError):
        viz.save_heatmap_png(rgb.astype(np.float32), tmp_path / "bad.png")
    assert os.listdir(tmp_path) == ["map.png"]


def test_channels_last_arrays_are_refused_or_read_explicitly() -> None:
    """Issue 10.6: (224, 224, 3) was read as 224 channels, giving a (224, 3) map."""
    hwc = np.random.default_rng(0).normal(size=(224, 224, 3))
    with pytest.raises(ValueError, match="channels_last=True"):
        viz.process(hwc)
    expected = viz.process(hwc.transpose(2, 0, 1))
    np.testing.assert_array_equal(viz.process(hwc, channels_last=True), expected)
    np.testing.assert_array_equal(viz.process(hwc[np.newaxis], channels_last=True), expected)
    assert viz.process(np.ones((3, 4, 4))).shape == (4, 4)  # (C, H, W) with 4 columns: fine


def test_save_takes_one_format_as_a_string(tmp_path: Path) -> None:
    """Issue 10.19: viz.save(fig, path, "png") failed with "got ['p', 'n', 'g']"."""
    fig = viz.row_figure([np.zeros((4, 4))])
    assert viz.save(fig, tmp_path / "one", "png") == [tmp_path / "one.png"]
    assert viz.save(fig, tmp_path / "two", "png,svg") == [tmp_path / "two.png",
                                                          tmp_path / "two.svg"]
