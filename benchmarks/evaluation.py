"""The numbers, tables and figures of EVALUATION.md, on the bundled photos and the default model.

    OMP_NUM_THREADS=1 python benchmarks/evaluation_convergence.py    # convergence.json (slow)
    OMP_NUM_THREADS=1 python benchmarks/evaluation.py scores randomization tv sweep
    python benchmarks/evaluation.py report                          # tables and figures

`scores` runs `smoothgrad.evaluation.evaluate` (the `smoothgrad evaluate` table), `randomization`
the cascading randomisation check by layer groups, `sweep` the `smoothgrad sweep` command; each
writes docs/evaluation/<part>.json (and sweep its figures). `report` reads those files and
rewrites the generated blocks of EVALUATION.md (between `<!-- begin:NAME -->` and
`<!-- end:NAME -->`) and the summary figures, so the prose and the numbers stay apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch

from smoothgrad import evaluation, images, models, viz

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "evaluation"
REPORT = ROOT / "EVALUATION.md"
IMAGES = ("chelsea", "coffee")
METHODS = ("gradient", "guided_backprop")
AGGREGATES = ("mean", "square", "var")
SAMPLES, NOISE, STEPS = 50, 0.15, 50
RANDOMIZATION_SAMPLES = 10
TV_SAMPLES = (50, 200)
TITLE = {"gradient": "Gradient", "guided_backprop": "Guided BP", "none": "plain",
         "mean": "SG", "square": "SG²", "var": "VarGrad"}
LITE0_GROUPS = {  # output first; stages of EfficientNet-Lite0 (blocks 0-15)
    "classifier": ["_fc"],
    "head conv": ["_conv_head", "_bn1"],
    "block 15": ["_blocks.15"],
    "blocks 11-14": [f"_blocks.{i}" for i in range(11, 15)],
    "blocks 8-10": [f"_blocks.{i}" for i in range(8, 11)],
    "blocks 5-7": [f"_blocks.{i}" for i in range(5, 8)],
    "blocks 1-4": [f"_blocks.{i}" for i in range(1, 5)],
    "block 0 + stem": ["_blocks.0", "_conv_stem", "_bn0"],
}


def machine() -> str:
    return (f"{platform.machine()} CPU ({torch.get_num_threads()} torch thread, shared 2-core "
            f"box), torch {torch.__version__}, Python {platform.python_version()}")


def stamp(seconds: float) -> dict[str, Any]:
    return {"date": date.today().isoformat(), "machine": machine(), "seconds": round(seconds)}


def photo(model: Any, name: str) -> torch.Tensor:
    x: torch.Tensor = model.preprocess(images.load(images.sample_path(name)))
    return x


# ---------------------------------------------------------------------------------- parts


def part_scores() -> dict[str, Any]:
    """`evaluate` on both photos: plain, SG, SG², VarGrad for the gradient and guided BP."""
    model = models.load("efficientnet_lite0")
    started = time.perf_counter()
    rows = []
    for name in IMAGES:
        rows += evaluation.evaluate(model, photo(model, name), methods=METHODS,
                                    aggregates=AGGREGATES, names=[name], steps=STEPS,
                                    samples=SAMPLES, noise=NOISE, seed=0, log=print)
    return {**stamp(time.perf_counter() - started), "samples": SAMPLES, "noise": NOISE,
            "steps": STEPS, "rows": rows}


def part_randomization() -> dict[str, Any]:
    """Cascading randomisation by layer groups for plain and smoothed gradient and guided BP."""
    model = models.load("efficientnet_lite0")
    started = time.perf_counter()
    out: dict[str, Any] = {"groups": LITE0_GROUPS, "samples": RANDOMIZATION_SAMPLES,
                           "noise": NOISE, "curves": {}}
    for name in IMAGES:
        x = photo(model, name)
        for method in METHODS:
            for aggregate in (None, "mean"):
                explain = evaluation.explainer(method, aggregate, samples=RANDOMIZATION_SAMPLES,
                                               noise=NOISE, seed=0)
                rows = evaluation.randomization(explain, model, x, groups=LITE0_GROUPS)
                key = f"{name}/{method}/{aggregate or 'none'}"
                out["curves"][key] = [{"layer": r.layer, "spearman_abs": float(r.spearman_abs[0]),
                                       "spearman_signed": float(r.spearman_signed[0]),
                                       "ssim": float(r.ssim[0])} for r in rows]
                print(key, f"{time.perf_counter() - started:.0f} s", flush=True)
    return {**stamp(time.perf_counter() - started), **out}


def part_tv() -> dict[str, Any]:
    """Total variation of plain and SG maps at two sample counts, as scored and as shown."""
    from smoothgrad import metrics, smooth

    model = models.load("efficientnet_lite0")
    started = time.perf_counter()
    rows = []
    for name in IMAGES:
        x = photo(model, name)
        for method in METHODS:
            for n in (1, *TV_SAMPLES):
                m = smooth(model, x, method=method, samples=n, noise=0.0 if n == 1 else NOISE,
                           seed=0).attribution
                shown = torch.from_numpy(viz.process(m[0], percentile=99, skew=1.0))[None]
                rows.append({"image": name, "method": method, "samples": n,
                             "tv": float(metrics.total_variation(m)[0]),
                             "tv_shown": float(metrics.total_variation(shown)[0])})
                print(rows[-1], flush=True)
    return {**stamp(time.perf_counter() - started), "rows": rows}


def part_sweep() -> dict[str, Any]:
    """The `smoothgrad sweep` command on chelsea for both methods; figures go to docs/."""
    started = time.perf_counter()
    for method in METHODS:
        subprocess.run([sys.executable, "-m", "smoothgrad", "sweep",
                        str(images.sample_path("chelsea")), "--method", method,
                        "--reference-samples", "300", "--out", str(DOCS), "--json",
                        str(DOCS / f"sweep_{method}.json")], check=True)
    return stamp(time.perf_counter() - started)


# --------------------------------------------------------------------------------- report


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DOCS / f"{name}.json").read_text())
    return data


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_sd(values: Sequence[float], fmt: str = ".3f") -> str:
    if len(values) < 2:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def first_below(ns: Sequence[int], errors: Sequence[float], level: float) -> int | None:
    return next((n for n, e in zip(ns, errors, strict=True) if e <= level), None)


def debiased(estimate: float) -> float:
    """‖stderr‖/‖μ‖ from ‖stderr‖/‖mean‖: E‖mean‖² = ‖μ‖² + ‖stderr‖²."""
    return estimate / max(1 - estimate**2, 1e-12) ** 0.5


def rounded(n: float) -> str:
    return f"{float(f'{n:.2g}'):,.0f}"


def report_convergence(blocks: dict[str, str]) -> None:
    """Errors against the reference. With the reference itself an N-sample mean, the expected
    squared error of an n-sample map is V (1/n + 1/N) for i.i.d. samples; V, the variance per
    sample, gives the n at which V/n = level² (the reference's part left out)."""
    data = load("convergence")
    runs, level, ref_n = data["runs"], 0.1, data["reference_samples"]

    def per_sample_variance(run: dict[str, Any], iid: dict[str, Any], aggregate: str,
                            kind: str, i: int) -> float:
        n, e = run["n"][i], run[aggregate][kind][i]
        e_iid = iid[aggregate][kind][iid["n"].index(n)]
        v_iid = e_iid**2 / (1 / n + 1 / ref_n)
        return v_iid if run is iid else (e**2 - v_iid / ref_n) * n

    rows, efficiency = [], []
    for method in METHODS:
        for aggregate in AGGREGATES:
            for kind in ("raw", "processed"):
                row: list[Any] = [TITLE[method], TITLE[aggregate], kind]
                ratios: list[float] = []
                for sampler in ("iid", "antithetic"):
                    at50, needed, extrapolated = [], [], []
                    for image in IMAGES:
                        group = runs[f"{image}/{method}"]
                        for run in group[sampler]:
                            iid = group["iid"][run["seed"]]
                            at50.append(run[aggregate][kind][run["n"].index(SAMPLES)])
                            needed.append(first_below(run["n"], run[aggregate][kind], level))
                            extrapolated.append(per_sample_variance(
                                run, iid, aggregate, kind, len(run["n"]) - 1) / level**2)
                            if sampler == "antithetic":
                                ratios.extend(
                                    per_sample_variance(iid, iid, aggregate, kind, i)
                                    / per_sample_variance(run, iid, aggregate, kind, i)
                                    for i in map(run["n"].index, (50, 100, 200, 300)))
                    reached = [n for n in needed if n is not None]
                    row.append(mean_sd(at50, ".2f"))
                    row.append(f"{statistics.median(reached):.0f}" if len(reached) == len(needed)
                               else f"≈ {rounded(statistics.median(extrapolated))}")
                rows.append(row)
                efficiency.append([TITLE[method], TITLE[aggregate], kind,
                                   mean_sd(ratios, ".2f")])
    blocks["convergence"] = table(
        ["method", "map", "error", "i.i.d.: error at n=50", f"i.i.d.: n for {level}",
         "antithetic: error at n=50", f"antithetic: n for {level}"], rows)
    blocks["antithetic"] = table(["method", "map", "error",
                                  "i.i.d. / antithetic samples for equal error"], efficiency)

    rows = []
    for method in METHODS:
        for image in IMAGES:
            group = runs[f"{image}/{method}"]
            cells: list[Any] = [TITLE[method], image]
            for n in (SAMPLES, data["iid_samples"]):
                k = group["iid"][0]["n"].index(n)
                estimate = [r["mean"]["stderr"][k] for r in group["iid"]]
                measured = [r["mean"]["raw"][k] / (1 + n / ref_n) ** 0.5 for r in group["iid"]]
                cells += [mean_sd(estimate, ".2f"), mean_sd([debiased(e) for e in estimate],
                                                            ".2f"), mean_sd(measured, ".2f")]
            shown = [r["mean"]["processed"][i] / r["mean"]["raw"][i] for r in group["iid"]
                     for i in range(r["n"].index(SAMPLES), len(r["n"]))]
            anti = group["antithetic"]
            last = anti[0]["n"][-1]
            cells += [mean_sd(shown, ".2f"),
                      mean_sd([r["engine_relative_error"] for r in anti], ".2f"),
                      mean_sd([r["mean"]["raw"][-1] / (1 + last / ref_n) ** 0.5 for r in anti],
                              ".2f"),
                      mean_sd([r["flip_rate"] for r in group["iid"]], ".2f")]
            rows.append(cells)
    big = data["iid_samples"]
    blocks["stderr"] = table(
        ["method", "photo", "engine (n=50)", "debiased (n=50)", "measured (n=50)",
         f"engine (n={big})", f"debiased (n={big})", f"measured (n={big})",
         "shown / raw error", f"antithetic: engine (n={last})",
         f"antithetic: measured (n={last})", "flip rate"], rows)
    blocks["convergence-setup"] = (
        f"{data['iid_seeds']} i.i.d. runs of {data['iid_samples']} samples and "
        f"{data['antithetic_seeds']} antithetic runs of {data['antithetic_samples']} per photo "
        f"and method, σ = {data['noise']}; the reference of a run is the mean of the other "
        f"i.i.d. runs ({ref_n} samples, no shared noise); {data['seconds'] / 60:.0f} min wall "
        f"({data['date']}, {data['machine']}, shared with other jobs).")
    convergence_figures(data)


def convergence_figures(data: dict[str, Any]) -> None:
    """Mean error over seeds and photos against n, one panel per method and error kind."""
    from matplotlib.figure import Figure

    runs = data["runs"]
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False)
    colors = {"mean": "C0", "square": "C1", "var": "C2"}
    for r, method in enumerate(METHODS):
        for c, kind in enumerate(("raw", "processed")):
            ax = axes[r, c]
            for aggregate in AGGREGATES:
                for sampler, style in (("iid", "-"), ("antithetic", "--")):
                    group = [run for image in IMAGES for run in runs[f"{image}/{method}"][sampler]]
                    ns = group[0]["n"]
                    mean = [statistics.mean(run[aggregate][kind][i] for run in group)
                            for i in range(len(ns))]
                    ax.plot(ns, mean, style, color=colors[aggregate],
                            label=f"{TITLE[aggregate]} {sampler}")
            ax.axhline(0.1, color="black", linewidth=0.8, linestyle=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{TITLE[method]}: {kind} map" if kind == "raw"
                         else f"{TITLE[method]}: shown map (|·| summed over channels)")
            ax.set_xlabel("samples n")
            ax.set_ylabel(f"relative L2 vs {data['reference_samples']}-sample reference")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize="small", ncol=2)
    viz.save(fig, DOCS / "convergence", ["png"])


def report_scores(blocks: dict[str, str]) -> None:
    data = load("scores")
    keys = ["total_variation", "gini", "deletion_auc", "insertion_auc", "infidelity"]
    rows = []
    for row in data["rows"]:
        rows.append([row["image"], TITLE[row["method"]], TITLE[row["smoothing"]],
                     "–" if row["relative_error"] is None else f"{row['relative_error']:.2f}",
                     "–" if row["flip_rate"] is None else f"{row['flip_rate']:.2f}",
                     *[f"{row[k]:.4f}" if k == "total_variation" else f"{row[k]:.3g}"
                       for k in keys]])
    blocks["scores"] = table(["photo", "method", "smoothing", "‖stderr‖/‖map‖", "flip rate",
                              "TV ↓", "Gini ↑", "deletion AUC ↓", "insertion AUC ↑",
                              "infidelity ↓"], rows)
    blocks["scores-setup"] = (f"n = {data['samples']}, σ = {data['noise']}, seed 0, "
                              f"{data['steps']} deletion/insertion steps; "
                              f"{data['seconds'] / 60:.0f} min wall, {data['date']}.")


def report_tv(blocks: dict[str, str]) -> None:
    data = load("tv")
    cells: dict[tuple[str, str], list[str]] = {}
    for row in data["rows"]:
        cells.setdefault((row["image"], row["method"]), []).append(
            f"{row['tv']:.4f} / {row['tv_shown']:.4f}")
    blocks["tv"] = table(["photo", "method", "plain", *[f"SG n={n}" for n in TV_SAMPLES]],
                         [[image, TITLE[method], *values]
                          for (image, method), values in cells.items()])


def report_randomization(blocks: dict[str, str]) -> None:
    from matplotlib.figure import Figure

    data = load("randomization")
    labels = [row["layer"] for row in next(iter(data["curves"].values()))]
    rows = []
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for key, curve in data["curves"].items():
        image, method, aggregate = key.split("/")
        rows.append([image, TITLE[method], TITLE[aggregate],
                     *[f"{row['spearman_abs']:.2f}" for row in curve]])
    for ax, image in zip(axes, IMAGES, strict=True):
        for method, color in zip(METHODS, ("C0", "C3"), strict=True):
            for aggregate, style in (("none", "-"), ("mean", "--")):
                curve = data["curves"][f"{image}/{method}/{aggregate}"]
                ax.plot(range(len(curve)), [row["spearman_abs"] for row in curve], style,
                        marker="o", color=color, label=f"{TITLE[method]} {TITLE[aggregate]}")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_title(f"{image}: cascading randomisation, output → input")
        ax.set_ylabel("Spearman |map| vs original")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    viz.save(fig, DOCS / "randomization", ["png"])
    blocks["randomization"] = table(["photo", "method", "smoothing", *labels], rows)
    blocks["randomization-setup"] = (
        f"SG with n = {data['samples']}, σ = {data['noise']}, seed 0; "
        f"{data['seconds'] / 60:.0f} min wall, {data['date']}.")


def report_sweep(blocks: dict[str, str]) -> None:
    for method in METHODS:
        data = json.loads((DOCS / f"sweep_{method}.json").read_text())
        rows = []
        for row in data["rows"]:
            rows.append([row["row"], f"{row['noise']:.2f}", row["samples"],
                         *["–" if row[k] is None else f"{row[k]:.4f}" if k == "total_variation"
                           else f"{row[k]:.3f}"
                           for k in ("relative_error", "flip_rate", "relative_l2",
                                     "processed_l2", "spearman", "total_variation",
                                     "deletion_auc", "insertion_auc")]])
        blocks[f"sweep-{method}"] = table(
            ["row", "σ", "n", "‖stderr‖/‖map‖", "flip rate", "L2 vs ref", "shown L2 vs ref",
             "Spearman vs ref", "TV", "deletion", "insertion"], rows)


def part_report() -> None:
    blocks: dict[str, str] = {}
    for name, build in (("convergence", report_convergence), ("scores", report_scores),
                        ("randomization", report_randomization), ("tv", report_tv),
                        ("sweep_gradient", report_sweep)):
        if (DOCS / f"{name}.json").exists():
            build(blocks)
        else:
            print(f"skipping {name}: docs/evaluation/{name}.json is missing")
    text = REPORT.read_text()
    for name, content in blocks.items():
        pattern = re.compile(rf"(<!-- begin:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
        if not pattern.search(text):
            print(f"EVALUATION.md has no block {name}:\n{content}\n")
            continue
        text = pattern.sub(lambda m, c=content: f"{m.group(1)}{c}\n{m.group(2)}", text)
    REPORT.write_text(text)
    print(f"wrote {REPORT}")


PARTS: dict[str, Callable[[], dict[str, Any]]] = {
    "scores": part_scores, "randomization": part_randomization, "tv": part_tv,
    "sweep": part_sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=[*PARTS, "report"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    DOCS.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        if part == "report":
            part_report()
            continue
        result = PARTS[part]()
        (DOCS / f"{part}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        print(f"wrote docs/evaluation/{part}.json")


if __name__ == "__main__":
    main()
