"""SmoothGrad of a BERT classifier at its word embeddings: ours against Captum's NoiseTunnel.

Captum's NoiseTunnel noises a method's *inputs*, so over a layer method on token ids it
would noise the ids themselves (captum #1281); what users do instead is feed the word
embeddings as the input (`inputs_embeds`) and run NoiseTunnel(Saliency) over them. That
is the baseline here, with the same σ (absolute, 0.15 of the embeddings' range), the same
target and n: at its default (all n copies in one batch) and at each `nt_samples_batch_size`
of 5/10/25. Ours: `sg.smooth(model, ids, layer=embeddings, forward_kwargs=...)`.

Times: all configurations in one process, one warm-up each, then `--rounds` rounds in which
each runs once in turn (A B C … A B C …); the median time and the median of the per-round
ratios are reported. Peak memory: each configuration once more in its own fresh process (the
process's peak resident size, VmHWM, reset after a warm-up call at n = 2, minus what it
held before the call), and ours at n and 2n to
show that memory does not grow with n. Compare ratios, not seconds against other runs.

    python benchmarks/text.py                       # BERT-base size: 12 layers, hidden 768
    python benchmarks/text.py --layers 2 --rounds 3 # what fits a loaded 2-core machine
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

CAPTUM_SIZES = (None, 5, 10, 25)


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Make VmHWM (the peak resident size) start again from the current size."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


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
    if which == "ours":
        import smoothgrad as sg
        from smoothgrad.tuning import tuner_for

        def ours() -> torch.Tensor:
            result = sg.smooth(model, ids, layer=embeddings, forward_kwargs={
                "attention_mask": mask}, samples=args.samples, stdev=sigma, target=target,
                batch_size="auto" if size is None else size)
            if size is None:
                print(f"# auto batch size now: {tuner_for(model, 'gradient', clean, False).rows}",
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
    args.samples = 2
    run = _explainer(args, which, size)
    run()  # first-call allocations and lazy imports, at a small n
    args.samples = samples
    _reset_peak()
    before = _status_mib("VmRSS")
    run()
    queue.put({"peak_extra_mib": _status_mib("VmHWM") - before})


def peak_memory(args: argparse.Namespace, which: str, size: int | None,
                samples: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    process = context.Process(target=_child, args=(args, which, size, samples, queue))
    process.start()
    row = queue.get()
    process.join()
    return float(row["peak_extra_mib"])


def timings(args: argparse.Namespace, configs: list[tuple[str, int | None]]) -> list[list[float]]:
    """Seconds per round of each configuration: one warm-up, then rounds in which each runs
    once in turn (A B C ... A B C ...), so that other work on the machine slows all alike."""
    torch.set_num_threads(args.threads)
    runs = [_explainer(args, which, size) for which, size in configs]
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(args.rounds):
        for run, row in zip(runs, times, strict=True):
            started = time.perf_counter()
            run()
            row.append(time.perf_counter() - started)
        print("# round:", " ".join(f"{row[-1]:.2f}" for row in times), flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours", type=int, nargs="*", default=[0, 8, 25, 50],
                        help="our batch sizes (0: auto)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} uptime: {load}")
    print(f"# BERT random config: {args.layers} layers, hidden {args.hidden}, "
          f"{args.tokens} tokens, n={args.samples}, {args.threads} threads")
    configs = [("captum", size) for size in CAPTUM_SIZES]
    configs += [("ours", size or None) for size in args.ours]
    times = timings(args, configs)
    rows = []
    for (which, size), seconds in zip(configs, times, strict=True):
        rows.append({"which": which, "size": size, "seconds": seconds,
                     "median": statistics.median(seconds),
                     "peak_extra_mib": peak_memory(args, which, size, args.samples)})
        print(json.dumps(rows[-1]), flush=True)
    flat = {n: peak_memory(args, "ours", 8, n) for n in (args.samples, 2 * args.samples)}
    print(f"# ours, batch_size=8: peak extra MiB at n={args.samples}: "
          f"{flat[args.samples]:.0f}, at n={2 * args.samples}: {flat[2 * args.samples]:.0f}")
    captum = range(len(CAPTUM_SIZES))
    best = min(captum, key=lambda i: rows[i]["median"])
    print("\n| implementation | median s | peak extra MiB | Captum default / this |"
          " Captum best / this |\n|---|---|---|---|---|")
    for row, seconds in zip(rows, times, strict=True):
        name = (f"Captum NoiseTunnel(Saliency), nt_samples_batch_size={row['size']}"
                if row["which"] == "captum" else
                f"ours, batch_size={row['size'] or 'auto'}")
        ratios = [statistics.median(a / b for a, b in zip(times[i], seconds, strict=True))
                  for i in (0, best)]
        print(f"| {name} | {row['median']:.2f} | {row['peak_extra_mib']:.0f} | "
              f"{ratios[0]:.2f} | {ratios[1]:.2f} |")
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# uptime after: {after}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "load": load, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
