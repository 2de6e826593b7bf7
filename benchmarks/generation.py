"""SmoothGrad over generation: ours against Captum's LLMGradientAttribution loop and interpreto.

The task (issue 21): a GPT-2-small-sized causal LM with random weights (12 layers, 768 wide,
50,257 words), a 64-token prompt, 16 forced target tokens, n noisy copies of the input
embeddings (σ = 0.15 × the embeddings' range), input × gradient per target, summed over the
hidden size: a (16, 80) matrix.

- Captum: `LLMGradientAttribution(LayerGradientXActivation(model, wte))`, one call per noisy
  copy, the noise added by a forward hook on `wte`: it runs one forward per target (batch 1,
  the LM head at every position), 16 × n forwards. The copies are ours, drawn with
  `smoothgrad.layers.sequence_normal`, so its matrix must equal ours (checked and printed).
- interpreto 0.5.2's `SmoothGrad` (token granularity, input × gradient, log-softmax), with
  its own noise (an absolute σ, the same value) and `batch_size` copies per forward; only if
  it is installed (`pip install --no-deps interpreto==0.5.2`, see ANCHORS.md), never a
  dependency of smoothgrad.
- Ours: `sg.text.explain_generation(..., continuation=targets)` at the given batch sizes
  (rows per forward); one forward per chunk of copies, one backward per target; and the
  same with `fast=True` (`--fast`: bfloat16 where the CPU has it and the call's check
  accepts it; the precision it ran in is printed).

The tokenizer is a word-level one over the words t0..t50255 and <|endoftext|> (GPT-2's
is not on this machine; with random weights only the ids matter).

Times: every configuration in one process, one warm-up at n = 2, then `--rounds` rounds in
which each runs once in turn (A B C … A B C …): medians of wall and process CPU seconds
(the machine is shared: CPU seconds move less with others' load) and medians of per-round
ratios; the 1-minute load average is recorded before every round. Peak memory (interpreto
and ours; Captum's loop, one copy at a time, is the floor and not compared): each
configuration once more, alone in a fresh process (peak resident size, VmHWM, reset after a
warm-up call at n = 2, minus what the process held before the call).

    python benchmarks/generation.py                      # the issue's setting (~15 min quiet)
    python benchmarks/generation.py --layers 2 --rounds 1 --samples 4   # a quick look
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch

import harness as h
from smoothgrad.precision import pearson

VOCAB = 50257
EOS = VOCAB - 1


def _setup(args: argparse.Namespace) -> tuple[Any, Any, str, list[int]]:
    """The model, the tokenizer, the prompt text and the target ids (one model per process,
    so a warm-up call makes what later calls reuse, such as the fast path's copy)."""
    return _made(args.layers, args.hidden, args.tokens, args.targets)


@functools.cache
def _made(layers: int, hidden: int, tokens: int, count: int) -> tuple[Any, Any, str, list[int]]:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=layers,
                                     n_head=hidden // 64, bos_token_id=EOS, eos_token_id=EOS)
    model = transformers.GPT2LMHeadModel(config).eval()
    words = {f"t{i}": i for i in range(EOS)} | {"<|endoftext|>": EOS}
    backend = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>")
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(1000, 50000, (tokens,), generator=generator).tolist()
    targets = torch.randint(1000, 50000, (count,), generator=generator).tolist()
    return model, tokenizer, " ".join(f"t{i}" for i in prompt), targets


def _explainer(args: argparse.Namespace, which: str, size: int,
               samples: int) -> Callable[[], torch.Tensor]:
    """A function () -> the (targets, prompt + targets) matrix for one configuration."""
    import smoothgrad as sg

    model, tokenizer, prompt, targets = _setup(args)
    text = " ".join(f"t{i}" for i in targets)
    if which in ("ours", "fast"):
        def ours() -> torch.Tensor:
            shown = sg.text.explain_generation(
                model, tokenizer, prompt, continuation=text, method="input_x_gradient",
                reduce="sum", samples=samples, batch_size=size, fast=which == "fast")
            if shown.precision is not None and samples == args.samples:
                print(f"# fast batch_size={size}: precision {shown.precision}", flush=True)
            return shown.scores
        return ours
    ids = torch.tensor(tokenizer(prompt)["input_ids"] + targets[:-1])
    with torch.no_grad():
        clean = model.get_input_embeddings()(ids)
    sigma = 0.15 * float(clean.max() - clean.min())
    if which == "interpreto":
        return _interpreto(model, tokenizer, prompt, text, samples, size, sigma)
    return _captum_loop(model, tokenizer, prompt, targets, samples, sigma)


def _captum_loop(model: Any, tokenizer: Any, prompt: str, targets: list[int], samples: int,
                 sigma: float) -> Callable[[], torch.Tensor]:
    from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

    from smoothgrad.layers import sequence_normal

    layer = model.get_input_embeddings()
    attribution = LLMGradientAttribution(LayerGradientXActivation(model, layer), tokenizer)
    length = len(tokenizer(prompt)["input_ids"]) + len(targets) - 1
    real = torch.ones(1, length, dtype=torch.bool)

    def run() -> torch.Tensor:
        total = torch.zeros(len(targets), length + 1 - len(targets), dtype=torch.float64)
        for k in range(samples):
            draw = sigma * sequence_normal(0, [k], real, (model.config.n_embd,))[0]
            handle = layer.register_forward_hook(functools.partial(_add, draw))
            try:
                result = attribution.attribute(TextTokenInput(prompt, tokenizer),
                                               target=torch.tensor(targets))
            finally:
                handle.remove()
            total += result.token_attr.double()
        return total / samples
    return run


def _add(draw: torch.Tensor, module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """A forward hook's body: the embeddings plus this copy's noise."""
    return output + draw[:, : output.shape[1]]


def _interpreto(model: Any, tokenizer: Any, prompt: str, text: str, samples: int, size: int,
                sigma: float) -> Callable[[], torch.Tensor]:
    from interpreto import Granularity, SmoothGrad
    from interpreto.attributions.inference_wrappers.inference_wrapper import InferenceModes

    explainer = SmoothGrad(model, tokenizer, batch_size=size, granularity=Granularity.TOKEN,
                           n_perturbations=samples, noise_std=sigma, input_x_gradient=True,
                           inference_mode=InferenceModes.LOG_SOFTMAX)

    def run() -> torch.Tensor:
        (output,) = explainer.explain(prompt, targets=text)
        return torch.as_tensor(output.attributions)
    return run


def _child(args: argparse.Namespace, which: str, size: int,
           queue: multiprocessing.Queue[float]) -> None:
    """Peak memory of one configuration, alone in a fresh process."""
    torch.set_num_threads(args.threads)
    _explainer(args, which, size, 2)()  # first-call allocations and lazy imports
    run = _explainer(args, which, size, args.samples)
    h.reset_peak()
    before = h.status_mib("VmRSS")
    run()
    queue.put(h.status_mib("VmHWM") - before)


def peak_memory(args: argparse.Namespace, which: str, size: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[float] = context.Queue()
    process = context.Process(target=_child, args=(args, which, size, queue))
    process.start()
    peak = queue.get()
    process.join()
    return float(peak)


def timings(args: argparse.Namespace, configs: list[tuple[str, int]]
            ) -> tuple[list[list[float]], list[list[float]], list[torch.Tensor]]:
    """Wall and CPU seconds per round of each configuration, and each one's last matrix."""
    torch.set_num_threads(args.threads)
    for which, size in configs:
        _explainer(args, which, size, 2)()
    runs = [_explainer(args, which, size, args.samples) for which, size in configs]
    times: list[list[float]] = [[] for _ in runs]
    cpu: list[list[float]] = [[] for _ in runs]
    matrices: list[torch.Tensor] = [torch.zeros(0)] * len(runs)
    for _ in range(args.rounds):
        load = os.getloadavg()[0]
        for i, run in enumerate(runs):
            started, used = time.perf_counter(), time.process_time()
            matrices[i] = run()
            times[i].append(time.perf_counter() - started)
            cpu[i].append(time.process_time() - used)
        print(f"# round (load {load:.1f} before): wall",
              " ".join(f"{row[-1]:.2f}" for row in times), "| cpu",
              " ".join(f"{row[-1]:.2f}" for row in cpu), flush=True)
    return times, cpu, matrices


def _table(rows: list[dict[str, Any]], times: list[list[float]]) -> None:
    """The Markdown table: medians, ratios to Captum's time and to interpreto's memory."""
    memory = {row["which"]: row["peak_extra_mib"] for row in rows}.get("interpreto")
    print("\n| implementation | median wall s | median CPU s | peak extra MiB | "
          "Captum's time / this | this memory / interpreto's |\n|---|---|---|---|---|---|")
    for row, seconds in zip(rows, times, strict=True):
        speedup = statistics.median(a / b for a, b in zip(times[0], seconds, strict=True))
        peak = row["peak_extra_mib"]
        shown = "—" if peak is None else f"{peak:.0f}"
        ratio = "—" if peak is None or not memory else f"{peak / memory:.2f}"
        print(f"| {_name(row['which'], row['size'])} | {row['median']:.1f} | "
              f"{row['cpu_median']:.1f} | {shown} | {speedup:.2f} | {ratio} |")


def _name(which: str, size: int) -> str:
    return {"captum": "Captum LLMGradientAttribution(LayerGradientXActivation), one call per "
                      "noisy copy",
            "interpreto": f"interpreto 0.5.2 SmoothGrad, batch_size={size}",
            "ours": f"ours, batch_size={size}",
            "fast": f"ours fast=True, batch_size={size}"}[which]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=64, help="prompt length")
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours", type=int, nargs="*", default=[5, 20], help="our batch sizes")
    parser.add_argument("--fast", type=int, nargs="*", default=[5, 20],
                        help="our batch sizes with fast=True")
    parser.add_argument("--interpreto", type=int, default=20, help="its batch size (0: skip)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} uptime: {load}")
    print(f"# GPT-2 random config: {args.layers} layers, hidden {args.hidden}, prompt "
          f"{args.tokens} tokens, {args.targets} targets, n={args.samples}, "
          f"{args.threads} threads")
    configs = [("captum", 1)]
    if args.interpreto:
        configs.append(("interpreto", args.interpreto))
    configs += [("ours", size) for size in args.ours]
    configs += [("fast", size) for size in args.fast]
    times, cpu, matrices = timings(args, configs)
    plain = [i for i, (which, _) in enumerate(configs) if which == "ours"]
    ours = matrices[plain[-1] if plain else 0][:, : args.tokens].double()
    captum = matrices[0]
    print(f"# ours vs Captum on the same noise: max |difference| / max |value| = "
          f"{float((ours - captum).abs().max() / captum.abs().max()):.2e}")
    for (which, size), matrix in zip(configs, matrices, strict=True):
        if which == "fast":
            correlation = pearson(matrix[:, : args.tokens].double().flatten(), ours.flatten())
            print(f"# fast batch_size={size}: correlation with ours float32 {correlation:.6f}")
    rows = []
    for (which, size), seconds, used in zip(configs, times, cpu, strict=True):
        peak = peak_memory(args, which, size) if which != "captum" else None
        rows.append({"which": which, "size": size, "seconds": seconds, "cpu_seconds": used,
                     "median": statistics.median(seconds), "cpu_median": statistics.median(used),
                     "peak_extra_mib": peak, "load_after": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    _table(rows, times)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# uptime after: {after}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "load": load, "after": after, "rows": rows}, out,
                      indent=1)


if __name__ == "__main__":
    main()
