"""`smoothgrad batch`: inputs and output paths, bad images, kill and resume, option changes,
and two torchrun ranks against one process, bit for bit."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothgrad import images
from smoothgrad.batch import Source, collect, output_clashes
from smoothgrad.cli import main

BIN = Path(sys.executable).parent
SCRIPT, TORCHRUN = BIN / "smoothgrad", BIN / "torchrun"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads per process: exact equality

TINY = '''
import numpy as np, torch
from torch import nn

def build(resize=True):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    def preprocess(image):
        image = image.resize((32, 32)) if resize else image
        a = np.asarray(image, dtype=np.float32) / 127.5 - 1
        return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()
    return model, preprocess

def any_size():
    return build(resize=False)
'''

GOOD = ["a/b.jpg", "a_b.jpg", "a/c.png", "a/deep/d.png", "x.y/z.PNG", "with space.png",
        "é.png", "e.JPEG", *(f"many/{i:02d}.png" for i in range(16))]
BAD = {"bad/truncated.jpg": "image file is truncated", "bad/text.jpg": "not an image file",
       "bad/bomb.png": "possible decompression bomb"}
IGNORED = ["notes.txt", ".hidden.png", ".cache/e.png"]


def picture(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, 3)
    pixels = np.clip(colour + rng.normal(0, 40, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    (root / "tiny.py").write_text(TINY)
    folder = root / "data"
    for seed, name in enumerate([*GOOD, *IGNORED[1:]]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        picture(seed, (40 + seed % 3, 48)).save(folder / name,
                                                format="JPEG" if "jp" in name.lower() else "PNG")
    (folder / "bad").mkdir()
    jpeg = (folder / "a/b.jpg").read_bytes()
    (folder / "bad/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "bad/text.jpg").write_text("not a picture")
    Image.new("1", (10001, 10001)).save(folder / "bad/bomb.png")  # 12 kB, 100M pixels
    (folder / "notes.txt").write_text("not an input")
    return root


def command(data: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(data / "data"), "--out", str(out), "--model",
            f"{data / 'tiny.py'}:build", "--samples", "4", "--figures", *extra]


def run(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(launcher or [str(SCRIPT)]), *args], capture_output=True,
                          text=True, env=ENV, timeout=300, check=False)


@pytest.fixture(scope="module")
def reference(data: Path) -> Path:
    """One uninterrupted single-process run: the outputs every other run must equal."""
    out = data / "reference"
    done = run(*command(data, out))
    assert done.returncode == 1, done.stderr  # the bad images failed, the others did not
    return out


def files(out: Path) -> dict[str, bytes]:
    return {path.relative_to(out).as_posix(): path.read_bytes()
            for path in sorted(out.rglob("*")) if path.is_file()}


def index(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def assert_same_outputs(out: Path, reference: Path) -> None:
    """Byte-equal arrays, figures, records and index; nothing more, nothing less."""
    got, want = files(out), files(reference)
    got.pop("run.json"), want.pop("run.json")
    assert sorted(got) == sorted(want)
    different = [name for name in want if got[name] != want[name]]
    assert different == []


# ----------------------------------------------------------------------- inputs, paths


def test_folder_keys_keep_structure_and_skip_non_images(data: Path) -> None:
    sources = collect(str(data / "data"))
    assert [s.key for s in sources] == sorted([*GOOD, *BAD])
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in sources)
    # a/b.jpg and a_b.jpg cannot collide: the folder structure and full name are kept
    out = Path("/out")
    outputs = {s.output(out, "arrays") for s in sources}
    assert len(outputs) == len(sources)
    assert out / "arrays/a/b.jpg.npy" in outputs and out / "arrays/a_b.jpg.npy" in outputs


def test_lists_and_globs_use_absolute_keys_inside_out(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("in/sub/x.jpg", "elsewhere/x.jpg", "in/..x.png"):
        picture(0).save(tmp_path / name)
    listing = tmp_path / "in" / "list.txt"
    listing.write_text(f"# comment\n\nsub/x.jpg\n../elsewhere/x.jpg\n{tmp_path}/in/sub/x.jpg\n"
                       "sub/../..x.png\n  sub/./x.jpg  \n")
    sources = collect(str(listing))
    root = tmp_path.as_posix().lstrip("/")
    assert [s.key for s in sources] == [f"{root}/elsewhere/x.jpg", f"{root}/in/..x.png",
                                        f"{root}/in/sub/x.jpg"]  # duplicates merged
    out = tmp_path / "out"
    for source in sources:
        path = source.output(out, "arrays")
        assert ".." not in path.relative_to(out).parts
        assert os.path.normpath(path).startswith(str(out) + os.sep)
    globbed = collect(str(tmp_path / "*" / "*.jpg"))
    assert [s.key for s in globbed] == [f"{root}/elsewhere/x.jpg"]
    assert collect(str(tmp_path / "in/sub/x.jpg")) == [sources[2]]


def test_output_folder_clash_is_detected() -> None:
    sources = [Source("a/b.jpg", "/d/a/b.jpg"), Source("a/b.jpg.npy/c.png", "/d/a/b.jpg.npy/c.png"),
               Source("a_b.jpg", "/d/a_b.jpg")]
    assert list(output_clashes(sources)) == ["a/b.jpg.npy/c.png"]


def test_path_traversal_writes_nothing_outside_out(tmp_path: Path, data: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    picture(1).save(tmp_path / "x.jpg")
    picture(2).save(work / "in" / "y.png")
    listing = work / "in" / "list.txt"
    listing.write_text(f"../../x.jpg\n{tmp_path}/x.jpg\ny.png\n../in/./y.png\n")
    before = {p for p in tmp_path.rglob("*")}
    out = work / "out"
    code = main(["batch", str(listing), "--out", str(out), "--model",
                 f"{data / 'tiny.py'}:build", "--samples", "2", "--workers", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == out or out in p.parents for p in new)
    rows = index(out)
    assert [row["path"] for row in rows] == [str(tmp_path / "work/in/y.png"),
                                             str(tmp_path / "x.jpg")]
    assert all((out / row["array"]).is_file() for row in rows)


def test_images_of_different_shapes_in_one_batch(tmp_path: Path, data: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, size in enumerate([(20, 24), (30, 20), (20, 24)]):
        picture(i, size).save(folder / f"{i}.png")
    out = tmp_path / "out"
    code = main(["batch", str(folder), "--out", str(out), "--model", f"{data / 'tiny.py'}:any_size",
                 "--samples", "2", "--images-per-batch", "3", "--workers", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    shapes = [np.load(out / "arrays" / f"{i}.png.npy").shape for i in range(3)]
    assert shapes == [(3, 20, 24), (3, 30, 20), (3, 20, 24)]


# ---------------------------------------------------------------- a whole run, bad images


def test_run_writes_arrays_figures_and_index(data: Path, reference: Path) -> None:
    rows = index(reference)
    assert [row["path"] for row in rows] == [str(data / "data" / key)
                                             for key in sorted([*GOOD, *BAD])]
    for row in rows:
        key = row["path"][len(str(data / "data")) + 1:]
        if key in BAD:
            assert row["status"] == "failed" and BAD[key] in row["error"] and not row["array"]
            assert not (reference / "arrays" / f"{key}.npy").exists()
            continue
        assert row["status"] == "ok" and row["error"] == "" and row["samples"] == "4"
        array = np.load(reference / row["array"])
        assert row["array"] == f"arrays/{key}.npy"
        assert array.shape == (3, 32, 32) and array.dtype == np.float32
        assert np.isfinite(array).all() and np.abs(array).sum() > 0
        assert 0 < float(row["probability"]) <= 1 and 0 <= float(row["flip_rate"]) <= 1
        assert row["label"] == f"class {row['target']}"
        with Image.open(reference / "figures" / f"{key}.png") as png:
            assert png.size[0] == 224 and png.size[1] > 224  # 32 x 32 enlarged, a caption
    assert len({row["target"] for row in rows if row["target"]}) > 1  # not a constant model
    hidden = [name for name in files(reference) if name.rsplit("/", 1)[-1].startswith(".")]
    assert hidden == [".smoothgrad.lock"]  # no temporary files left
    manifest = json.loads((reference / "run.json").read_text())
    assert manifest["options"]["samples"] == 4 and manifest["numerics"]["images_per_batch"] == 2


def test_all_good_exits_zero_and_bad_usage_exits_two(tmp_path: Path, data: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", f"{data / 'tiny.py'}:build", "--samples", "2", "--workers", "0"]
    code = main(["batch", str(data / "data" / "a"), "--out", str(tmp_path / "ok"), *base])
    assert code == 0
    assert "3 images, 3 explained (0 already done, 3 now), 0 failed" in capsys.readouterr().out
    for args, message in [
        ([str(tmp_path / "nowhere")], "no such folder, file or glob"),
        ([str(tmp_path / "ok" / "arrays" / "*.txt")], "no image files found"),
        ([str(data / "data"), "--target", "99"], "--target 99 is not a class"),
    ]:
        code = main(["batch", *args, "--out", str(tmp_path / "bad"), *base])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------- options and resume


def test_changed_options_are_refused_unless_overwrite(tmp_path: Path, data: Path,
                                                      reference: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = files(out)
    code = main([*command(data, out, "--workers", "0"), "--samples", "3", "--seed", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "samples 4 -> 3; seed 0 -> 1" in err and "--overwrite" in err
    assert files(out) == before
    # rounding-only settings (threads, batch size) warn and resume: nothing is left to do
    code = main([*command(data, out, "--workers", "0", "--batch-size", "4")])
    assert code == 1 and files(out) == before
    assert "batch_size 8 -> 4" in capsys.readouterr().err
    code = main([*command(data, out, "--workers", "0"), "--samples", "2", "--dtype", "float16",
                 "--overwrite"])
    captured = capsys.readouterr()
    assert code == 1 and "discarded the earlier run" in captured.err
    assert "27 images, 24 explained (0 already done, 24 now), 3 failed" in captured.out
    assert np.load(out / "arrays" / "a/b.jpg.npy").dtype == np.float16
    assert json.loads((out / "run.json").read_text())["options"]["samples"] == 2


def test_kill_at_random_points_then_resume_gives_identical_outputs(data: Path,
                                                                   reference: Path) -> None:
    out = data / "killed"
    rng = random.Random(7)
    total = len(GOOD) + len(BAD)

    def recorded() -> int:
        return len(list((out / "records").rglob("*.json")))

    kills = []
    for attempt in range(4):
        process = subprocess.Popen([str(SCRIPT), *command(data, out)], env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        # kills 1 and 2: after a random number of new records (plus a few random
        # milliseconds, to land inside writes too); kill 3: at a random time, usually during
        # start-up, cleaning or the manifest check; then a run to the end
        wanted = recorded() + rng.randint(1, max(1, (total - recorded()) // 2))
        deadline = time.monotonic() + (rng.uniform(0.2, 3.0) if attempt == 2 else 120)
        while process.poll() is None and time.monotonic() < deadline:
            if attempt < 2 and recorded() >= wanted:
                time.sleep(rng.uniform(0, 0.05))
                break
            time.sleep(0.005)
        if attempt < 3 and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the command and its decoding workers
            kills.append(recorded())
        _, error = process.communicate(timeout=300)
        if attempt == 3:
            assert process.returncode == 1, error
    assert len(kills) >= 2 and kills[0] < total, kills
    assert_same_outputs(out, reference)
    assert index(out) == index(reference)


def test_two_torchrun_ranks_equal_one_process_bit_for_bit(data: Path, reference: Path) -> None:
    out = data / "torchrun"
    launcher = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "smoothgrad"]
    done = run(*command(data, out), launcher=launcher)
    assert done.returncode != 0  # rank 0 exits 1: the bad images failed
    assert "on 2 processes (cpu)" in done.stdout, done.stderr
    assert "3 failed" in done.stdout
    assert_same_outputs(out, reference)


def test_default_model_float16_and_figures(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "photos.txt"
    listing.write_text("\n".join(str(p) for p in images.sample_images().values()))
    out = tmp_path / "out"
    code = main(["batch", str(listing), "--out", str(out), "--samples", "2", "--workers", "1",
                 "--dtype", "float16", "--figures", "--method", "guided_backprop"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = index(out)
    assert [Path(row["path"]).name for row in rows] == ["chelsea.jpg", "coffee.jpg"]
    assert rows[1]["label"] == "espresso" and "cat" in rows[0]["label"]
    for row in rows:
        array = np.load(out / row["array"])
        assert array.shape == (3, 224, 224) and array.dtype == np.float16
        assert np.isfinite(array).all()
        figure = out / (row["array"].replace("arrays/", "figures/", 1)[:-4] + ".png")
        with Image.open(figure) as png:
            assert png.size[0] == 224 and png.size[1] > 224  # the map, then its caption
    assert "2 images, 2 explained" in captured.out


def test_a_locked_out_folder_is_refused(tmp_path: Path, data: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".smoothgrad.lock", "a") as held:  # as a live rank of another run does
        fcntl.flock(held, fcntl.LOCK_SH)
        code = main(["batch", str(data / "data" / "a"), "--out", str(out), "--model",
                     f"{data / 'tiny.py'}:build", "--samples", "2", "--workers", "0"])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another smoothgrad batch run" in err, err
    assert sorted(p.name for p in out.iterdir()) == [".smoothgrad.lock"]


def test_a_job_runs_in_process_without_the_command_line(tmp_path: Path, data: Path) -> None:
    from smoothgrad import viz
    from smoothgrad.batch import BatchError, Job, run
    from smoothgrad.config import SmoothConfig

    job = Job(str(data / "data" / "a"), tmp_path / "out", SmoothConfig(samples=2),
              model=f"{data / 'tiny.py'}:build", workers=0, figures=viz.Style(colormap="gray"),
              progress=False)
    summary = run(job)
    assert summary.code == 0 and [r["status"] for r in summary.records] == ["ok"] * 3
    assert "3 images, 3 explained (0 already done, 3 now), 0 failed" in summary.text
    assert (tmp_path / "out" / "figures" / "b.jpg.png").is_file()
    assert run(job).text.startswith("smoothgrad batch: 3 images, 3 explained (3 already done")
    with pytest.raises(BatchError, match="samples 2 -> 3"):
        run(Job(job.input, job.out, SmoothConfig(samples=3), model=job.model, workers=0,
                progress=False))
    with pytest.raises(ValueError, match="percentile"):
        Job(job.input, job.out, figures=viz.Style(percentile=101))


# -------------------------------------------------------- issues 10 and 15: regressions


def job_for(data: Path, out: Path, **changes: object) -> object:
    from smoothgrad.batch import Job
    from smoothgrad.config import SmoothConfig

    options: dict[str, object] = {"smoothing": SmoothConfig(samples=2),
                                  "model": f"{data / 'tiny.py'}:build", "workers": 0,
                                  "progress": False}
    options.update(changes)
    where = str(options.pop("input", data / "data" / "a"))
    return Job(where, out, **options)  # type: ignore[arg-type]


def test_a_killed_runs_lock_goes_with_its_main_process(tmp_path: Path, data: Path) -> None:
    """Issue 10.9: after kill -9 of the command, its orphaned decoding workers kept the lock
    and the immediate re-run was refused as "in use by another smoothgrad batch run"."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    process = subprocess.Popen([str(SCRIPT), *command(data, out, "--workers", "2")], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any((out / "records").rglob("*.json")):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()  # the main process only: its workers are orphaned, as by kill -9 PID
    process.wait()
    with open(out / ".smoothgrad.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while orphans hold it
    done = run(*command(data, out, "--workers", "0"))
    assert done.returncode == 1 and "already done" in done.stdout, done.stderr


def test_a_closed_stdout_costs_no_results_in_batch(tmp_path: Path, data: Path) -> None:
    """Issue 10.10: `smoothgrad batch ... | head -1`."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([str(SCRIPT), "batch", str(data / "data" / "a"), "--out",
                               str(tmp_path / "out"), "--model", f"{data / 'tiny.py'}:build",
                               "--samples", "2"], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=ENV, timeout=300, check=False)
    finally:
        os.close(write)
    assert done.returncode == 0 and "Broken pipe" not in done.stderr, done.stderr
    assert [row["status"] for row in index(tmp_path / "out")] == ["ok"] * 3


def test_a_full_disk_stops_the_run_and_leaves_nothing_half_written(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10.11: no file name in the message, a PNG and an .npy left behind."""
    from smoothgrad import files, viz
    from smoothgrad.batch import run as run_job

    calls = []
    real = os.fsync

    def fills_up(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) > 1:  # run.json fits, nothing after it does
            raise OSError(errno.ENOSPC, "No space left on device")
        real(descriptor)

    monkeypatch.setattr(os, "fsync", fills_up)
    out = tmp_path / "out"
    with pytest.raises(files.OutputError, match="disk is full") as info:
        run_job(job_for(data, out, figures=viz.Style()))  # type: ignore[arg-type]
    assert f"cannot write '{out / 'arrays' / 'b.jpg.npy'}'" in str(info.value)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == [".smoothgrad.lock", "run.json"], left


def test_samples_auto_records_convergence_relative_error_and_stderr(tmp_path: Path,
                                                                   data: Path) -> None:
    """Issue 10.18: which images did not converge, a relative-error column in index.csv,
    and standard-error arrays as explain writes them."""
    import warnings

    from smoothgrad.batch import run as run_job
    from smoothgrad.config import SmoothConfig

    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # smooth's own "has not converged" warning
        summary = run_job(job_for(data, out, smoothing=SmoothConfig(  # type: ignore[arg-type]
            samples="auto", tol=1e-6, max_samples=10), dtype="float16"))
    assert summary.code == 0
    rows = index(out)
    assert {row["converged"] for row in rows} == {"False"}
    assert all(float(row["relative_error"]) > 1e-6 for row in rows)
    assert "not converged: " in summary.text
    for row in rows:
        stderr = np.load(out / row["array"].replace("arrays/", "stderr/", 1))
        assert stderr.shape == (3, 32, 32) and stderr.dtype == np.float16
        assert (stderr >= 0).all() and stderr.max() > 0
    easy = run_job(job_for(data, tmp_path / "easy",  # type: ignore[arg-type]
                           smoothing=SmoothConfig(samples="auto", tol=10.0)))
    assert {row["converged"] for row in easy.records} == {True}
    assert "not converged" not in easy.text


def test_figures_of_a_finished_run_are_drawn_from_its_arrays(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15.4: adding --figures to a finished run was refused ("other options") and,
    with --overwrite, recomputed every map."""
    from smoothgrad import viz
    from smoothgrad.batch import RunWarning, runner
    from smoothgrad.batch import run as run_job

    reference = tmp_path / "reference"
    assert run_job(job_for(data, reference, figures=viz.Style())).code == 0  # type: ignore[arg-type]
    out = tmp_path / "out"
    assert run_job(job_for(data, out)).code == 0  # type: ignore[arg-type]
    before = {name: data for name, data in files(out).items() if name != "index.csv"}

    def no_smoothing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished image was explained again")

    monkeypatch.setattr(runner, "smooth", no_smoothing)
    summary = run_job(job_for(data, out, figures=viz.Style()))  # type: ignore[arg-type]
    assert summary.code == 0 and "drew 3 figures" in summary.text
    after = files(out)
    assert all(after[name] == data for name, data in before.items() if name != "run.json")
    figures = {name: data for name, data in files(reference).items()
               if name.startswith("figures/")}
    assert len(figures) == 3 and all(after[name] == data for name, data in figures.items())
    # another style is not "other options" either: the figures are drawn again
    with pytest.warns(RunWarning, match="drawing the figures again"):
        summary = run_job(job_for(data, out, figures=viz.Style(colormap="gray")))  # type: ignore[arg-type]
    assert summary.code == 0 and "drew 3 figures" in summary.text
    assert all(files(out)[name] != data for name, data in figures.items())
    assert run_job(job_for(data, out, figures=viz.Style(colormap="gray"))).text.count(  # type: ignore[arg-type]
        "drew") == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--figures", "--percentile", "101"], "percentile must be in (0, 100]"),
    (["--figures", "--colormap", "viridiss"], "unknown colormap"),
    (["--aggregate", "var", "--samples", "1"], "needs samples >= 2"),
])
def test_bad_options_are_refused_before_anything_is_written(
        tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    """Issue 10.13: with --figures, --percentile 101 failed after run.json and an array were
    written, so the corrected rerun was refused as "other options"."""
    out = tmp_path / "out"
    code = main(["batch", str(data / "data" / "a"), "--out", str(out), "--model",
                 f"{data / 'tiny.py'}:build", "--samples", "2", "--workers", "0", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_figures_name_the_explained_class_and_its_probability(tmp_path: Path,
                                                              data: Path) -> None:
    """Issue 23: a batch figure was the bare map; it must name the class its map explains
    (here --target 3, not the prediction) and its probability, also when drawn later from
    the stored arrays."""
    from smoothgrad import models, viz
    from smoothgrad.batch import run as run_job

    style = viz.Style()
    out = tmp_path / "out"
    assert run_job(job_for(data, out, figures=style, target=3)).code == 0  # type: ignore[arg-type]
    model = models.load(f"{data / 'tiny.py'}:build")
    rows = index(out)
    for row in rows:
        with torch.no_grad():
            probability = float(model(model.preprocess(images.load(row["path"])))
                                .softmax(dim=1)[0, 3])
        assert row["target"] == "3"
        assert float(row["probability"]) == pytest.approx(probability, rel=1e-4)
        picture = style.picture(np.load(out / row["array"]))
        label = f"class 3 (p = {float(row['probability']):.3f})"
        figure = out / (row["array"].replace("arrays/", "figures/", 1)[:-4] + ".png")
        assert figure.read_bytes() == viz.png_bytes(viz.captioned(picture, label))
        with Image.open(figure) as png:  # the map itself is on top, each pixel a 7x7 block
            top = np.asarray(png)[:224]
        assert np.array_equal(top, picture.repeat(7, axis=0).repeat(7, axis=1))
    drawn = tmp_path / "drawn"
    assert run_job(job_for(data, drawn, target=3)).code == 0  # type: ignore[arg-type]
    assert run_job(job_for(data, drawn, figures=style, target=3)).code == 0  # type: ignore[arg-type]
    assert {k: v for k, v in files(drawn).items() if k.startswith("figures/")} == {
        k: v for k, v in files(out).items() if k.startswith("figures/")}


# ------------------------------------------ issue 23: threads, and keys across INPUT forms

WIDE = '''
import numpy as np, torch
from torch import nn

def build():  # a 1x1 convolution 64 -> 256: its gradient's last bits depend on the threads
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, stride=4, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 256, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(256, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    def preprocess(image):
        a = np.asarray(image.resize((28, 28)), dtype=np.float32) / 127.5 - 1
        return torch.from_numpy(a).permute(2, 0, 1)
    return model, preprocess
'''


def test_threads_are_fixed_so_torchrun_equals_one_process_and_resume_keeps_them(
        tmp_path: Path, data: Path) -> None:
    """Issue 23: the README said a torchrun batch equals a single process bit for bit, but
    torchrun sets one thread per process and a 2-thread process differs in the last bits.
    The count is now an option (--threads), recorded in run.json, and a resumed run uses the
    recorded count in every rank: equal threads, equal bits, for any number of ranks."""
    (tmp_path / "wide.py").write_text(WIDE)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's default
    launcher = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "smoothgrad"]

    def batch(out: Path, *extra: str, ranks: bool = False) -> None:
        done = subprocess.run([*(launcher if ranks else [str(SCRIPT)]), "batch",
                               str(data / "data" / "many"), "--out", str(out), "--model",
                               f"{tmp_path / 'wide.py'}:build", "--samples", "2", "--workers",
                               "0", *extra], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        assert "other numerics" not in done.stderr

    def threads(out: Path) -> int:
        return int(json.loads((out / "run.json").read_text())["numerics"]["threads"])

    batch(tmp_path / "one", "--threads", "1")
    batch(tmp_path / "ranks", ranks=True)  # torchrun: 1 thread per process
    assert threads(tmp_path / "one") == threads(tmp_path / "ranks") == 1
    assert_same_outputs(tmp_path / "ranks", tmp_path / "one")
    batch(tmp_path / "two", "--threads", "2")
    arrays = sorted((tmp_path / "two" / "arrays").glob("*.npy"))
    assert len(arrays) == 16 and any(  # else this model could not tell the counts apart
        path.read_bytes() != (tmp_path / "one" / "arrays" / path.name).read_bytes()
        for path in arrays)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    for record in sorted((resumed / "records").glob("*.json"))[::2]:
        record.unlink()  # 8 images left to do
    batch(resumed, ranks=True)  # two ranks, which would run 1 thread each by default
    assert threads(resumed) == 2
    assert_same_outputs(resumed, tmp_path / "two")


def test_a_glob_of_the_folder_resumes_it_under_the_same_keys(tmp_path: Path,
                                                             data: Path) -> None:
    """Issue 23: resuming a folder's run with a glob of the same images was accepted and
    wrote a second set of outputs under absolute-path keys. The rerun now keys its images
    as the run in DIR does; an image that cannot be keyed so is refused in one line."""
    from smoothgrad.batch import BatchError, RunWarning
    from smoothgrad.batch import run as run_job

    folder = data / "data" / "a"
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert run_job(job_for(data, reference)).code == 0  # type: ignore[arg-type]
    assert run_job(job_for(data, out)).code == 0  # type: ignore[arg-type]
    (out / "records" / "c.png.json").unlink()  # one image left to do
    summary = run_job(job_for(data, out, input=f"{folder}/**/*"))  # type: ignore[arg-type]
    assert "3 images, 3 explained (2 already done, 1 now)" in summary.text
    assert_same_outputs(out, reference)
    lists = tmp_path / "list.txt"
    lists.write_text(f"{folder}/b.jpg\n{data / 'data' / 'e.JPEG'}\n")
    with pytest.raises(BatchError, match=r"e\.JPEG', which is not in '.*a': --out holds a run"):
        run_job(job_for(data, out, input=str(lists)))  # type: ignore[arg-type]
    assert_same_outputs(out, reference)
    # a run keyed by absolute paths (a list) is resumed by the folder under those keys
    absolute = tmp_path / "absolute"
    lists.write_text("\n".join(str(folder / key) for key in ("b.jpg", "c.png", "deep/d.png")))
    assert run_job(job_for(data, absolute, input=str(lists))).code == 0  # type: ignore[arg-type]
    before = files(absolute)
    summary = run_job(job_for(data, absolute))  # type: ignore[arg-type]
    assert "(3 already done, 0 now)" in summary.text and files(absolute) == before
    # --overwrite with the folder: the folder's own keys, the earlier run discarded
    with pytest.warns(RunWarning, match="keys 'absolute paths' -> 'paths inside"):
        assert run_job(job_for(data, absolute, overwrite=True)).code == 0  # type: ignore[arg-type]
    assert_same_outputs(absolute, reference)
