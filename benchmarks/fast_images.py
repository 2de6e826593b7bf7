"""fast=True against the default on EfficientNet-Lite0 (224×224, n = 50), interleaved.

The fast path now checks bfloat16 where the CPU has it natively; on this model the check
refuses it (its maps correlate ~0.92 with float32's) and remembers the refusal, so later
calls must cost what the float32 fast path cost before. The script uses only the public
API, so the same file measures an older checkout too (run it from each tree and compare the
ratio fast / default, which other work on the machine cancels out of):

    python benchmarks/fast_images.py --rounds 3
    PYTHONPATH=OLD_CHECKOUT/src python benchmarks/fast_images.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import torch

import smoothgrad as sg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {sg.__file__}")
    print(f"# uptime: {load}")
    model = sg.models.load("efficientnet_lite0")
    x = model.preprocess(sg.images.load(sg.images.sample_path("chelsea")))
    times: dict[bool, list[float]] = {False: [], True: []}
    for fast in (False, True):  # warm-up: copies, the check, the batch-size search
        for _ in range(2):
            result = sg.smooth(model, x, samples=args.samples, fast=fast)
        print(f"# fast={fast}: precision {getattr(result, 'precision', None)}", flush=True)
    for _ in range(args.rounds):
        for fast in (False, True):
            started = time.perf_counter()
            sg.smooth(model, x, samples=args.samples, fast=fast)
            times[fast].append(time.perf_counter() - started)
        print(f"# round: default {times[False][-1]:.2f} s, fast {times[True][-1]:.2f} s",
              flush=True)
    ratio = statistics.median(a / b for a, b in zip(times[False], times[True], strict=True))
    print(f"default {statistics.median(times[False]):.2f} s, fast "
          f"{statistics.median(times[True]):.2f} s: default / fast = {ratio:.2f}")
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# uptime after: {after}")


if __name__ == "__main__":
    main()
