"""One forward + backward pass of BERT-base at its word embeddings: float32 against bfloat16.

Interleaved, per row of the pass, wall and process CPU seconds (the machine is shared):
float32; autocast with the Linear weights cast once (what `fast=True` runs); autocast alone
(weights cast per pass); and the whole model in bfloat16 (LayerNorm, softmax and residual
sums too, which `fast=True` does not do). Each line also gives the gradient's correlation
with float32's on the same noisy rows.

    python benchmarks/text_bf16_passes.py --rows 8 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(num_labels=2)).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    ids = torch.randint(1000, 30000, (1, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model.get_input_embeddings()(ids)
    noisy = clean + 0.1 * torch.randn(args.rows, 128, 768,
                                      generator=torch.Generator().manual_seed(2))
    mask = torch.ones(args.rows, 128, dtype=torch.long)
    cast = copy.deepcopy(model)
    for module in cast.modules():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.to(torch.bfloat16), False)
            module.bias = nn.Parameter(module.bias.to(torch.bfloat16), False)
    whole = copy.deepcopy(model).to(torch.bfloat16)

    def run(net: nn.Module, autocast: bool, dtype: torch.dtype = torch.float32) -> Tensor:
        x = noisy.to(dtype).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = net(inputs_embeds=x, attention_mask=mask).logits
        (grad,) = torch.autograd.grad(logits[:, 1].float().sum(), x)
        return grad.float()

    configs: dict[str, Callable[[], Tensor]] = {
        "float32": lambda: run(model, False),
        "autocast, weights cast once": lambda: run(cast, True),
        "autocast": lambda: run(model, True),
        "whole model bfloat16": lambda: run(whole, False, torch.bfloat16)}
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} uptime: {load}")
    reference = {name: make() for name, make in configs.items()}  # warm-up, and the maps
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, make in configs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            make()
            seconds[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    base = reference["float32"].flatten().double()
    for name, values in seconds.items():
        wall = statistics.median(value[0] for value in values) / args.rows
        cpu = statistics.median(value[1] for value in values) / args.rows
        got = reference[name].flatten().double()
        correlation = float(torch.corrcoef(torch.stack([got, base]))[0, 1])
        print(f"{name}: {wall:.3f} s/row wall, {cpu:.3f} s/row CPU, gradient correlation "
              f"{correlation:.6f}")
    print(f"# uptime after: {after}")


if __name__ == "__main__":
    main()
