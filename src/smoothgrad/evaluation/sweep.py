"""`sweep`: SmoothGrad of one example over noise levels and sample counts, with convergence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from smoothgrad.engine import SmoothResult, smooth
from smoothgrad.evaluation.run import Run
from smoothgrad.evaluation.settings import DEFAULT_METRICS, Progress, SweepSettings, settings_from
from smoothgrad.metrics.convergence import convergence_row
from smoothgrad.tables import Row

__all__ = ["Sweep", "sweep"]


@dataclass(frozen=True)
class Sweep:
    """What `sweep` returns: maps over noise (at `at_samples`) and over samples (at `at_noise`).

    `noise_maps` and `sample_maps` are lists of (setting, map shaped like x[0]); `rows` holds
    one row per map, keyed like `SWEEP_COLUMNS` (`relative_l2`, `processed_l2` and `spearman`
    compare the samples row with the reference, None in the noise row); `reference` is the
    `reference_samples`-sample map.
    """

    noise_maps: list[tuple[float, Tensor]]
    sample_maps: list[tuple[int, Tensor]]
    rows: list[Row]
    reference: SmoothResult


def sweep(model: nn.Module, x: Tensor, config: SweepSettings | None = None, *,
          target: int | Tensor | None = None, log: Callable[[str], None] | None = None,
          progress: Progress | None = None, **settings: Any) -> Sweep:
    """SmoothGrad of one example `x` (1, C, H, W) over noise levels and sample counts.

    The noise row uses `at_samples` samples, the samples row `at_noise`; maps use `seed` and
    the reference (`reference_samples` samples at `at_noise`) uses `seed + 1`, so they share
    no noise. Each map is scored like `evaluate`'s (TV, Gini, deletion/insertion AUC with
    `steps` steps); the samples row is also compared with the reference
    (`metrics.convergence.convergence_row`): relative L2 of the raw map, of the shown map
    (|map| summed over channels) and Spearman of the shown maps. `config` is a
    `SweepSettings`; keywords build it (or override its fields).

    Example:
        >>> import torch
        >>> from torch.nn import Conv2d, Flatten, Linear, ReLU, Sequential
        >>> model = Sequential(Conv2d(3, 4, 3), ReLU(), Flatten(), Linear(4 * 14 * 14, 3))
        >>> result = sweep(model.eval(), torch.rand(1, 3, 16, 16), noises=[0, 0.2],
        ...                samples=[2, 4], at_samples=4, reference_samples=8, steps=4)
        >>> [(row["row"], row["noise"], row["samples"]) for row in result.rows]
        [('noise', 0.0, 1), ('noise', 0.2, 4), ('samples', 0.15, 2), ('samples', 0.15, 4)]
    """
    if x.shape[0] != 1:
        raise ValueError(f"sweep explains one example, got a batch of {x.shape[0]}")
    config = settings_from(SweepSettings, settings, config)
    run = Run(model, x, target, config.smoothing, config.options, progress)
    target_t = run.target
    cache: dict[tuple[float, int, int], SmoothResult] = {}
    total = (config.reference_samples + len(config.noises) * config.at_samples
             + sum(config.samples))

    def map_at(noise: float, n: int, seed: int = config.seed) -> SmoothResult:
        if (noise, n, seed) not in cache:
            result = smooth(model, x, config.smoothing, method=config.method,
                            target=target_t, samples=n, noise=noise, seed=seed,
                            progress=run.report("maps", total))
            cache[noise, n, seed] = result
            if log is not None and seed == config.seed:
                log(f"{_name(config.method)}: noise {noise:g}, {result.samples} samples")
        return cache[noise, n, seed]

    reference = map_at(config.at_noise, config.reference_samples, config.seed + 1)
    rows: list[Row] = []
    for kind, settings_ in (("noise", [(float(s), config.at_samples) for s in config.noises]),
                            ("samples", [(config.at_noise, int(n)) for n in config.samples])):
        for noise, n in settings_:
            result = map_at(noise, n)
            compared = (convergence_row(n, [result.attribution], reference.attribution)
                        if kind == "samples" else None)
            scores = run.map_scores(result.attribution, DEFAULT_METRICS[:4],
                                    f"{kind} {noise:g} {n}")
            rows.append(_row(kind, noise, result, compared, scores))
    return Sweep(noise_maps=[(float(s), map_at(float(s), config.at_samples).attribution[0])
                             for s in config.noises],
                 sample_maps=[(int(n), map_at(config.at_noise, int(n)).attribution[0])
                              for n in config.samples],
                 rows=rows, reference=reference)


def _row(kind: str, noise: float, result: SmoothResult, compared: Any,
         scores: dict[str, Tensor]) -> Row:
    """One row of the sweep's table (keyed like `SWEEP_COLUMNS`)."""
    return {
        "row": kind, "noise": noise, "samples": result.samples,
        "relative_error": float(result.relative_error()[0]) if result.samples > 1 else None,
        "flip_rate": None if result.flip_rate is None else float(result.flip_rate[0]),
        **_compared(compared), **{key: float(value[0]) for key, value in scores.items()},
    }


def _compared(row: Any) -> dict[str, float | None]:
    if row is None:
        return {"relative_l2": None, "processed_l2": None, "spearman": None}
    return {"relative_l2": float(row.relative_l2[0]), "processed_l2": float(row.shown_l2[0]),
            "spearman": float(row.shown_spearman[0])}


def _name(method: str | Callable[..., Tensor]) -> str:
    return method if isinstance(method, str) else getattr(method, "__name__", repr(method))
