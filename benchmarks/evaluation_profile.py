"""Seconds per metric and peak memory of `smoothgrad.evaluation.evaluate` on one photo.

    OMP_NUM_THREADS=2 python benchmarks/evaluation_profile.py --metrics all
    OMP_NUM_THREADS=2 python benchmarks/evaluation_profile.py --metrics default --json out.json

Runs `evaluate` (EfficientNet-Lite0, the bundled chelsea photo, 2 methods x {none, mean,
square}, the library's defaults unless given) once under cProfile and reports the cumulative
seconds of each metric's function ("maps" is the rest: the smoothing and the plain maps), the
wall time, the peak resident memory of the process (`ru_maxrss`) and the load average. The
function names cover the package before and after issue 15, so the same script profiles both
(put the tree to measure first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import sys
import time
from datetime import datetime, timezone
from typing import Any

import torch

from smoothgrad import evaluation, images, models

# metric -> alternatives (before and after issue 15), each a list of functions whose cumulative
# seconds add up to the metric's; the first alternative found wins
FUNCTIONS = {
    "total_variation": [["total_variation"]],
    "gini": [["gini"]],
    "deletion+insertion": [["curves"], ["deletion_auc", "insertion_auc"]],
    "infidelity": [["infidelity_drops", "infidelity_score"], ["infidelity"]],
    "sensitivity": [["Run.sensitivity"], ["sensitivity_max", "sensitivity_floor"]],
    "randomization": [["Run.randomization"], ["randomization"]],
}


def cumulative(stats: pstats.Stats, alternatives: list[list[str]], where: str) -> float | None:
    """Seconds of the first alternative whose functions (in files under `where`) ran."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def seconds(name: str) -> float | None:
        func = name.split(".")[-1]
        found = [value[3] for (path, _, f), value in raw.items()
                 if f == func and where in path and ("." not in name or "run.py" in path)]
        return float(max(found)) if found else None

    for names in alternatives:
        times = [seconds(name) for name in names]
        if any(t is not None for t in times):
            return sum(t for t in times if t is not None)
    return None


def aggregate_saving(args: argparse.Namespace) -> None:
    """Seconds for mean, square and var: three `smooth` calls against one call for all three."""
    from smoothgrad import smooth

    model = models.load("efficientnet_lite0")
    x = model.preprocess(images.load(images.sample_path(args.image)))
    samples = args.samples or 50
    aggregates = ("mean", "square", "var")
    times: dict[str, list[float]] = {"separate": [], "one run": []}
    for _ in range(2):  # alternate, keep the best of two
        started = time.perf_counter()
        separate = [smooth(model, x, samples=samples, aggregate=a) for a in aggregates]
        times["separate"].append(time.perf_counter() - started)
        started = time.perf_counter()
        joint = smooth(model, x, samples=samples, aggregate=aggregates)  # type: ignore[arg-type]
        times["one run"].append(time.perf_counter() - started)
    same = all(torch.allclose(r.attribution, joint.select(a).attribution)  # type: ignore[attr-defined]
               for r, a in zip(separate, aggregates, strict=True))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "samples": samples, "load": os.getloadavg(), "same_maps": same,
              **{key: round(min(value), 2) for key, value in times.items()}}
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as file:
            file.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="all", help="all, default or a comma list")
    parser.add_argument("--methods", default="gradient,guided_backprop")
    parser.add_argument("--aggregates", default="mean,square")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--json", default=None, help="append the result as a JSON line here")
    parser.add_argument("--aggregate-saving", action="store_true",
                        help="instead: time smooth for mean, square, var as three calls and as "
                             "one call with a tuple of aggregates (needs the new engine)")
    args = parser.parse_args()
    if args.aggregate_saving:
        aggregate_saving(args)
        return
    metrics = (list(evaluation.METRICS) if args.metrics == "all"
               else list(evaluation.DEFAULT_METRICS) if args.metrics == "default"
               else args.metrics.split(","))
    extra: dict[str, Any] = {}
    if args.samples is not None:
        extra["samples"] = args.samples
    if args.steps is not None:
        extra["steps"] = args.steps
    model = models.load("efficientnet_lite0")
    x = model.preprocess(images.load(images.sample_path(args.image)))
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    rows = evaluation.evaluate(model, x, methods=args.methods.split(","),
                               aggregates=args.aggregates.split(","), metrics=metrics, **extra)
    profile.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profile)
    where = os.sep + "smoothgrad" + os.sep
    seconds = {metric: cumulative(stats, names, where) for metric, names in FUNCTIONS.items()}
    spent = {k: v for k, v in seconds.items() if v is not None and v > 0}
    spent["maps"] = wall - sum(spent.values())
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "load_before": load_before, "source": evaluation.__file__,
        "metrics": metrics, "methods": args.methods, "aggregates": args.aggregates,
        "options": extra, "rows": len(rows), "wall_s": round(wall, 1),
        "seconds": {k: round(v, 1) for k, v in spent.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_model_mb": round(before), "load_after": os.getloadavg(),
    }
    print(json.dumps(result, ensure_ascii=False), flush=True)
    if args.json:
        with open(args.json, "a") as file:
            file.write(json.dumps(result, ensure_ascii=False) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
