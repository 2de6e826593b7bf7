"""Shared pieces of the speed benchmarks: the implementations a user would pick, timed alike.

Every implementation is a function `(x) -> attribution` closed over its model, target and σ,
so the timing loop treats them the same: warm-up, then rounds in which each runs once in
turn (A B C A B C ...), so that a machine shared with other work slows them all alike.
Reported: the median time per implementation and, for ratios, the median of the per-round
ratios.
"""

from __future__ import annotations

import copy
import functools
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import smoothgrad as sg
from smoothgrad import tuning

Explain = Callable[[Tensor], Tensor]


def sigma_of(x: Tensor) -> float:
    """The absolute σ of the default relative noise for the whole batch `x` (for Captum)."""
    return float(sg.DEFAULT_NOISE * (x.max() - x.min()))


class Sections:
    """A benchmark's report: markdown sections and the JSON data behind them."""

    def __init__(self, device: torch.device, **data: Any) -> None:
        self.md: list[str] = []
        self.data: dict[str, Any] = {"machine": machine(device),
                                     "date": time.strftime("%Y-%m-%d %H:%M"), **data}

    def log(self, text: str) -> None:
        print(text, flush=True)

    def section(self, title: str) -> None:
        self.log(f"\n## {title}")
        self.md.append(f"\n### {title}\n")


def one_map_impls(model: nn.Module, x: Tensor, target: int, samples: int, sigma: float,
                  captum_chunk: int | None) -> tuple[dict[str, Explain], int, int]:
    """The five ways to make one map, timed in both benchmarks' first table, with the tuned
    sizes of ours (default and fast)."""
    rows = settle_tuner(model, x, samples)
    fast_rows = settle_tuner(model, x, samples, fast=True)
    impls = {
        "tutorial loop": tutorial_loop(model, target, samples, sigma),
        "captum default": captum_smoothgrad(model, target, samples, sigma, None),
        f"captum best (chunk {captum_chunk})": captum_smoothgrad(model, target, samples, sigma,
                                                                 captum_chunk),
        f"ours default (auto: {rows})": ours(model, samples),
        f"ours fast (auto: {fast_rows})": ours(model, samples, fast=True),
    }
    return impls, rows, fast_rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- implementations


def tutorial_loop(model: nn.Module, target: int, samples: int, sigma: float) -> Explain:
    """The tutorial's SmoothGrad: one noisy copy per pass, `.backward()` (weight grads too)."""

    def run(x: Tensor) -> Tensor:
        total = torch.zeros_like(x)
        for _ in range(samples):
            noisy = (x + sigma * torch.randn_like(x)).requires_grad_(True)
            model.zero_grad()
            model(noisy)[0, target].backward()
            assert noisy.grad is not None
            total += noisy.grad
        return total / samples

    return run


def captum_smoothgrad(model: nn.Module, target: int | Tensor, samples: int, sigma: float,
                      chunk: int | None, base: str = "saliency",
                      **base_kwargs: Any) -> Explain:
    """Captum's NoiseTunnel over Saliency (signed gradient), GuidedBackprop or IG."""
    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

    method: Any = {"saliency": Saliency, "guided_backprop": GuidedBackprop,
                   "integrated_gradients": IntegratedGradients}[base](model)
    if base == "saliency":
        base_kwargs = {"abs": False, **base_kwargs}
    tunnel = NoiseTunnel(method)

    def run(x: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result: Tensor = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=samples,
                                              nt_samples_batch_size=chunk, stdevs=sigma,
                                              target=target, **base_kwargs)
        return result

    return run


def ours(model: nn.Module, samples: int, *, method: Any = "gradient",
         batch_size: int | str = "auto", fast: bool = False, seed: int = 0) -> Explain:
    def run(x: Tensor) -> Tensor:
        return sg.smooth(model, x, method=method, samples=samples, noise=sg.DEFAULT_NOISE,
                         batch_size=batch_size, fast=fast, seed=seed).attribution  # type: ignore[arg-type]

    return run


def ig_method(steps: int, batch_size: int) -> Any:
    return functools.partial(sg.methods.integrated_gradients, steps=steps, batch_size=batch_size)


def settle_tuner(model: nn.Module, x: Tensor, samples: int, *, method: Any = "gradient",
                 fast: bool = False, calls: int = 8) -> int:
    """Run `smooth` until its batch-size search has finished; return the chosen size."""
    for _ in range(calls):
        sg.smooth(model, x, method=method, samples=samples, fast=fast)
        tuner = tuning.tuner_for(model, method, x, fast)
        if tuner.finished:
            return tuner.rows
    return tuning.tuner_for(model, method, x, fast).rows


# ------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def interleaved(impls: dict[str, Explain], x: Tensor, rounds: int, *, warmup: int = 1,
                log: Callable[[str], None] = print) -> dict[str, Timing]:
    """Time each implementation once per round, in turn; `warmup` untimed rounds first."""
    device = x.device
    timings = {name: Timing(name) for name in impls}
    for r in range(warmup + rounds):
        for name, fn in impls.items():
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn(x)
            sync(device)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            if r >= warmup:
                timings[name].seconds.append(elapsed)
                timings[name].cpu_seconds.append(cpu)
        if r >= warmup:
            log(f"  round {r - warmup + 1}/{rounds}: " + ", ".join(
                f"{n} {t.seconds[-1]:.3f}s" for n, t in timings.items()))
    return timings


def ratio(timings: dict[str, Timing], slow: str, fast: str, *, cpu: bool = False) -> float:
    """Median over rounds of time(slow) / time(fast): robust to the machine's drift.
    `cpu`: of the process's CPU time instead of wall time."""
    def times(name: str) -> list[float]:
        return timings[name].cpu_seconds if cpu else timings[name].seconds

    return statistics.median(a / b for a, b in zip(times(slow), times(fast), strict=True))


def best_chunk(
    make: Callable[[int | None], Explain], x: Tensor, chunks: Sequence[int | None],
    rounds: int, log: Callable[[str], None] = print,
) -> tuple[int | None, dict[str, float]]:
    """The chunk size among `chunks` with the lowest median time (interleaved)."""
    impls = {str(c): make(c) for c in chunks}
    timings = interleaved(impls, x, rounds, log=log)
    medians = {name: t.median for name, t in timings.items()}
    winner = min(medians, key=medians.__getitem__)
    return (None if winner == "None" else int(winner)), medians


def correlation(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------- reporting


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": _cpu_name(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        import captum
        info["captum"] = captum.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(out: Path | None, markdown: str, data: dict[str, Any]) -> None:
    print(markdown)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown + "\n")
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Timing):
        return asdict(value)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    return repr(value)


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Make VmHWM (the peak resident size) start again from the current size."""
    Path("/proc/self/clear_refs").write_text("5")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy for implementations that would otherwise disturb each other's hooks."""
    return copy.deepcopy(model).eval()
