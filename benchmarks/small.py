"""Small inputs: SmoothGrad of the gradient where one row is cheap, against Captum and a loop.

Users explain thousands of small images (CIFAR, medical patches, MNIST-scale models); there a
pass's fixed cost and its size decide the time, not the model. Three models with random
weights in eval mode (BatchNorm statistics of random images), n = 50, σ = 0.15 of the range,
the clean prediction as target:

- resnet64: a tiny ResNet (the size of a tiny transformers `ResNetConfig`: a 7×7 stride-2
  stem with max pooling, one basic block of 8 and one of 16 channels, BatchNorm, in-place
  ReLU) on 2 images of 64×64;
- resnet32: the same on 4 CIFAR-sized images (32×32);
- lenet28: a LeNet-5-sized CNN on 8 MNIST-sized images (1×28×28).

Implementations, interleaved round by round (harness.py): ours at its defaults
(`sg.smooth(model, x, samples=50)`), Captum's default `NoiseTunnel(Saliency)` (all copies in
one batch, signed gradient) and a plain one-pass loop (every noisy copy in one batch,
`torch.autograd.grad` on the input). Ours is warmed up like the others (one untimed round),
so its batch-size search has run; `--first` also times first calls (the search included).

    python benchmarks/small.py                  # ~3 min on 2 cores
    python benchmarks/small.py --only resnet64 --rounds 9

Writes the table to stdout and to `--out` (.md and .json; benchmarks/results/small).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
import harness as h
import smoothgrad as sg
from smoothgrad import tuning


class Block(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)
        self.skip = (nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                                   nn.BatchNorm2d(outputs))
                     if stride != 1 or inputs != outputs else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ResNet(nn.Module):
    """The size of a tiny transformers `ResNetConfig` (embedding 8, hidden sizes 8/16, one
    basic block per stage): a 7×7 stride-2 stem with max pooling, then two stages."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.head = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class LeNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), \
            nn.Linear(84, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


CASES = {"resnet64": (ResNet, (2, 3, 64, 64)), "resnet32": (ResNet, (4, 3, 32, 32)),
         "lenet28": (LeNet, (8, 1, 28, 28))}


def build(name: str) -> tuple[nn.Module, Tensor]:
    model_type, shape = CASES[name]
    generator = torch.Generator().manual_seed(0)
    model = model_type()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (2 / fan_in) ** 0.5)
        model.train()
        for _ in range(3):
            model(torch.randn(16, *shape[1:], generator=generator))
    x = torch.randn(shape, generator=generator)
    return model.eval(), x


def plain_loop(model: nn.Module, target: Tensor, samples: int) -> h.Explain:
    """Every noisy copy in one batch, `torch.autograd.grad` on the input, then the mean."""
    generator = torch.Generator().manual_seed(0)

    def run(x: Tensor) -> Tensor:
        sigma = sg.DEFAULT_NOISE * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        noise = torch.randn((samples, *x.shape), generator=generator)
        batch = (x + sigma.view(-1, *[1] * (x.dim() - 1)) * noise).flatten(0, 1)
        batch.requires_grad_(True)
        scores = model(batch).gather(1, target.repeat(samples)[:, None]).sum()
        (grad,) = torch.autograd.grad(scores, batch)
        return grad.view(samples, *x.shape).mean(dim=0)

    return run


def first_call(model: nn.Module, samples: int) -> h.Explain:
    def run(x: Tensor) -> Tensor:
        tuning.forget(model)
        return sg.smooth(model, x, samples=samples).attribution

    return run


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--first", action="store_true", help="also time first calls")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "small")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = h.Sections(torch.device("cpu"), samples=args.samples, threads=args.threads)
    rows = []
    for name in args.only:
        model, x = build(name)
        with torch.no_grad():
            target = model(x).argmax(dim=1)
        n = args.samples
        impls = {"ours default": h.ours(model, n),
                 "captum default": h.captum_smoothgrad(model, target, n, h.sigma_of(x), None),
                 "plain one-pass loop": plain_loop(model, target, n)}
        if args.first:  # a copy: its own tuner, which it resets every call
            impls["ours, first call"] = first_call(copy.deepcopy(model), n)
        before = load()
        report.log(f"\n## {name}: {tuple(x.shape)}, n={n}")
        timings = h.interleaved(impls, x, args.rounds, log=report.log)
        chosen = tuning.tuner_for(model, "gradient", x, False).rows
        row = [name, str(tuple(x.shape)), chosen,
               *(timings[k].median for k in impls),
               h.ratio(timings, "captum default", "ours default"),
               h.ratio(timings, "ours default", "plain one-pass loop"),
               h.ratio(timings, "captum default", "ours default", cpu=True),
               h.ratio(timings, "ours default", "plain one-pass loop", cpu=True),
               f"{before} → {load()}"]
        rows.append(row)
        report.data[name] = {"timings": timings, "rows": chosen, "load": [before, load()]}
    headers = ["case", "x", "ours rows / pass", *(f"{k} s" for k in impls),
               "captum / ours", "ours / plain loop", "captum / ours, CPU time",
               "ours / plain loop, CPU time", "load (1/5/15 min)"]
    report.md.append(h.table(headers, rows))
    header = (f"## Small inputs — {time.strftime('%Y-%m-%d %H:%M')}\n\n"
              f"{report.data['machine']['processor']}, torch {torch.__version__}, "
              f"{args.threads} threads, n = {args.samples}, medians of {args.rounds} rounds.")
    h.write(args.out, header + "\n" + "\n".join(report.md), report.data)


if __name__ == "__main__":
    main()
