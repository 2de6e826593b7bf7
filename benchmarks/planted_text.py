"""Planted ground truth for text: does SmoothGrad at the embeddings find the trigger word?

Trains the tiny BERT of `tests/text_models.py` on sentences whose label is decided by one
trigger word (seconds on a CPU), saves it with `save_pretrained` (so that
`smoothgrad explain-text ... --model hf:DIR` can be tried on it), and reports, for each base
method, the share of held-out sentences whose highest-scoring word is the trigger.

    python benchmarks/planted_text.py --out planted-bert --sentences 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from smoothgrad import hf
from smoothgrad.text import explain_text
from text_models import hit_rate, sentences, tiny_bert, train_planted

METHODS = ("gradient", "input_x_gradient", "integrated_gradients")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("planted-bert"))
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = train_planted(hf.load(f"hf:{tiny_bert(args.out, seed=1)}"))
    model.module.save_pretrained(args.out)
    print(f"trained in {time.perf_counter() - started:.1f} s, saved to {args.out}")
    texts, labels, where = sentences(args.sentences, torch.Generator().manual_seed(99))
    for reduce in ("norm", "sum"):
        for method in METHODS:
            options = {"steps": 16} if method == "integrated_gradients" else {}
            shown = explain_text(model, texts, method=method, samples=args.samples, seed=0,
                                 reduce=reduce, method_kwargs=options)
            correct = float((shown.result.target == labels).float().mean())
            print(f"{method:<22} reduce={reduce:<5} trigger ranked first: "
                  f"{hit_rate(shown.texts, where):.3f} of {len(texts)} "
                  f"(model accuracy {correct:.3f})")


if __name__ == "__main__":
    main()
