"""The command line's streams and errors (issue 18) and its output checks (issue 23).

- A closed stdout and stderr (``smoothgrad ... 2>&1 | head -n 1``) cost no result in any
  command: warnings and progress go nowhere and the work goes on.
- Only errors meant for the user are one line with exit 2; a bug of ours (an unexpected
  exception) is one line with exit 1 saying so, with the command and the way to get the
  traceback (``--debug``, SMOOTHGRAD_DEBUG=1); an error in the user's model names the model.
- Every output folder and file is checked before any work: an existing file, a path that
  cannot be created, a read-only folder give one ``--out:`` (``--json:``, ...) line, exit 2,
  nothing computed, printed or left behind.
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoothgrad import engine, images
from smoothgrad.cli import explain as explain_command
from smoothgrad.cli import main

SCRIPT = Path(sys.executable).with_name("smoothgrad")
CAT = str(images.sample_path("chelsea"))

TINY = '''
import numpy as np, torch
from pathlib import Path
from torch import nn


def build():
    Path(__file__).with_name("built").write_text("the model was built")
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model, squash


class Fussy(nn.Module):
    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("fussy model: one row at a time")
        return x.flatten(1)[:, :5]


def fussy():
    return Fussy(), squash


def squash(image):  # the photo squashed to 24 high x 12 wide, values in [0, 1]
    a = np.asarray(image.resize((12, 24)), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)
'''


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "sgerr_tiny.py").write_text(TINY)
    return tmp_path / "sgerr_tiny.py"


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------ streams

def black(folder: Path) -> Path:
    """A black photo: with the tiny model its input has no range, so every smooth call warns."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "black.png"
    Image.new("RGB", (30, 40)).save(path)
    return path


def commands(tiny: Path, tmp_path: Path, bert: Path) -> dict[str, list[str]]:
    model = ["--model", f"{tiny}:build"]
    photo = str(black(tmp_path / "photos"))
    (tmp_path / "photos" / "cat.jpg").write_bytes(Path(CAT).read_bytes())
    unconverged = ["--samples", "auto", "--tol", "1e-9", "--max-samples", "10"]
    return {
        "explain": ["explain", photo, CAT, *model, "--samples", "2", "--out", "out"],
        "batch": ["batch", str(tmp_path / "photos"), *model, "--samples", "2", "--out", "out"],
        "evaluate": ["evaluate", photo, CAT, *model, "--samples", "2", "--methods", "gradient",
                     "--aggregates", "mean", "--metrics", "gini", "--steps", "2", "--json",
                     "out/scores.json"],
        "sweep": ["sweep", photo, *model, "--noise", "0,0.1", "--samples", "2", "--at-samples",
                  "2", "--reference-samples", "3", "--steps", "2", "--out", "out"],
        "demo": ["demo", *model, *unconverged, "--out", "out"],
        "explain-text": ["explain-text", "w1 w2", "--model", f"hf:{bert}", *unconverged,
                         "--out", "out"],
    }


WRITTEN = {"explain": 6, "batch": 4, "evaluate": 1, "sweep": 4, "demo": 2, "explain-text": 2}
"""Files each command of `commands` writes into out/ (batch: its two maps and two errors)."""


@pytest.mark.parametrize("command", list(WRITTEN))
def test_a_closed_stdout_and_stderr_cost_no_result(command: str, tiny: Path, bert: Path,
                                                   tmp_path: Path) -> None:
    """Issue 18: `smoothgrad batch DIR --out O 2>&1 | head -n 1` recorded every image after
    the first warning as failed with BrokenPipeError; the other commands lost their work."""
    argv = commands(tiny, tmp_path, bert)[command]
    (tmp_path / "out").mkdir()
    read, write = os.pipe()
    os.close(read)  # `| head -n 0`: every write to stdout or stderr fails with EPIPE
    try:
        done = subprocess.run([str(SCRIPT), *argv], stdout=write, stderr=write, cwd=tmp_path,
                              timeout=600, check=False)
    finally:
        os.close(write)
    assert done.returncode == 0
    written = [p for p in (tmp_path / "out").rglob("*")
               if p.is_file() and p.suffix in (".npy", ".png", ".json", ".csv", ".html")
               and p.parent.name != "records" and p.name != "run.json"]
    assert len(written) >= WRITTEN[command], written
    if command == "batch":
        index = (tmp_path / "out" / "index.csv").read_text()
        assert "BrokenPipe" not in index and index.count(",ok,") == 2, index


# ------------------------------------------------------------------- bugs vs user errors

def test_an_internal_error_is_reported_as_a_bug(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path, tiny: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: any TypeError from the library was "bad input" (exit 2). An injected bug —
    the explain command calling `smooth` with a keyword it does not take — is exit 1."""
    broken = functools.partial(engine.smooth, colour="red")
    monkeypatch.setattr(explain_command, "smooth", broken)
    argv = ["explain", CAT, "--model", f"{tiny}:build", "--samples", "2", "--out",
            str(tmp_path / "out")]
    code, _, err = call(capsys, *argv)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("smoothgrad: error: this is a bug in smoothgrad, please report it: "
                          "TypeError: smooth() got an unexpected keyword argument 'colour'")
    assert f"(command: smoothgrad explain {CAT} --model {tiny}:build" in err
    assert "add --debug (or set SMOOTHGRAD_DEBUG=1) for the traceback" in err
    assert "Traceback" not in err

    code, _, err = call(capsys, *argv, "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err
    assert 'engine.py", line' in err and "for the traceback" not in err
    monkeypatch.setenv("SMOOTHGRAD_DEBUG", "1")
    code, _, err = call(capsys, *argv)
    assert code == 1 and "Traceback (most recent call last)" in err
    monkeypatch.setenv("SMOOTHGRAD_DEBUG", "0")
    assert "Traceback" not in call(capsys, *argv)[2]


@pytest.mark.parametrize(("args", "message"), [
    (["--samples", "auto", "--tol", "0.5", "--max-samples", "0"],
     "--max-samples: expected a positive integer"),
    (["--colormap", "viridiss"], "colormap"),
    (["--target", "kitten"], "--target"),
    (["--model", "nonesuch_xyz"], "model 'nonesuch_xyz' not found"),
    (["--weights", "{tmp}/nowhere.pth"], "--weights: no such file"),
    (["{tmp}/missing.jpg"], "missing.jpg"),
])
def test_user_errors_are_still_one_line_with_exit_2(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, tiny: Path,
                                                    args: list[str], message: str) -> None:
    args = [arg.format(tmp=tmp_path) for arg in args]
    code, out, err = call(capsys, "explain", CAT, "--model", f"{tiny}:build", "--samples", "2",
                          "--out", str(tmp_path / "out"), *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert "a bug" not in err and "Traceback" not in err and out == ""


def test_an_error_in_the_users_model_names_the_model(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path, tiny: Path) -> None:
    """A RuntimeError raised in the model's forward was a traceback (exit 1)."""
    code, _, err = call(capsys, "explain", CAT, "--model", f"{tiny}:fussy", "--samples", "4",
                        "--batch-size", "4", "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("smoothgrad: error: the model's own code raised RuntimeError: fussy "
                          "model: one row at a time (in sgerr_tiny.py, line ")
    assert ", in forward)" in err and "--debug" in err and "a bug" not in err


# --------------------------------------------------------------- output paths checked first

def out_commands(tiny: Path) -> dict[str, list[str]]:
    model = ["--model", f"{tiny}:build"]
    return {
        "explain": ["explain", CAT, *model, "--samples", "2", "--out", "{out}"],
        "demo": ["demo", *model, "--samples", "2", "--out", "{out}"],
        "batch": ["batch", CAT, *model, "--samples", "2", "--out", "{out}"],
        "sweep": ["sweep", CAT, *model, "--samples", "2", "--reference-samples", "3",
                  "--out", "{out}"],
        "sweep --json": ["sweep", CAT, *model, "--samples", "2", "--reference-samples", "3",
                         "--out", "{tmp}/sweep", "--json", "{out}/s.json"],
        "evaluate --json": ["evaluate", CAT, *model, "--samples", "2", "--json", "{out}/s.json"],
        "evaluate --csv": ["evaluate", CAT, *model, "--samples", "2", "--csv", "{out}/s.csv"],
        "explain-text": ["explain-text", "w1 w2", "--model", "hf:{bert}", "--samples", "2",
                         "--out", "{out}"],
    }


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from text_models import tiny_bert

    folder = tmp_path_factory.mktemp("bert")
    return tiny_bert(folder)


@pytest.mark.parametrize("case", ["an existing file", "cannot be created", "read-only"])
@pytest.mark.parametrize("command", ["explain", "demo", "batch", "sweep", "sweep --json",
                                     "evaluate --json", "evaluate --csv", "explain-text"])
def test_outputs_are_checked_before_any_work(command: str, case: str, tiny: Path, bert: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: `--out fake.jpg` gave "FileExistsError: ... 'fake.jpg'", `--out /proc/nope` a
    bare FileNotFoundError, and a read-only --out computed and printed the first image
    before failing with OSError. Now: one line naming the option, before the model is built."""
    option = command.split()[1] if " " in command else "--out"
    if case == "an existing file":
        (tmp_path / "fake.jpg").write_text("x")
        folder = tmp_path / "fake.jpg"
    elif case == "cannot be created":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux's /proc")
        folder = Path("/proc/nope")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        read_only(monkeypatch, folder)
    argv = [part.format(out=folder, tmp=tmp_path, bert=bert)
            for part in out_commands(tiny)[command]]
    code, out, err = call(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"smoothgrad: error: {option}: "), err
    assert out == "" and not (tiny.parent / "built").exists()  # no model was even built
    assert not (tmp_path / "sweep").exists()


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`folder` as on a read-only file system (root could write a chmod 555 folder)."""
    def refuse(path: object) -> bool:
        return os.fspath(path).startswith(os.fspath(folder))  # type: ignore[arg-type]

    real_open, real_mkdir = os.open, os.mkdir

    def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if refuse(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))  # type: ignore
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    def fake_mkdir(path: object, *args: object, **kwargs: object) -> None:
        if refuse(path) and os.fspath(path) != os.fspath(folder):  # type: ignore[arg-type]
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))  # type: ignore
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_a_good_out_is_left_as_it_was(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      tiny: Path) -> None:
    """The check creates nothing it does not need: a refused run leaves no new folder."""
    out = tmp_path / "a" / "b" / "out"
    code, _, err = call(capsys, "explain", CAT, "--model", f"{tiny}:build", "--samples", "0",
                        "--out", str(out))
    assert code == 2 and not (tmp_path / "a").exists(), err
    code, _, err = call(capsys, "explain", str(tmp_path / "missing.jpg"), "--model",
                        f"{tiny}:build", "--out", str(out))
    assert code == 2 and "missing.jpg" in err and not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------------- help

@pytest.mark.parametrize("command", ["explain", "demo", "batch", "sweep", "evaluate", "serve"])
def test_help_says_a_model_can_be_a_file(command: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23: README lists `--model file.py:fn`, --help did not."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "file.py:fn" in shown and "module:fn" in shown
