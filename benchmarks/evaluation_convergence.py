"""Convergence of SmoothGrad on the default model: error against a 2,000-sample reference.

For each bundled photo and base method, five independent runs of 500 i.i.d. samples (seeds
0-4) and three antithetic runs of 300 samples (seeds 0-2) are recorded sample by sample, so
the n-sample map for every n is a prefix of one run. The reference for seed s is the mean of
the four other i.i.d. runs (4 x 500 = 2,000 samples that share no noise with seed s; an
antithetic run of seed s shares its even draws with i.i.d. seed s, so it gets the same
reference). For each prefix it stores the relative L2 error of the raw map (C, H, W) and of
the processed map (|.| summed over channels, what `viz.process` and the deletion metrics
rank), for SmoothGrad (mean), SmoothGrad² (square) and VarGrad (var), and the engine's own
estimate ||stderr|| / ||mean|| for the mean.

    OMP_NUM_THREADS=1 python benchmarks/evaluation_convergence.py   # ~3,400 passes per pair

Writes docs/evaluation/convergence.json; `benchmarks/evaluation.py report` turns it into
tables and figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad import images, models
from smoothgrad.methods.registry import BY_NAME
from smoothgrad.targets import Target

OUT = Path(__file__).resolve().parents[1] / "docs" / "evaluation" / "convergence.json"
IMAGES = ("chelsea", "coffee")
METHODS = ("gradient", "guided_backprop")
AGGREGATES = ("mean", "square", "var")


class Recorder:
    """A base method that also keeps running sums of its maps, snapshotted at checkpoints."""

    def __init__(self, method: str, checkpoints: list[int]) -> None:
        self.method = BY_NAME[method]
        self.checkpoints = set(checkpoints)
        self.count = 0
        self.s1: Tensor | None = None
        self.s2: Tensor | None = None
        self.snapshots: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        maps = self.method(model, x, target)
        for row in maps.detach().double():
            self.s1 = row.clone() if self.s1 is None else self.s1 + row
            self.s2 = row.square() if self.s2 is None else self.s2 + row.square()
            self.count += 1
            if self.count in self.checkpoints:
                self.snapshots[self.count] = (self.s1.float(), self.s2.float())
        return maps


def aggregate(s1: Tensor, s2: Tensor, n: int, name: str) -> Tensor:
    """SmoothGrad (mean), SmoothGrad² (mean of squares) or VarGrad (unbiased variance)."""
    s1, s2 = s1.double(), s2.double()
    if name == "mean":
        return s1 / n
    if name == "square":
        return s2 / n
    return (s2 - s1.square() / n) / (n - 1)


def processed(m: Tensor) -> Tensor:
    return m.abs().sum(dim=0)


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def record(model: nn.Module, x: Tensor, method: str, seed: int, samples: int,
           antithetic: bool, checkpoints: list[int]) -> tuple[Recorder, sg.SmoothResult]:
    recorder = Recorder(method, checkpoints)
    result = sg.smooth(model, x, method=recorder, samples=samples, seed=seed,
                       antithetic=antithetic, batch_size=16)
    assert recorder.s1 is not None
    check = (result.attribution[0].double() - recorder.s1 / samples).abs().max()
    assert float(check) < 1e-5, f"recorder disagrees with smooth(): {float(check)}"
    return recorder, result


def curves(recorder: Recorder, reference: dict[str, Tensor]) -> dict[str, Any]:
    """Errors at every checkpoint of one run against the reference maps."""
    out: dict[str, Any] = {"n": sorted(recorder.snapshots)}
    for name in AGGREGATES:
        raw, shown, stderr = [], [], []
        for n in out["n"]:
            s1, s2 = recorder.snapshots[n]
            m = aggregate(s1, s2, n, name)
            raw.append(rel(m, reference[name]))
            shown.append(rel(processed(m), processed(reference[name])))
            if name == "mean":
                variance = aggregate(s1, s2, n, "var").clamp(min=0)
                stderr.append(float((variance / n).sum().sqrt() / m.norm()))
        out[name] = {"raw": raw, "processed": shown}
        if stderr:
            out[name]["stderr"] = stderr
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iid-seeds", type=int, default=5)
    parser.add_argument("--iid-samples", type=int, default=500)
    parser.add_argument("--antithetic-seeds", type=int, default=3)
    parser.add_argument("--antithetic-samples", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = models.load("efficientnet_lite0")
    checkpoints = sorted({2, 4, 6, 8, *range(10, args.iid_samples + 1, 10)})
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": date.today().isoformat(), "machine": f"{platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} torch thread, torch {torch.__version__}",
        "noise": 0.15, "iid_seeds": args.iid_seeds, "iid_samples": args.iid_samples,
        "antithetic_seeds": args.antithetic_seeds,
        "antithetic_samples": args.antithetic_samples,
        "reference_samples": (args.iid_seeds - 1) * args.iid_samples, "runs": {}}
    for image in IMAGES:
        x = model.preprocess(images.load(images.sample_path(image)))
        for method in METHODS:
            runs = [record(model, x, method, s, args.iid_samples, False, checkpoints)
                    for s in range(args.iid_seeds)]
            anti = [record(model, x, method, s, args.antithetic_samples, True,
                           [c for c in checkpoints if c <= args.antithetic_samples])
                    for s in range(args.antithetic_seeds)]
            total_s1 = sum(r.s1 for r, _ in runs if r.s1 is not None)
            total_s2 = sum(r.s2 for r, _ in runs if r.s2 is not None)
            entry: dict[str, Any] = {"iid": [], "antithetic": []}
            for sampler, group in (("iid", runs), ("antithetic", anti)):
                for seed, (recorder, result) in enumerate(group):
                    own_s1, own_s2 = runs[seed][0].s1, runs[seed][0].s2
                    assert own_s1 is not None and own_s2 is not None
                    n_ref = results["reference_samples"]
                    reference = {name: aggregate(total_s1 - own_s1, total_s2 - own_s2, n_ref,
                                                 name) for name in AGGREGATES}
                    run = curves(recorder, reference)
                    run["seed"] = seed
                    run["engine_relative_error"] = float(result.relative_error()[0])
                    run["flip_rate"] = float(result.flip_rate[0]) if result.flip_rate is not None \
                        else None
                    entry[sampler].append(run)
            results["runs"][f"{image}/{method}"] = entry
            print(f"{image} {method}: done at {time.perf_counter() - started:.0f} s", flush=True)
    results["seconds"] = round(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
