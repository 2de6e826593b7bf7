"""The `smoothgrad` command end to end, through a subprocess and in-process for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    return code, err


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
