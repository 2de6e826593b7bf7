"""Planted ground truth for generation: does the copy's attribution peak at its source?

Trains the tiny GPT-2 of `tests/lm_models.py` to copy the word that follows the marker M
(seconds on a CPU), saves it with `save_pretrained` (so that `smoothgrad explain-text
--model hf:DIR --generate N` can be tried on it), and reports, for each base method and
token reduction, the share of held-out prompts whose first generated token (the copy) has
its largest |score| at the source. The `--shared` table repeats it for the variant where the
source is drawn from the fillers' words, so only the marker says what to copy, at several
noise levels.

    python benchmarks/planted_generation.py --out planted-copy --prompts 200
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lm_models import causal_lm, copy_prompts, save, tokenizer, train_copy
from smoothgrad.text import explain_generation

METHODS = ("gradient", "input_x_gradient", "integrated_gradients", "deeplift")


def hits(model: nn.Module, prompts: list[str], sources: list[int], method: str, reduce: str,
         noise: float, samples: int) -> tuple[float, float, float]:
    """Share of prompts whose copy peaks at its source; share copied; mean flip rate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeepLIFT names softmax and LayerNorm each time
        shown = explain_generation(model, tokenizer(bos=False), prompts, max_new_tokens=1,
                                   method=method, reduce=reduce, noise=noise, samples=samples,
                                   batch_size=64, steps=16)
    peaks = [int(r.scores[0, :r.prompt_length].abs().argmax()) == s
             for r, s in zip(shown, sources, strict=True)]
    copied = [r.target_tokens[0] == p.split()[s]
              for r, p, s in zip(shown, prompts, sources, strict=True)]
    flips = [float(r.flip_rate[0]) for r in shown]
    n = len(prompts)
    return sum(peaks) / n, sum(copied) / n, sum(flips) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("planted-copy"))
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--shared", action="store_true",
                        help="also the variant where only the marker says what to copy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = train_copy(causal_lm("gpt2"))
    save(model, args.out, bos=False)
    print(f"trained in {time.perf_counter() - started:.1f} s, saved to {args.out}")
    prompts, sources = copy_prompts(args.prompts, torch.Generator().manual_seed(123))
    print(f"\n{args.prompts} prompts, noise {args.noise}, {args.samples} samples: share whose "
          "copy peaks at the source\n\n| method | norm | sum | dot |\n|---|---|---|---|")
    for method in METHODS:
        cells = []
        for reduce in ("norm", "sum", "dot"):
            peak, copied, flips = hits(model, prompts, sources, method, reduce, args.noise,
                                       args.samples)
            cells.append(f"{peak:.3f}")
        print(f"| {method} | {' | '.join(cells)} |   (copied {copied:.3f}, flips {flips:.3f})",
              flush=True)
    if args.shared:
        shared(args)


def shared(args: argparse.Namespace) -> None:
    """The variant where only the marker tells which word to copy, over noise levels."""
    noises = (0.0, 0.05, 0.1, 0.15)
    print(f"\nshared words (only the marker tells what to copy), {args.samples} samples, "
          f"reduce=norm: share whose copy peaks at the source\n\n| training | method | "
          + " | ".join(f"noise {noise}" for noise in noises) + " |\n|---|---|"
          + "---|" * len(noises))
    prompts, sources = copy_prompts(args.prompts, torch.Generator().manual_seed(123),
                                    shared=True)
    for steps, seed in ((300, 0), (800, 0), (800, 1), (800, 2)):
        model = train_copy(causal_lm("gpt2"), steps=steps, shared=True, seed=seed)
        for method in ("gradient", "input_x_gradient"):
            cells = []
            for noise in noises:
                peak, copied, flips = hits(model, prompts, sources, method, "norm", noise,
                                           args.samples)
                cells.append(f"{peak:.3f}")
            print(f"| {steps} steps, seed {seed} | {method} | {' | '.join(cells)} |   (copied "
                  f"{copied:.3f}, flips {flips:.3f} at noise {noises[-1]})", flush=True)


if __name__ == "__main__":
    main()
