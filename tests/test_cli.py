"""The `smoothgrad` command end to end, through a subprocess and in-process for bad input."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, call
from smoothgrad import images
from smoothgrad.cli import main

SCRIPT = Path(sys.executable).with_name("smoothgrad")
CAT = str(images.sample_path("chelsea"))
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # 281-285


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


def test_explain_prints_top5_and_writes_figure_and_arrays(tmp_path: Path) -> None:
    done = run("explain", CAT, "--samples", "4", "--out", str(tmp_path), "--save", "png,svg,npy")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "chelsea: top-5"
    first = lines[1].split("  ")[1:]
    assert lines[1].startswith("  1. ") and any(c in lines[1] for c in CAT_CLASSES), lines[1]
    probabilities = [float(line.split()[-1]) for line in lines[1:6] if "<-" not in line] + [
        float(line.split()[-3]) for line in lines[1:6] if "<-" in line]
    assert len(probabilities) == 5 and 0.0 < sum(probabilities) <= 1.0, first
    figure = tmp_path / "chelsea_gradient.png"
    with Image.open(figure) as png:
        assert png.size == (750, 250)  # 3 panels of 2.5 in at 100 dpi
    assert (tmp_path / "chelsea_gradient.svg").read_text().lstrip().startswith("<?xml")
    for suffix in ("", "_smoothgrad", "_smoothgrad_stderr"):
        array = np.load(tmp_path / f"chelsea_gradient{suffix}.npy")
        assert array.shape == (3, 224, 224) and array.dtype == np.float32
        assert np.isfinite(array).all() and np.abs(array).sum() > 0
    assert f"wrote {figure}" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_demo_writes_the_tutorial_figures(tmp_path: Path) -> None:
    done = run("demo", "--samples", "2", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    for method in ("gradient", "guided_backprop"):
        with Image.open(tmp_path / "demo" / f"{method}.png") as png:
            assert png.size == (750, 500)  # two photos, three panels each
        assert f"demo/{method}.png: Input |" in done.stdout
    assert "espresso" in done.stdout


def test_quiet_version_and_help(tmp_path: Path) -> None:
    quiet = run("explain", CAT, "--samples", "2", "--out", str(tmp_path), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert run("--version").stdout.startswith("smoothgrad ")
    assert "examples:" in run("explain", "--help").stdout


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    done = run("explain", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "missing.jpg" in done.stderr and not (tmp_path / "out").exists()


@pytest.fixture
def not_an_image(tmp_path: Path) -> str:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    return str(path)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "resnet5O"], "model 'resnet5O' not found"),
    (["--method", "smoothgradcam"], "invalid choice: 'smoothgradcam'"),
    (["--target", "tabby kat"], "did you mean 'tabby'"),
    (["--target", "1000"], "0..999"),
    (["--samples", "0"], "positive integer"),
    (["--samples", "many"], "positive integer"),
    (["--noise", "-0.1"], "finite number >= 0"),
    (["--noise", "nan"], "finite number >= 0"),
    (["--noise", "0.1", "--stdev", "0.2"], "not allowed with argument"),
    (["--batch-size", "0"], "positive integer"),
    (["--save", "png,gif"], "comma-separated list"),
    (["--weights", "nowhere.pth"], "no such file"),
    (["--colormap", "viridiss"], "colormap"),
    (["--skew", "0"], "number > 0"),
])
def test_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                     message: str) -> None:
    out = tmp_path / "out"
    code, err = call(capsys, "explain", CAT, "--samples", "2", "--out", str(out), *args)
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, not_an_image: str) -> None:
    code, err = call(capsys, "explain", CAT, not_an_image, "--out", str(tmp_path / "out"))
    assert code == 2 and "notes.jpg" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(Path(CAT).read_bytes()[:5000])
    code, err = call(capsys, "explain", str(truncated), "--out", str(tmp_path / "out"))
    assert code == 2 and "cut.jpg" in err


def test_unavailable_device(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = call(capsys, "explain", CAT, "--device", "cuda", "--out", str(tmp_path))
    assert code == 2 and "CUDA is not available" in err


def test_colliding_names_get_distinct_outputs(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    other = tmp_path / "b" / "chelsea.png"
    other.parent.mkdir()
    Image.open(CAT).save(other)
    code, _ = call(capsys, "explain", CAT, str(other), "--samples", "2", "--quiet", "--save",
                   "npy", "--out", str(tmp_path / "out"), "--target", "Egyptian cat")
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{stem}_gradient{s}.npy" for stem in ("chelsea", "chelsea-2")
                           for s in ("", "_smoothgrad", "_smoothgrad_stderr"))


# -------------------------------------------------------- issue 10: app-layer regressions




@pytest.fixture
def tiny(tmp_path: Path) -> str:
    (tmp_path / "sg_cli_tiny.py").write_text(TINY_MODEL)
    return str(tmp_path / "sg_cli_tiny.py")


def test_input_panel_shows_the_pixels_the_model_saw(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, tiny: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10.7: the Input panel was a fixed centre square whatever the preprocess did."""
    from smoothgrad import models, viz

    drawn: list[viz.Row] = []
    original = viz.comparison_figure

    def record(rows: list[viz.Row], **kwargs: object) -> object:
        drawn.extend(rows)
        return original(rows, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(viz, "comparison_figure", record)
    code, err = call(capsys, "explain", CAT, "--model", f"{tiny}:build", "--samples", "2",
                     "--save", "png", "--out", str(tmp_path / "out"))
    assert code == 0, err
    panel = drawn[0].image
    expected = models.load(f"{tiny}:build").crop(images.load(CAT))
    assert panel.size == (12, 24) and panel.tobytes() == expected.tobytes()


@pytest.mark.parametrize(("args", "message"), [
    (["--percentile", "101"], "percentile must be in (0, 100]"),
    (["--aggregate", "var", "--samples", "1"], "needs samples >= 2"),
])
def test_options_are_checked_before_any_work_or_write(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path, args: list[str],
                                                      message: str) -> None:
    """Issue 10.13: --percentile 101 computed and printed the maps first; --aggregate var
    --samples 1 created --out before failing."""
    out = tmp_path / "out"
    try:
        code = main(["explain", CAT, "--out", str(out), *args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err, captured.err
    assert captured.out == "" and not out.exists()


def test_sweep_json_may_go_into_the_out_folder_it_creates(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path, tiny: str) -> None:
    """Issue 10.13 (sweep --out sw1 --json sw1/t.json was refused: sw1 did not exist yet) and
    10.17 (CSV/JSON were 0600 whatever the umask)."""
    out = tmp_path / "sw1"
    old = os.umask(0o027)
    try:
        code, err = call(capsys, "sweep", CAT, "--model", f"{tiny}:build", "--noise", "0,0.1",
                         "--samples", "2", "--at-samples", "2", "--reference-samples", "3",
                         "--steps", "2", "--out", str(out), "--json", str(out / "t.json"),
                         "--quiet")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (out / "t.json").is_file() and (out / "chelsea_gradient_sweep.csv").is_file()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o640}, modes


def test_outputs_follow_the_umask(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  tiny: str) -> None:
    """Issue 10.17: explain's .npy files were 0600 (mkstemp), its PNGs 0644."""
    for umask, mode in [(0o022, 0o644), (0o077, 0o600)]:
        out = tmp_path / f"out{umask:o}"
        old = os.umask(umask)
        try:
            code, err = call(capsys, "explain", CAT, "--model", f"{tiny}:build", "--samples",
                             "2", "--out", str(out), "--quiet")
        finally:
            os.umask(old)
        assert code == 0, err
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert len(modes) == 4 and set(modes.values()) == {mode}, modes


def test_a_full_disk_names_the_file_and_leaves_nothing(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path, tiny: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10.11: "150528 requested and 28640 written", no file name, a PNG and an .npy
    left behind."""
    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out"
    code, err = call(capsys, "explain", CAT, "--model", f"{tiny}:build", "--samples", "2",
                     "--save", "png,npy", "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert "disk is full" in err and str(out / "chelsea_gradient") in err
    assert list(out.iterdir()) == []


def test_a_closed_stdout_costs_no_results(tmp_path: Path) -> None:
    """Issue 10.10: `smoothgrad ... | head -1` lost the work done after the pipe closed."""
    other = tmp_path / "coffee.jpg"
    other.write_bytes(images.sample_path("coffee").read_bytes())
    read, write = os.pipe()
    os.close(read)  # every write to stdout now fails with EPIPE
    try:
        done = subprocess.run([str(SCRIPT), "explain", CAT, str(other), "--samples", "2",
                               "--save", "npy", "--out", str(tmp_path / "out")],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
                              check=False)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr
    assert len(list((tmp_path / "out").glob("*.npy"))) == 6


def test_model_module_from_the_current_folder_and_broken_files(tmp_path: Path,
                                                               tiny: str) -> None:
    """Issue 10.12: `--model module:fn` should find modules in the current folder; an
    exception while importing the user's file was a traceback with rc 1."""
    done = run("explain", CAT, "--model", "sg_cli_tiny:build", "--samples", "2", "--save",
               "npy", "--out", "out", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "chelsea_gradient_smoothgrad.npy").is_file()
    (tmp_path / "broken.py").write_text("import torch\nraise ValueError('bad config')\n")
    done = run("explain", CAT, "--model", "broken.py:build", "--out", "out2", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "bad config" in done.stderr and "Traceback" not in done.stderr
