"""GPU benchmark: smoothgrad against the tutorial loop and Captum on one CUDA device.

Needs torch with CUDA, torchvision (for ResNet-50, random weights) and captum; installs
nothing and downloads nothing. One process, interleaved rounds, medians and per-round ratios.

    python benchmarks/gpu.py --out gpu-results            # writes gpu-results.md/.json
    python benchmarks/gpu.py --out r --compile            # also torch.compile variants
    python benchmarks/gpu.py --device cpu --quick --model efficientnet_lite0 --out /tmp/r
                                                          # smoke run without a GPU

Tables: one map (n=50) for the tutorial loop, Captum NoiseTunnel(Saliency) at its default
and best chunk, ours (default and fast); throughput over many images; guided backprop and
integrated gradients against Captum; time and peak memory against n.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
import harness as h
import smoothgrad as sg
from smoothgrad import fast


def build(name: str, device: torch.device) -> tuple[nn.Module, Tensor]:
    image = sg.images.load(sg.images.sample_path("chelsea"))
    if name == "efficientnet_lite0":
        model = sg.models.load("efficientnet_lite0")
        x = sg.models.efficientnet_lite0_preprocess(image)
    else:
        try:
            import torchvision
        except ImportError:
            print(f"{name} needs torchvision, which is not installed (this script installs "
                  "nothing); use a machine with torchvision, or --model efficientnet_lite0",
                  file=sys.stderr)
            sys.exit(2)
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = sg.models.imagenet_preprocess(image)
    return model.to(device), x.to(device)


class Bench(h.Sections):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.model, self.x = build(args.model, self.device)
        with torch.no_grad():
            self.target = int(self.model(self.x).argmax())
        self.sigma = h.sigma_of(self.x)
        self.n = 10 if args.quick else args.samples
        self.rounds = 1 if args.quick else args.rounds
        super().__init__(self.device, model=args.model, samples=self.n)

    def one_map(self) -> None:
        model, x, n = self.model, self.x, self.n
        self.section(f"One map: SmoothGrad of the gradient, n={n}, {tuple(x.shape)}")
        best, chunk_medians = h.best_chunk(
            lambda c: h.captum_smoothgrad(model, self.target, n, self.sigma, c), x,
            [c for c in (10, 25) if c < n] + [None], rounds=2 if not self.args.quick else 1)
        impls, _, _ = h.one_map_impls(model, x, self.target, n, self.sigma, best)
        report = fast.cached_copy(model, x).report
        if self.args.compile:
            for mode in ("default", "max-autotune"):
                start = time.perf_counter()
                compiled = fast.optimize(model, x, dtype=report.dtype, compile=mode)
                h.settle_tuner(compiled, x, n)
                print(f"compile ({mode}) and tuning: {time.perf_counter() - start:.1f}s")
                impls[f"ours fast + compile ({mode})"] = h.ours(compiled, n)
        timings = h.interleaved(impls, x, self.rounds)
        names = list(impls)
        fp32 = impls[names[3]](x)
        correlations = {name: h.correlation(impls[name](x), fp32) for name in names[4:]}
        table_rows = [[name, timings[name].median * 1e3, timings[name].median / n * 1e6,
                       h.ratio(timings, names[1], name), h.ratio(timings, names[2], name),
                       f"{correlations[name]:.5f}" if name in correlations else ""]
                      for name in names]
        self.md.append(h.table(["implementation", "ms / map", "µs / sample",
                                "captum default / this", "captum best / this",
                                "map correlation with fp32"], table_rows))
        self.md.append(f"\nFast path: {report.folded} BatchNorms folded, {report.dtype}, "
                       f"channels_last {report.channels_last}; one-pass gradient correlation "
                       f"{report.map_correlation:.5f}, logit error {report.logit_error:.1e}. "
                       f"Captum chunk search (median s): {chunk_medians}.")
        self.data["one_map"] = {"timings": timings, "correlations": correlations,
                                "report": report, "captum_chunks": chunk_medians}

    def throughput(self) -> None:
        count = 4 if self.args.quick else self.args.images
        n = self.n
        self.section(f"Throughput: {count} images x n={n}")
        gen = torch.Generator().manual_seed(0)
        x = (self.x.cpu() + 0.1 * torch.randn(count, *self.x.shape[1:], generator=gen))
        x = x.to(self.device)
        with torch.no_grad():
            target = self.model(x).argmax(1)
        sigma = h.sigma_of(x)
        impls = {"captum chunk 10": h.captum_smoothgrad(self.model, target, n, sigma, 10)}
        for rows in (64, 256) if not self.args.quick else (8,):
            impls[f"ours, batch {rows}"] = h.ours(self.model, n, batch_size=rows)
            impls[f"ours fast, batch {rows}"] = h.ours(self.model, n, batch_size=rows, fast=True)
        timings = h.interleaved(impls, x, self.rounds)
        rows_ = [[name, t.median, count * n / t.median, h.ratio(timings, "captum chunk 10", name)]
                 for name, t in timings.items()]
        self.md.append(h.table(["implementation", "s", "noisy samples / s", "captum / this"],
                               rows_))
        self.data["throughput"] = {"timings": timings, "images": count}

    def methods(self) -> None:
        model, x, n = self.model, self.x, self.n
        noisy, steps = (2, 5) if self.args.quick else (10, 50)
        self.section(f"Base methods per pass (IG: {noisy} noise x {steps} steps)")
        rows = h.settle_tuner(model, x, n)
        impls = {
            "ours gradient": h.ours(model, n),
            "ours guided backprop": h.ours(model, n, method="guided_backprop"),
            "ours IG": h.ours(model, noisy, method=h.ig_method(steps, max(rows, 64))),
            "captum guided backprop": h.captum_smoothgrad(model, self.target, n, self.sigma,
                                                          None, base="guided_backprop"),
            "captum IG": h.captum_smoothgrad(model, self.target, noisy, self.sigma, None,
                                             base="integrated_gradients", n_steps=steps,
                                             internal_batch_size=max(rows, 64)),
        }
        h.settle_tuner(model, x, n, method="guided_backprop")
        passes = [n, n, noisy * steps, n, noisy * steps]
        timings = h.interleaved(impls, x, self.rounds)
        base = timings["ours gradient"].median / n
        self.md.append(h.table(
            ["implementation", "ms", "passes", "µs / pass", "per pass / ours gradient"],
            [[name, t.median * 1e3, p, t.median / p * 1e6, t.median / p / base]
             for (name, t), p in zip(timings.items(), passes, strict=True)]))
        self.data["methods"] = {"timings": timings, "passes": passes}

    def samples(self) -> None:
        self.section("Time and peak memory against n")
        ns = [2, 10, 50] if self.args.quick else [2, 5, 10, 20, 50, 100, 200, 500, 1000]
        table_rows = []
        for n in ns:
            row: list[Any] = [n]
            impls = {"ours": h.ours(self.model, n), "fast": h.ours(self.model, n, fast=True)}
            if n <= 200:
                impls["captum default"] = h.captum_smoothgrad(self.model, self.target, n,
                                                              self.sigma, None)
            timings = h.interleaved(impls, self.x, 1 if self.args.quick else 3)
            for name in ("ours", "fast", "captum default"):
                row.append(timings[name].median * 1e3 if name in timings else "—")
            for name in ("ours", "fast", "captum default"):
                row.append(self.peak_mib(impls[name]) if name in impls else "—")
            table_rows.append(row)
        self.md.append(h.table(["n", "ours ms", "fast ms", "captum default ms", "ours MiB",
                                "fast MiB", "captum default MiB"], table_rows))
        self.md.append("\nMiB: peak CUDA memory allocated during the call above what was "
                       "allocated before it.")
        self.data["samples"] = table_rows

    def peak_mib(self, fn: h.Explain) -> float | str:
        if self.device.type != "cuda":
            return "—"
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(self.x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="path stem for .md and .json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--images", type=int, default=64, help="images in the throughput run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--only", nargs="+", default=["one_map", "throughput", "methods",
                                                       "samples"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device is available to torch "
                  f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                  "run on a GPU machine, or smoke-test with --device cpu --quick "
                  "--model efficientnet_lite0", file=sys.stderr)
            sys.exit(2)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(2)
    bench = Bench(args)
    for name in args.only:
        getattr(bench, name)()
    info = bench.data["machine"]
    header = (f"## GPU — {bench.data['date']}\n\n{info.get('gpu', info['processor'])}, "
              f"torch {info['torch']}, CUDA {info.get('cuda')}; {args.model}, "
              f"{tuple(bench.x.shape)}; TF32 and cudnn.benchmark on for every implementation.")
    h.write(args.out, header + "\n" + "\n".join(bench.md), bench.data)


if __name__ == "__main__":
    main()
