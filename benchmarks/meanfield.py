"""Mean-field SmoothGrad against Monte Carlo: error versus compute, bias floor, faithfulness.

For each model (EfficientNet-Lite0 with its ImageNet weights; a small ReLU ResNet built
from `RESNET`, random Kaiming weights with BatchNorm statistics calibrated on augmented
crops of the two photos) and each bundled photo, at σ = 15 % of the input range:

- a Monte-Carlo reference of `--reference` samples (seed 1000, recorded in two halves so
  its own error can be estimated and removed: error² − reference error²);
- Monte Carlo (seed 0) and antithetic Monte Carlo (seed 0), recorded sample by sample up
  to `--mc` samples: errors at checkpoints;
- mean-field (`smooth(..., estimator=MeanField(gates=...))`) with Gaussian gates at K = 16, 64, 256,
  1024 and empirical gates at K = 64, 256, with wall time per call;
- the same for input × gradient (Monte Carlo: mean of (x+ε)·∇f(x+ε); mean-field: x times
  the mean-field gradient);
- deletion/insertion AUC of the mean-field maps beside Monte-Carlo maps of equal compute;
- at σ = 5 % and 30 %: a `--reference-sigma`-sample reference and mean-field at K = 64, 256.

Errors are relative L2 distances to the reference, of the raw map (C, H, W) and of the map
as shown (`viz.process`: |·| summed over channels, clipped at the 99th percentile).

    OMP_NUM_THREADS=1 python benchmarks/meanfield.py   # 6-9 CPU-minutes per model and photo
    python benchmarks/meanfield.py --report                       # tables and figure from JSON

Writes benchmarks/results/meanfield*.json (one file per --out) and
docs/evaluation/meanfield.png; the report reads every benchmarks/results/meanfield*.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad import images, metrics, models, viz
from smoothgrad.methods.registry import BY_NAME
from smoothgrad.targets import Resolved as Target

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "meanfield.json"
FIGURE = ROOT / "docs" / "evaluation" / "meanfield.png"
PHOTOS = ("chelsea", "coffee")
CHECKPOINTS = (5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 300, 400)
RESNET = {"stem": 32, "widths": (32, 64, 128, 256), "blocks": (1, 1, 1, 1), "classes": 1000}
GROUPS = 4  # the mean-field estimator's default jackknife groups


class Block(nn.Module):
    """A basic residual block; its one ReLU module is reused (as in torchvision)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.short = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.short(x))  # functional form too


def resnet(config: dict[str, Any], seed: int = 0) -> nn.Module:
    """A ReLU ResNet from `config`: a stride-2 stem (no max pooling), stages of blocks."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, config["stem"], 3, 2, 1, bias=False),
                               nn.BatchNorm2d(config["stem"]), nn.ReLU()]
    c_in = config["stem"]
    for width, blocks in zip(config["widths"], config["blocks"], strict=True):
        for b in range(blocks):
            layers.append(Block(c_in, width, 2 if b == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, config["classes"])]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def calibrate(model: nn.Module, photos: list[Tensor], seed: int = 0) -> None:
    """BatchNorm running statistics from 64 random crops/flips of the photos (no training)."""
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(64):
        x = photos[i % len(photos)]
        size = int(torch.randint(112, 225, (1,), generator=g))
        top, left = (int(torch.randint(0, 225 - size, (1,), generator=g)) for _ in range(2))
        crop = nn.functional.interpolate(x[:, :, top:top + size, left:left + size],
                                         size=(224, 224), mode="bilinear")
        crops.append(crop.flip(-1) if i % 2 else crop)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for chunk in torch.cat(crops).split(16):
            model(chunk)
    model.eval()


class Recorder:
    """Gradient base method that also keeps running sums of ∇f and (x+ε)·∇f at checkpoints."""

    def __init__(self, checkpoints: list[int]) -> None:
        self.checkpoints = set(checkpoints)
        self.count = 0
        self.sums: dict[str, list[Tensor]] = {}
        self.snapshots: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}

    def __call__(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        grads = BY_NAME["gradient"](model, x, target)
        for row, grad in zip(x.detach().double(), grads.detach().double(), strict=True):
            for name, value in (("gradient", grad), ("input_x_gradient", row * grad)):
                if name not in self.sums:
                    self.sums[name] = [torch.zeros_like(value), torch.zeros_like(value)]
                self.sums[name][0] += value
                self.sums[name][1] += value.square()
            self.count += 1
            if self.count in self.checkpoints:
                self.snapshots[self.count] = {k: (s1.clone(), s2.clone())
                                              for k, (s1, s2) in self.sums.items()}
        return grads


def record(model: nn.Module, x: Tensor, samples: int, seed: int, sigma: float,
           antithetic: bool = False, extra: tuple[int, ...] = ()) -> tuple[Recorder, float]:
    recorder = Recorder([c for c in (*CHECKPOINTS, *extra) if c <= samples] + [samples])
    started = time.perf_counter()
    sg.smooth(model, x, method=recorder, samples=samples, seed=seed, noise=sigma,
              antithetic=antithetic, batch_size=8)
    return recorder, time.perf_counter() - started


def shown(m: Tensor) -> Tensor:
    return torch.from_numpy(np.asarray(viz.process(m.float()), dtype=np.float64))


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


class Reference:
    """A Monte-Carlo reference from a recorder, with its own squared relative error."""

    def __init__(self, recorder: Recorder, name: str) -> None:
        n = recorder.count
        half = n // 2
        s1, s2 = recorder.sums[name]
        h1 = recorder.snapshots[half][name][0]
        self.map = s1 / n
        a, b = h1 / half, (s1 - h1) / (n - half)
        # E‖A − B‖² = 4V/n for halves of n/2 samples; the reference's own error² is V/n.
        self.shown = shown(self.map)
        self.error2 = {"raw": float((a - b).norm() ** 2 / self.map.norm() ** 2) / 4,
                       "shown": float((shown(a) - shown(b)).norm() ** 2
                                      / self.shown.norm() ** 2) / 4}
        self.variance = float(((s2 / n - self.map.square()) * n / (n - 1)).sum())  # Σ V_i
        self.samples = n

    def error(self, m: Tensor) -> dict[str, float]:
        """Errors of m (raw and shown), measured and with the reference's error removed."""
        out: dict[str, float] = {}
        for kind, value in (("raw", rel(m, self.map)), ("shown", rel(shown(m), self.shown))):
            out[kind] = value
            out[kind + "_corrected"] = math.sqrt(max(0.0, value**2 - self.error2[kind]))
        return out

    def mc_samples_for(self, error: float) -> float:
        """Monte-Carlo samples whose expected raw error is `error` (V / (n ‖μ‖²) = error²)."""
        return self.variance / (float(self.map.norm() ** 2) * max(error, 1e-9) ** 2)


def mc_curve(recorder: Recorder, reference: Reference, name: str) -> list[dict[str, Any]]:
    return [{"n": n, **reference.error(snap[name][0] / n)}
            for n, snap in sorted(recorder.snapshots.items())]


def run_meanfield(model: nn.Module, x: Tensor, sigma: float, ks: tuple[int, ...], gates: str,
                  references: dict[str, Reference], keep: dict[int, Tensor] | None = None,
                  ) -> list[dict[str, Any]]:
    rows = []
    for k in ks:
        started = time.perf_counter()
        result = sg.smooth(model, x, estimator=sg.MeanField(gates=gates),  # type: ignore[arg-type]
                           samples=k, noise=sigma, seed=0, batch_size=16)
        seconds = time.perf_counter() - started
        grad = result.attribution[0]
        if keep is not None:
            keep[k] = grad
        for name, m, se in (("gradient", grad, result.stderr[0]),
                            ("input_x_gradient", x[0] * grad, x[0].abs() * result.stderr[0])):
            ref = references[name]
            err = ref.error(m)
            own = float(se.double().norm() / ref.map.norm())  # jackknife, relative
            err["bias"] = math.sqrt(max(0.0, err["raw"] ** 2 - ref.error2["raw"] - own**2))
            rows.append({"method": name, "gates": gates, "k": k, "seconds": seconds,
                         "stderr_relative": own, **err,
                         "mc_equivalent_n": ref.mc_samples_for(err["raw_corrected"])})
    return rows


def faithfulness(model: nn.Module, x: Tensor, maps: dict[str, Tensor]) -> dict[str, Any]:
    out = {}
    for label, m in maps.items():
        out[label] = {
            "deletion": float(metrics.deletion_auc(model, x, m[None].float(), reduce="abs")[0]),
            "insertion": float(metrics.insertion_auc(model, x, m[None].float(),
                                                     reduce="abs")[0])}
    return out


def timing(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """MC n=50 (smooth, default batch) and mean-field K=64, interleaved, best of 2; and one
    forward-only pass against one forward + input-backward pass of 16 copies."""
    batch = x.repeat(16, *([1] * (x.dim() - 1)))
    target = torch.zeros(16, dtype=torch.long)

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    calls = {"mc50": lambda: sg.smooth(model, x, samples=50, seed=0),
             "mf64": lambda: sg.smooth(model, x, estimator="mean_field", samples=64, seed=0,
                                       batch_size=16),
             "forward16": forward,
             "forward_backward16": lambda: BY_NAME["gradient"](model, batch, target)}
    best: dict[str, float] = {}
    for _ in range(2):
        for label, call in calls.items():
            started = time.perf_counter()
            call()
            best[label] = min(best.get(label, math.inf), time.perf_counter() - started)
    return {"seconds": best, "load": os.getloadavg()}


def study(model: nn.Module, x: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"load_start": os.getloadavg()}
    ref_rec, ref_s = record(model, x, args.reference, 1000, 0.15,
                            extra=(args.reference // 2,))
    refs = {name: Reference(ref_rec, name) for name in ("gradient", "input_x_gradient")}
    out["reference"] = {name: {"samples": r.samples, "error_raw": math.sqrt(r.error2["raw"]),
                               "error_shown": math.sqrt(r.error2["shown"])}
                        for name, r in refs.items()}
    iid, iid_s = record(model, x, args.mc, 0, 0.15)
    anti, anti_s = record(model, x, args.mc, 0, 0.15, antithetic=True)
    out["mc_seconds_per_sample"] = (ref_s + iid_s + anti_s) / (args.reference + 2 * args.mc)
    out["curves"] = {f"{sampler}/{name}": mc_curve(rec, refs[name], name)
                     for sampler, rec in (("mc", iid), ("antithetic", anti))
                     for name in ("gradient", "input_x_gradient")}
    kept: dict[int, Tensor] = {}
    out["meanfield"] = (run_meanfield(model, x, 0.15, args.k, "gaussian", refs, kept)
                        + run_meanfield(model, x, 0.15, args.k_empirical, "empirical", refs))
    cost64 = next(r["seconds"] for r in out["meanfield"] if r["k"] == 64)
    n_equal = max(c for c in iid.snapshots if c <= max(5, cost64 / out["mc_seconds_per_sample"]))
    out["equal_compute_n"] = n_equal
    if args.faithfulness:
        out["faithfulness"] = faithfulness(model, x, {
            "mean-field K=64": kept[64], "mean-field K=256": kept[256],
            f"MC n={n_equal} (compute of K=64)": iid.snapshots[n_equal]["gradient"][0] / n_equal,
            "MC n=50": iid.snapshots[min(50, args.mc)]["gradient"][0] / min(50, args.mc),
            f"MC reference n={args.reference}": refs["gradient"].map})
    out["sigma"] = {}
    for sigma in (0.05, 0.30):
        rec, _ = record(model, x, args.reference_sigma, 1000, sigma,
                        extra=(args.reference_sigma // 2,))
        srefs = {name: Reference(rec, name) for name in ("gradient", "input_x_gradient")}
        out["sigma"][str(sigma)] = {
            "reference_error_raw": math.sqrt(srefs["gradient"].error2["raw"]),
            "meanfield": run_meanfield(model, x, sigma, (64, 256), "gaussian", srefs)}
    out["timing"] = timing(model, x)
    return out


def load_models(args: argparse.Namespace) -> dict[str, tuple[nn.Module, Any]]:
    lite = models.load("efficientnet_lite0")
    net = resnet(RESNET)
    photos = [models.imagenet_preprocess(images.load(images.sample_path(p))) for p in PHOTOS]
    calibrate(net, photos)
    return {"efficientnet_lite0": (lite, lite.preprocess),
            "resnet": (net, models.imagenet_preprocess)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=400)
    parser.add_argument("--reference-sigma", type=int, default=300)
    parser.add_argument("--mc", type=int, default=150)
    parser.add_argument("--k", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--k-empirical", type=int, nargs="+", default=[64])
    parser.add_argument("--faithfulness", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet"])
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(load_results(sorted(args.out.parent.glob("meanfield*.json"))))
        return
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, 1 torch thread, "
        f"torch {torch.__version__}, shared with other jobs", "resnet": RESNET,
        "reference": args.reference, "reference_sigma": args.reference_sigma, "mc": args.mc,
        "resnet_weights": "random Kaiming (seed 0), BatchNorm statistics from 64 crops of "
                          "the two photos", "groups": GROUPS, "runs": {}}
    started = time.perf_counter()
    for name, (model, preprocess) in load_models(args).items():
        if name not in args.models:
            continue
        for photo in args.photos:
            x = preprocess(images.load(images.sample_path(photo)))
            results["runs"][f"{name}/{photo}"] = study(model, x, args)
            results["seconds"] = round(time.perf_counter() - started)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
            print(f"{name} {photo}: done at {time.perf_counter() - started:.0f} s", flush=True)


def cost(run: dict[str, Any], k: int, groups: int = GROUPS) -> tuple[float, float]:
    """Mean-field K in Monte-Carlo-sample equivalents: by pass counts (K forward-only copies,
    a survey and a gated forward, 1 + groups input-backwards; forward-only costs r of a
    forward + input-backward, measured) and by measured seconds."""
    t = run["timing"]["seconds"]
    r = t["forward16"] / t["forward_backward16"]
    passes = (k + 2) * r + (1 + groups) * (1 - r)
    seconds = next(row["seconds"] for row in run["meanfield"] if row["k"] == k)
    return passes, seconds / run["mc_seconds_per_sample"]


def load_results(paths: list[Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {"runs": {}}
    for path in paths:
        results = json.loads(path.read_text())
        merged["runs"].update(results.pop("runs"))
        merged.setdefault("meta", []).append(results)
    return merged


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if value < 1000 else f"{value:,.0f}"


def equivalent(n: float) -> str:
    return "> 100,000" if n > 1e5 else fmt(n, 0)


def report(results: dict[str, Any]) -> None:
    """Print the markdown tables of EVALUATION.md's mean-field section; draw the figure."""
    runs = results["runs"]
    print("**Table M1.** Gradient, σ = 15 %: error against the reference (its own error removed)"
          " and compute in Monte-Carlo-sample equivalents (pass counts | measured seconds).\n")
    print("| model / photo | estimator | compute: passes | compute: seconds | error raw "
          "| error shown | MC samples for that raw error |")
    print("|---|---|---|---|---|---|---|")
    for key, run in runs.items():
        curve = {row["n"]: row for row in run["curves"]["mc/gradient"]}
        anti = {row["n"]: row for row in run["curves"]["antithetic/gradient"]}
        for n in (10, 50, 150):
            if n in curve:
                print(f"| {key} | Monte Carlo n = {n} | {n} | {n} | "
                      f"{fmt(curve[n]['raw_corrected'])} | {fmt(curve[n]['shown_corrected'])} "
                      f"| {n} |")
        for n in (50, 150):
            if n in anti:
                print(f"| {key} | antithetic n = {n} | {n} | {n} | "
                      f"{fmt(anti[n]['raw_corrected'])} | {fmt(anti[n]['shown_corrected'])} "
                      "| |")
        for row in run["meanfield"]:
            if row["method"] != "gradient":
                continue
            passes, secs = cost(run, row["k"])
            print(f"| {key} | mean-field, {row['gates']} gates, K = {row['k']:,} | "
                  f"{fmt(passes, 0)} | {fmt(secs, 0)} | {fmt(row['raw_corrected'])} | "
                  f"{fmt(row['shown_corrected'])} | {equivalent(row['mc_equivalent_n'])} |")
    print("\n**Table M2.** Bias floor: mean-field error with the reference's and its own "
          "(jackknife) sampling error removed, by σ; Gaussian gates.\n")
    print("| model / photo | σ | reference samples (error) | K = 64 error | K = 256 error "
          "| K = 256 bias | K = 1,024 bias |")
    print("|---|---|---|---|---|---|---|")
    for key, run in runs.items():
        rows = {0.15: (run["reference"]["gradient"], run["meanfield"])}
        for sigma, entry in run["sigma"].items():
            rows[float(sigma)] = ({"samples": None, "error_raw": entry["reference_error_raw"]},
                                  entry["meanfield"])
        for sigma in sorted(rows):
            ref, mf = rows[sigma]
            by_k = {r["k"]: r for r in mf if r["method"] == "gradient" and r["gates"] == "gaussian"}
            big = fmt(by_k[1024]["bias"]) if 1024 in by_k else "—"
            samples = ref["samples"] or results["meta"][0].get("reference_sigma", 300)
            print(f"| {key} | {sigma:.0%} | {samples} ({fmt(ref['error_raw'])}) | "
                  f"{fmt(by_k[64]['raw_corrected'])} | {fmt(by_k[256]['raw_corrected'])} | "
                  f"{fmt(by_k[256]['bias'])} | {big} |")
    print("\n**Table M3.** Gradient × input, σ = 15 %: Monte Carlo averages (x+ε)·∇f(x+ε); "
          "mean-field is x times its gradient map.\n")
    print("| model / photo | MC n = 50 | MC n = 150 | mean-field K = 64 | K = 256 | K = 1,024 "
          "| K = 1,024 bias |")
    print("|---|---|---|---|---|---|---|")
    for key, run in runs.items():
        curve = {row["n"]: row for row in run["curves"]["mc/input_x_gradient"]}
        by_k = {r["k"]: r for r in run["meanfield"]
                if r["method"] == "input_x_gradient" and r["gates"] == "gaussian"}
        cells = [fmt(by_k[k][field]) if k in by_k else "—"
                 for k, field in ((64, "raw_corrected"), (256, "raw_corrected"),
                                  (1024, "raw_corrected"), (1024, "bias"))]
        print(f"| {key} | {fmt(curve.get(50, curve[max(curve)])['raw_corrected'])} | "
              f"{fmt(curve[max(curve)]['raw_corrected'])} | {' | '.join(cells)} |")
    print("\n**Table M4.** Deletion (lower is better) and insertion (higher is better) AUC of "
          "gradient maps (|·| summed over channels).\n")
    print("| model / photo | map | deletion | insertion |")
    print("|---|---|---|---|")
    for key, run in runs.items():
        for label, scores in run.get("faithfulness", {}).items():
            print(f"| {key} | {label} | {scores['deletion']:.3f} | {scores['insertion']:.3f} |")
    print("\n**Table M5.** Seconds (best of 2, interleaved, 1 torch thread, shared box: load "
          "average in the last column).\n")
    print("| model / photo | MC n = 50 (`smooth`) | mean-field K = 64 | forward-only / "
          "forward + input-backward per copy | load (1, 5, 15 min) |")
    print("|---|---|---|---|---|")
    for key, run in runs.items():
        t = run["timing"]["seconds"]
        load = ", ".join(f"{v:.1f}" for v in run["timing"]["load"])
        print(f"| {key} | {t['mc50']:.2f} | {t['mf64']:.2f} | "
              f"{t['forward16'] / t['forward_backward16']:.2f} | {load} |")
    figure(runs)


def figure(runs: dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), sharey=True,
                             squeeze=False)
    for ax, (key, run) in zip(axes[0], runs.items(), strict=True):
        for sampler, color in (("mc", "C0"), ("antithetic", "C1")):
            rows = run["curves"][f"{sampler}/gradient"]
            for kind, style in (("raw", "-"), ("shown", ":")):
                ax.plot([r["n"] for r in rows], [r[f"{kind}_corrected"] for r in rows], style,
                        color=color, label=f"{sampler} ({kind})")
        for gates, color in (("gaussian", "C2"), ("empirical", "C3")):
            rows = [r for r in run["meanfield"] if r["method"] == "gradient"
                    and r["gates"] == gates]
            xs = [cost(run, r["k"])[1] for r in rows]  # measured seconds, the honest axis
            for kind, style in (("raw", "o-"), ("shown", "o:")):
                ax.plot(xs, [r[f"{kind}_corrected"] for r in rows], style, color=color,
                        label=f"mean-field {gates} ({kind})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("compute (Monte-Carlo samples of the same wall time)")
    axes[0][0].set_ylabel("relative L2 error vs reference")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    print(f"\n![error versus compute]({FIGURE.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
