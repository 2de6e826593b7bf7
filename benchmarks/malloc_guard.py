"""What `fast=True` loses now that `guard.reusing_freed_memory` is opt-in (issue 18).

The guard switches glibc's adaptive mmap threshold off for the rest of the process, so
`smooth` no longer enters it; a caller may (`with sg.guard.reusing_freed_memory(): ...`).
This times EfficientNet-Lite0 (offline weights), the bundled 224x224 `chelsea`, n = 50,
`fast=True`, with and without the guard around the calls. Each measurement is its own
process (the guard's effect outlives it), the two modes alternate round by round, and the
report gives medians and the median per-round ratio, with wall, user and system time
(system time is where the page faults of re-mapped activations show).

    python benchmarks/malloc_guard.py --rounds 4 --batch-size auto 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

WORKER = r'''
import json, resource, sys, time
import torch
import smoothgrad as sg

torch.set_num_threads(int(sys.argv[3]))
mode, batch_size = sys.argv[1], sys.argv[2]
batch_size = batch_size if batch_size == "auto" else int(batch_size)
model = sg.models.load("efficientnet_lite0")
x = model.preprocess(sg.images.load(sg.images.sample_path("chelsea")))


def call():
    return sg.smooth(model, x, samples=50, fast=True, seed=0, batch_size=batch_size)


def timed():
    call()  # the fast copy and the batch-size search, as a first call pays them
    times = []
    for _ in range(2):
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        call()
        end, after = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        times.append({"wall": end - start, "user": after.ru_utime - usage.ru_utime,
                      "system": after.ru_stime - usage.ru_stime})
    return min(times, key=lambda t: t["wall"])


if mode == "guard":
    with sg.guard.reusing_freed_memory():
        result = timed()
else:
    result = timed()
print(json.dumps(result))
'''


def measure(mode: str, batch_size: str, threads: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", WORKER, mode, batch_size, str(threads)],
                          capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", nargs="+", default=["auto", "16"])
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.1f}")
    report: dict[str, Any] = {}
    for batch_size in args.batch_size:
        runs: dict[str, list[dict[str, float]]] = {"default": [], "guard": []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode].append(measure(mode, batch_size, args.threads))
        ratios = [g["wall"] / d["wall"] for d, g in zip(runs["default"], runs["guard"],
                                                         strict=True)]
        report[batch_size] = {
            mode: {key: statistics.median(r[key] for r in results)
                   for key in ("wall", "user", "system")} for mode, results in runs.items()}
        report[batch_size]["guard/default wall, median of rounds"] = statistics.median(ratios)
        print(f"batch_size={batch_size}: {json.dumps(report[batch_size])}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
