"""`smoothgrad batch` throughput: 1 vs 2 processes, kill-and-resume cost, memory per rank.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch.py [--images 16] [--samples 10]

Runs the real command (default model, EfficientNet-Lite0) as subprocesses on a synthetic
dataset of JPEGs cut from the bundled photos, and prints a Markdown table for
BENCHMARKS.md. Every run is timed from launch to exit ("wall", including Python and torch
start-up and model loading) and by the command's own summary ("images/s" and "noisy
samples/s" over its processing phase). With --device cuda the GPU rows run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

from smoothgrad import images

BIN = Path(sys.executable).parent
SUMMARY = re.compile(r"([\d.]+) s on (\d+) process(?:es)? \((\w+)\): ([\d.]+) images/s, "
                     r"([\d.]+) noisy samples/s .*peak memory per process (\d+) MiB"
                     r"(?:, per decoding worker (\d+) MiB)?(?:, GPU (\d+) MiB)?")


def dataset(folder: Path, count: int) -> None:
    """`count` 640x480 JPEGs: random crops and flips of the two bundled photos."""
    rng = np.random.default_rng(0)
    photos = [images.load(path) for path in images.sample_images().values()]
    for i in range(count):
        photo = photos[i % 2]
        width, height = photo.size
        left, top = int(rng.integers(0, width // 4)), int(rng.integers(0, height // 4))
        crop = photo.crop((left, top, left + 3 * width // 4, top + 3 * height // 4))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        (folder / f"{i // 8:02d}").mkdir(exist_ok=True)
        crop.resize((640, 480)).save(folder / f"{i // 8:02d}" / f"{i:04d}.jpg", quality=90)


def launch(args: list[str], processes: int, threads: int) -> list[str]:
    env_note = f"OMP_NUM_THREADS={threads}"
    if processes == 1:
        return [env_note, str(BIN / "smoothgrad"), *args]
    return [env_note, str(BIN / "torchrun"), "--standalone", "--nproc-per-node",
            str(processes), "-m", "smoothgrad", *args]


def run(command: list[str], *, kill_after: int | None = None, records: Path | None = None,
        delay: float = 0.0) -> dict[str, object]:
    """Run `command` (first item: OMP_NUM_THREADS=n); optionally SIGKILL it `delay` seconds
    after `kill_after` records exist. Returns wall seconds and the parsed summary."""
    threads = command[0].split("=")[1]
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    started = time.perf_counter()
    process = subprocess.Popen(command[1:], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    if kill_after is not None and records is not None:
        while process.poll() is None:
            if records.exists() and len(list(records.rglob("*.json"))) >= kill_after:
                time.sleep(delay)
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    result: dict[str, object] = {"wall": wall, "code": process.returncode}
    match = SUMMARY.search(out)
    if match:
        seconds, ranks, device, rate, samples, memory, worker, gpu = match.groups()
        result.update(seconds=float(seconds), ranks=int(ranks), device=device,
                      images_per_s=float(rate), samples_per_s=float(samples),
                      memory=int(memory), worker=int(worker or 0), gpu=int(gpu or 0))
    elif kill_after is None:
        raise SystemExit(f"no summary from {' '.join(command)}:\n{out}\n{err}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sg-batch-bench-"))
    try:
        data = work / "data"
        data.mkdir()
        dataset(data, options.images)
        common = ["batch", str(data), "--samples", str(options.samples), "--device",
                  options.device]
        configs: list[tuple[str, list[str]]] = [
            (f"{p} process{'es' * (p > 1)} x 1 thread", launch(common, p, 1))
            for p in options.processes]
        if options.device == "cpu":
            configs += [("1 process x 2 threads", launch(common, 1, 2)),
                        ("1 process x 1 thread, --images-per-batch 2",
                         launch([*common, "--images-per-batch", "2"], 1, 1))]
        runs: dict[str, list[dict[str, object]]] = {name: [] for name, _ in configs}
        for repeat in range(options.repeat):  # interleaved, so load changes hit all alike
            for number, (name, command) in enumerate(configs):
                out = work / f"run{repeat}-{number}"
                runs[name].append(run([*command, "--out", str(out)]))
                if repeat or number:
                    shutil.rmtree(out)
        rows = [(name, {key: median([float(r[key]) for r in results])  # type: ignore[arg-type]
                        for key in ("wall", "seconds", "images_per_s", "samples_per_s",
                                    "memory", "worker")})
                for name, results in runs.items()]
        # kill in the middle of the image after half of them, then resume with the same command
        out = work / "killed"
        command = [*configs[0][1], "--out", str(out)]
        full = rows[0][1]
        per_image = float(full["seconds"]) / options.images
        killed = run(command, kill_after=options.images // 2, records=out / "records",
                     delay=per_image / 2)  # mid-image: half an image's work is lost
        done_at_kill = len(list((out / "records").rglob("*.json")))
        resumed = run(command)
        startup = float(resumed["wall"]) - float(resumed["seconds"])  # type: ignore[arg-type]
        lost = float(killed["wall"]) + float(resumed["wall"]) - float(full["wall"])  # type: ignore[arg-type]
        out_reference = work / "run0-0"

        print(f"\n{options.images} images of 640x480 (JPEG), efficientnet_lite0, gradient, "
              f"{options.samples} samples, device {options.device}; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print(f"median of {options.repeat} interleaved runs each\n")
        print("| run | wall s (incl. start-up) | processing s | images/s | noisy samples/s "
              "| peak RSS per process MiB | per decoding worker MiB |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['wall']:.1f} | {r['seconds']:.1f} | {r['images_per_s']:.2f} "
                  f"| {r['samples_per_s']:.1f} | {r['memory']:.0f} | {r['worker']:.0f} |")
        print(f"\nkill -9 after {done_at_kill} of {options.images} images were recorded, then "
              f"the same command: killed run {killed['wall']:.1f} s + resume "
              f"{resumed['wall']:.1f} s vs uninterrupted {full['wall']:.1f} s (difference "
              f"{lost:+.1f} s). The resume's own cost: start-up {startup:.1f} s (Python, torch, "
              f"model, checking {done_at_kill} records) plus the work on the image in flight "
              f"(killed half-way through it: ~{per_image / 2:.1f} s)")
        same = all((out_reference / p.relative_to(out)).read_bytes() == p.read_bytes()
                   for p in (out / "arrays").rglob("*.npy"))
        print(f"resumed arrays byte-identical to the uninterrupted run: {same}")
        if options.json:
            options.json.write_text(json.dumps({"runs": runs, "killed": killed,
                                                "resumed": resumed, "lost": lost}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
