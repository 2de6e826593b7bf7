"""SmoothGrad of a BERT classifier at its word embeddings: ours against Captum's NoiseTunnel.

Captum's NoiseTunnel noises a method's *inputs*, so over a layer method on token ids it
would noise the ids themselves (captum #1281); what users do instead is feed the word
embeddings as the input (`inputs_embeds`) and run NoiseTunnel(Saliency) over them. That
is the baseline here, with the same σ (absolute, 0.15 of the embeddings' range), the same
target and n: at its default (all n copies in one batch) and at each `nt_samples_batch_size`
of 5/10/25. Ours: `sg.smooth(model, ids, layer=embeddings, forward_kwargs=...)`, and the
same with `fast=True` (bfloat16 where the CPU has it and the call's check accepts it; the
precision it chose and its map's correlation with our float32 map on the same noise are
printed).

Times: all configurations in one process, one warm-up each, then `--rounds` rounds in which
each runs once in turn (A B C … A B C …); the median time and the median of the per-round
ratios are reported. Peak memory: each configuration once more in its own fresh process (the
process's peak resident size, VmHWM, reset after a warm-up call at n = 4, minus what it
held before the call: the fast path's copy, made by the warm-up, is held before), and ours
at n and 2n to show that memory does not grow with n. Compare ratios, not seconds against
other runs.

    python benchmarks/text.py                       # BERT-base size: 12 layers, hidden 768
    python benchmarks/text.py --layers 2 --rounds 3 # what fits a loaded 2-core machine
    python benchmarks/text.py --captum 0 25 --ours 0 --fast 0 50   # fewer configurations
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import time
from typing import Any

import torch

import harness as h


def _model(args: argparse.Namespace) -> Any:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
        num_labels=2)
    return transformers.BertForSequenceClassification(config).eval()


def _explainer(args: argparse.Namespace, which: str, size: int | None) -> Any:
    """A function () -> attribution for one configuration, and the model it closes over."""
    model = _model(args)
    ids = torch.randint(1000, 30000, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    embeddings = model.get_input_embeddings()
    with torch.no_grad():
        clean = embeddings(ids)
        target = int(model(input_ids=ids, attention_mask=mask).logits.argmax())
    sigma = 0.15 * float(clean.max() - clean.min())
    if which in ("ours", "fast"):
        import smoothgrad as sg
        from smoothgrad.tuning import tuner_for

        fast = which == "fast"
        told: list[str] = []

        def ours() -> torch.Tensor:
            result = sg.smooth(model, ids, layer=embeddings, forward_kwargs={
                "attention_mask": mask}, samples=args.samples, stdev=sigma, target=target,
                batch_size="auto" if size is None else size, fast=fast)
            if size is None:
                rows = tuner_for(model, "gradient", clean, fast).rows
                print(f"# {which}: auto batch size now: {rows}", flush=True)
            if fast and str(result.precision) not in told:
                told.append(str(result.precision))
                print(f"# {which} batch_size={size or 'auto'}: precision {result.precision}",
                      flush=True)
            assert isinstance(result.attribution, torch.Tensor)
            return result.attribution
        return ours

    from captum.attr import NoiseTunnel, Saliency

    def forward(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = model(inputs_embeds=inputs_embeds,
                                     attention_mask=attention_mask).logits
        return logits

    tunnel = NoiseTunnel(Saliency(forward))

    def captum() -> torch.Tensor:
        attribution: torch.Tensor = tunnel.attribute(
            clean, nt_type="smoothgrad", nt_samples=args.samples, stdevs=sigma,
            nt_samples_batch_size=size, target=target, abs=False,
            additional_forward_args=(mask,))
        return attribution
    return captum


def _child(args: argparse.Namespace, which: str, size: int | None, samples: int,
           queue: multiprocessing.Queue[dict[str, Any]]) -> None:
    """Peak memory of one configuration, alone in a fresh process."""
    torch.set_num_threads(args.threads)
    args.samples = 4
    run = _explainer(args, which, size)
    run()  # first-call allocations, lazy imports and the fast path's copy, at a small n
    args.samples = samples
    h.reset_peak()
    before = h.status_mib("VmRSS")
    run()
    queue.put({"peak_extra_mib": h.status_mib("VmHWM") - before})


def peak_memory(args: argparse.Namespace, which: str, size: int | None,
                samples: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    process = context.Process(target=_child, args=(args, which, size, samples, queue))
    process.start()
    row = queue.get()
    process.join()
    return float(row["peak_extra_mib"])


def timings(args: argparse.Namespace, configs: list[tuple[str, int | None]]
            ) -> tuple[list[list[float]], list[list[float]], list[torch.Tensor]]:
    """Seconds per round of each configuration: one warm-up, then rounds in which each runs
    once in turn (A B C ... A B C ...), so that other work on the machine slows all alike;
    the process's CPU seconds alike (less sensitive to a loaded machine); and each
    configuration's last map."""
    torch.set_num_threads(args.threads)
    runs = [_explainer(args, which, size) for which, size in configs]
    maps = [run() for run in runs]
    times: list[list[float]] = [[] for _ in runs]
    cpu: list[list[float]] = [[] for _ in runs]
    for _ in range(args.rounds):
        for i, run in enumerate(runs):
            started, used = time.perf_counter(), time.process_time()
            maps[i] = run()
            times[i].append(time.perf_counter() - started)
            cpu[i].append(time.process_time() - used)
        print("# round:", " ".join(f"{row[-1]:.2f}" for row in times), "| cpu:",
              " ".join(f"{row[-1]:.2f}" for row in cpu), flush=True)
    return times, cpu, maps


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps."""
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def table(rows: list[dict[str, Any]], times: list[list[float]],
          configs: list[tuple[str, int | None]]) -> None:
    """The Markdown table: times, memory, ratios to Captum's default and best, and each map's
    correlation with our first float32 configuration's (same noise)."""
    captum = [i for i, (which, _) in enumerate(configs) if which == "captum"]
    default = next((i for i in captum if configs[i][1] is None), captum[0])
    best = min(captum, key=lambda i: rows[i]["median"])
    print("\n| implementation | median s | CPU s | peak extra MiB | Captum default / this |"
          " Captum best / this | map correlation with ours float32 |"
          "\n|---|---|---|---|---|---|---|")
    for row, seconds in zip(rows, times, strict=True):
        size = row["size"] or ("auto" if row["which"] != "captum" else "default (one batch)")
        name = {"captum": "Captum NoiseTunnel(Saliency), nt_samples_batch_size=",
                "ours": "ours, batch_size=", "fast": "ours fast=True, batch_size="}[row["which"]]
        ratios = [statistics.median(a / b for a, b in zip(times[i], seconds, strict=True))
                  for i in (default, best)]
        corr = "" if row["correlation"] is None else f"{row['correlation']:.6f}"
        print(f"| {name}{size} | {row['median']:.2f} | {row['median_cpu']:.1f} | "
              f"{row['peak_extra_mib']:.0f} | "
              f"{ratios[0]:.2f} | {ratios[1]:.2f} | {corr} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--captum", type=int, nargs="*", default=[0, 5, 10, 25],
                        help="Captum's nt_samples_batch_size values (0: its default, one batch)")
    parser.add_argument("--ours", type=int, nargs="*", default=[0, 8, 25, 50],
                        help="our batch sizes (0: auto)")
    parser.add_argument("--fast", type=int, nargs="*", default=[0, 25, 50],
                        help="our batch sizes with fast=True (0: auto)")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--no-flat", action="store_true",
                        help="skip the memory of ours at n and 2n (two more processes)")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} uptime: {load}")
    print(f"# BERT random config: {args.layers} layers, hidden {args.hidden}, "
          f"{args.tokens} tokens, n={args.samples}, {args.threads} threads")
    configs = [("captum", size or None) for size in args.captum]
    configs += [("ours", size or None) for size in args.ours]
    configs += [("fast", size or None) for size in args.fast]
    times, cpu, maps = timings(args, configs)
    reference = next((i for i, (which, _) in enumerate(configs) if which == "ours"), None)
    rows = []
    for i, ((which, size), seconds) in enumerate(zip(configs, times, strict=True)):
        rows.append({"which": which, "size": size, "seconds": seconds,
                     "median": statistics.median(seconds), "cpu": cpu[i],
                     "median_cpu": statistics.median(cpu[i]),
                     "peak_extra_mib": peak_memory(args, which, size, args.samples),
                     "correlation": None if reference is None or which == "captum" else
                     correlation(maps[i], maps[reference])})
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_flat:
        flat = {n: peak_memory(args, "ours", 8, n) for n in (args.samples, 2 * args.samples)}
        print(f"# ours, batch_size=8: peak extra MiB at n={args.samples}: "
              f"{flat[args.samples]:.0f}, at n={2 * args.samples}: {flat[2 * args.samples]:.0f}")
    table(rows, times, configs)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# uptime after: {after}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "load": load, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
