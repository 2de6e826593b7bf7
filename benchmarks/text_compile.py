"""Does torch.compile pay for itself on the fast path of a BERT classifier? (issue 20)

The trial the fast path would run: BERT's bfloat16 copy (Linear weights cast once, autocast,
as `smoothgrad.fast` makes it) explained at its word embeddings, n noisy copies in passes of
`--rows`, input gradients only — eager against `torch.compile` of the same copy. The loop is
written out over `inputs_embeds` (what `smooth(layer=...)` computes): the engine's layer
substitution registers a new forward hook per pass, which would make dynamo recompile every
pass, so this is the most compile could win.

Reported: the first compiled call (compile time included) against an eager call, the steady
calls after it, and how many calls of n it takes for the compiled copy to catch up. Calls are
interleaved (eager, compiled, eager, compiled, ...) after the first compiled call.

    python benchmarks/text_compile.py                  # BERT-base: 12 layers, 128 tokens
    python benchmarks/text_compile.py --layers 2 --calls 3
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


def bfloat16_copy(model: nn.Module) -> nn.Module:
    """The model with every Linear's weight and bias in bfloat16 (cast once)."""
    inner = copy.deepcopy(model).eval()
    for module in inner.modules():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16), False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(torch.bfloat16), False)
    return inner


def explainer(forward: Callable[..., Tensor], clean: Tensor, mask: Tensor, sigma: float,
              samples: int, rows: int) -> Callable[[], Tensor]:
    """() -> the SmoothGrad map of class 1 over `samples` noisy copies, in passes of `rows`."""
    def run() -> Tensor:
        generator = torch.Generator().manual_seed(0)
        total = torch.zeros_like(clean[0])
        for start in range(0, samples, rows):
            count = min(rows, samples - start)
            noisy = (clean + sigma * torch.randn((count, *clean.shape[1:]),
                                                 generator=generator)).requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = forward(inputs_embeds=noisy, attention_mask=mask.expand(count, -1))
            (grad,) = torch.autograd.grad(logits[:, 1].float().sum(), noisy)
            total += grad.sum(dim=0)
        return total / samples
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--calls", type=int, default=3, help="steady calls of each after the "
                                                             "first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} uptime: {load}")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        num_hidden_layers=args.layers, num_labels=2)).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    ids = torch.randint(1000, 30000, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model.get_input_embeddings()(ids)
    sigma = 0.15 * float(clean.max() - clean.min())
    mask = torch.ones_like(ids)
    inner = bfloat16_copy(model)

    def logits_of(net: Callable[..., object]) -> Callable[..., Tensor]:
        return lambda **kwargs: net(**kwargs).logits  # type: ignore[attr-defined,no-any-return]

    eager = explainer(logits_of(inner), clean, mask, sigma, args.samples, args.rows)
    compiled = explainer(logits_of(torch.compile(inner)), clean, mask, sigma, args.samples,
                         args.rows)
    eager()  # warm-up (oneDNN primitives)
    started = time.perf_counter()
    reference = eager()
    first_eager = time.perf_counter() - started
    started = time.perf_counter()
    result = compiled()
    first_compiled = time.perf_counter() - started
    print(f"# first calls: eager {first_eager:.1f} s, compiled {first_compiled:.1f} s "
          "(compile included)", flush=True)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.calls):
        for name, run in (("eager", eager), ("compiled", compiled)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
        print(f"# round: eager {times['eager'][-1]:.1f} s, compiled "
              f"{times['compiled'][-1]:.1f} s", flush=True)
    a, b = reference.flatten().double(), result.flatten().double()
    steady = {name: statistics.median(values) for name, values in times.items()}
    gain = steady["eager"] - steady["compiled"]
    cost = first_compiled - steady["compiled"]
    catch_up = "never" if gain <= 0 else f"{cost / gain:.0f} calls"
    print(f"BERT {args.layers} layers, {args.tokens} tokens, n={args.samples}, passes of "
          f"{args.rows}: eager {steady['eager']:.1f} s, compiled {steady['compiled']:.1f} s "
          f"steady, first compiled call {first_compiled:.1f} s; compile pays off after "
          f"{catch_up}; map correlation {float(torch.corrcoef(torch.stack([a, b]))[0, 1]):.6f}")
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# uptime after: {after}")


if __name__ == "__main__":
    main()
