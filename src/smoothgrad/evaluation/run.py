"""`evaluate`: every metric for each base method, plain and smoothed, sharing their work."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from smoothgrad.config import SmoothConfig
from smoothgrad.engine import SmoothResult, smooth
from smoothgrad.evaluation.settings import (
    SMOOTHING_NAMES,
    Evaluation,
    MetricOptions,
    Progress,
    settings_from,
)
from smoothgrad.maps import to_map
from smoothgrad.metrics import (
    Explainer,
    RandomizationRow,
    complexity,
    faithfulness,
    robustness,
    sanity,
)
from smoothgrad.metrics.base import resolve_target
from smoothgrad.metrics.similarity import spearman
from smoothgrad.tables import Row

__all__ = ["evaluate", "explainer", "randomization", "smooth_all"]


def explainer(method: str | Callable[..., Tensor], aggregate: str | None = None,
              **smooth_kwargs: Any) -> Explainer:
    """`(model, x, target) -> map`: the base method alone (aggregate None) or its SmoothGrad.

    Example:
        >>> model = torch.nn.Linear(4, 3).eval()
        >>> explain = explainer("gradient", "square", samples=5, seed=1)
        >>> explain(model, torch.rand(2, 4), torch.tensor([0, 2])).shape
        torch.Size([2, 4])
    """
    def explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        if aggregate is None:
            return _plain(model, x, method, target)
        return smooth(model, x, method=method, target=target, aggregate=aggregate,
                      **smooth_kwargs).attribution

    return explain


def evaluate(model: nn.Module, x: Tensor, config: Evaluation | None = None, *,
             target: int | Tensor | None = None, names: Sequence[str] | None = None,
             log: Callable[[str], None] | None = None, progress: Progress | None = None,
             **settings: Any) -> list[Row]:
    """Every metric for each base method, plain and with each SmoothGrad aggregate.

    One row per example of `x` (N, C, H, W) and variant, keyed like `COLUMNS`: `smoothing`
    is "none" or the aggregate; `relative_error` (‖stderr‖/‖map‖) and `flip_rate` are None for
    the plain method. Deletion and insertion rank pixels by |map| summed over channels. `config`
    says what to compute (default `Evaluation()`); keywords (`methods=`, `steps=`, `samples=`,
    ...) build it with `Evaluation.of` (or override `config`'s fields). `log` gets a line per
    variant, `progress` each metric's progress. See the module example.
    """
    config = settings_from(Evaluation, settings, config)
    names = [str(i) for i in range(x.shape[0])] if names is None else list(names)
    run = Run(model, x, target, config.smoothing, config.options, progress)
    rows: list[Row] = []
    for method in config.methods:
        variants = run.variants(method, config.aggregates)
        scores = {key: run.map_scores(m, config.metrics, f"{method} {key}")
                  for key, (m, _) in variants.items()}
        if "sensitivity" in config.metrics:
            for key, value in run.sensitivity(method, variants).items():
                scores[key].update(value)
        if "randomization" in config.metrics:
            for key, rho in run.randomization(method, variants).items():
                scores[key]["randomization_spearman"] = rho
        for key, (_, result) in variants.items():
            rows += [_row(name, i, method, key, result, scores[key]) for i, name in
                     enumerate(names)]
            if log is not None:
                log(f"{method} {SMOOTHING_NAMES[key]}: done")
    return rows


def _row(name: str, i: int, method: str, smoothing: str, result: SmoothResult | None,
         scores: Mapping[str, Tensor]) -> Row:
    return {"image": name, "method": method, "smoothing": smoothing,
            "samples": 1 if result is None else result.samples,
            "relative_error": None if result is None else float(result.relative_error()[i]),
            "flip_rate": None if result is None or result.flip_rate is None
            else float(result.flip_rate[i]),
            **{key: float(value[i]) for key, value in scores.items()}}


class Run:
    """One `evaluate` call on one batch: the maps and the work they share, computed once."""

    def __init__(self, model: nn.Module, x: Tensor, target: int | Tensor | None,
                 smoothing: SmoothConfig, options: MetricOptions,
                 progress: Progress | None) -> None:
        with torch.no_grad():
            self.clean = model(x)  # the clean output: resolves the target, feeds infidelity
        self.model, self.x = model, x
        self.target = resolve_target(model, x, target, clean=self.clean)
        self.smoothing, self.options, self.progress = smoothing, options, progress
        self.rows = options.pass_size(smoothing, x.device)
        self.shared: dict[str, Any] = {}
        self.counters: dict[str, list[int]] = {}
        self.samples = smoothing.limit

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def report(self, task: str, total: int) -> Callable[[int], None]:
        """A per-pass counter for `task` (kept across calls) that forwards to `progress`."""
        done = self.counters.setdefault(task, [0])

        def advance(count: int) -> None:
            done[0] += count
            if self.progress is not None:
                self.progress(task, done[0], total)

        return advance

    def variants(self, method: str, aggregates: Sequence[str], *, x: Tensor | None = None,
                 model: nn.Module | None = None, seed_offset: int = 0, task: str = "maps",
                 calls: int = 1) -> dict[str, tuple[Tensor, SmoothResult | None]]:
        """The plain map and every aggregate's map (one run of noisy passes for all); `x` has
        the rows of the evaluated batch; `calls` is how many such calls make up `task`."""
        x = self.x if x is None else x
        model = self.model if model is None else model
        out: dict[str, tuple[Tensor, SmoothResult | None]] = {}
        if seed_offset == 0:
            out["none"] = (_plain(model, x, method, self.target), None)
        if aggregates:
            smoothing = self.smoothing
            if seed_offset:
                smoothing = smoothing.replace(seed=smoothing.seed + seed_offset)
            results = smooth_all(model, x, method, self.target, aggregates, smoothing,
                                 progress=self.report(f"{method} {task}", calls * self.samples))
            out.update({a: (r.attribution.detach(), r) for a, r in results.items()})
        return out

    def map_scores(self, m: Tensor, metrics: Sequence[str], label: str) -> dict[str, Tensor]:
        """The metrics that need only the map (and forward passes of the model); `label`
        names the map in progress reports."""
        scores: dict[str, Tensor] = {}
        if "total_variation" in metrics:
            scores["total_variation"] = complexity.total_variation(m)
        if "gini" in metrics:
            scores["gini"] = complexity.gini(to_map(m, activation="abs"))
        kinds = tuple(k for k in faithfulness.CURVE_KINDS if k in metrics)
        if kinds:
            steps = self.options.curve_steps
            substrates = self.once("substrates", lambda: {
                kind: faithfulness.substrate_image(self.x, name, rise=self.options.rise)
                for kind, name in self.options.substrates().items()})
            points = faithfulness.schedule(self.x.shape[2] * self.x.shape[3], steps,
                                           self.x.device, self.x.dtype)[0].shape[0]
            total = len(kinds) * points * self.x.shape[0]
            curves = faithfulness.curves(
                self.model, self.x, to_map(m, activation="abs"), self.target, kinds=kinds,
                steps=steps, batch_size=self.rows, substrates=substrates,
                progress=self.report(f"{label} {'/'.join(kinds)}", total))
            for kind, curve in curves.items():
                scores[f"{kind}_auc"] = curve.auc
        if "infidelity" in metrics:
            perturbations, drops = self.once("infidelity", self._infidelity_drops)
            scores["infidelity"] = faithfulness.infidelity_score(
                m, perturbations, drops, normalize=self.options.infidelity_normalize)
        return scores

    def _infidelity_drops(self) -> tuple[Tensor, Tensor]:
        k = self.options.infidelity_perturbations
        perturbations = faithfulness.gaussian_perturbations(self.x, k, self.options.infidelity_std)
        drops = faithfulness.infidelity_drops(
            self.model, self.x, self.target, perturbations, batch_size=self.rows,
            clean=self.clean.gather(1, self.target[:, None]).squeeze(1),
            progress=self.report("infidelity", k * self.x.shape[0]))
        return perturbations, drops

    def sensitivity(self, method: str, variants: Mapping[str, tuple[Tensor, Any]]
                    ) -> dict[str, dict[str, Tensor]]:
        """Max-sensitivity of every variant, and the noise floor of the smoothed ones."""
        n, k = self.x.shape[0], self.options.sensitivity_perturbations
        perturbations = self.once("sensitivity", lambda: robustness.uniform_perturbations(
            self.x, k, self.options.sensitivity_radius))
        aggregates = [key for key in variants if key != "none"]
        inputs = (self.x.unsqueeze(1) + perturbations).flatten(0, 1)
        maps: dict[str, list[Tensor]] = {key: [] for key in variants}
        for i in range(0, n * k, n):  # n rows per call, as the explainer would be called
            for key, (m, _) in self.variants(method, aggregates, x=inputs[i : i + n],
                                             task="sensitivity", calls=k).items():
                maps[key].append(m)
        out = {key: {"sensitivity_max": robustness.max_relative_change(
            variants[key][0], torch.stack(ms, dim=1))} for key, ms in maps.items()}
        floors: dict[str, list[Tensor]] = {key: [] for key in aggregates}
        for s in range(1, self.options.floor_seeds + 1):
            for key, (m, _) in self.variants(method, aggregates, seed_offset=s,
                                             task="noise floor",
                                             calls=self.options.floor_seeds).items():
                floors[key].append(m)
        for key, ms in floors.items():
            out[key]["sensitivity_floor"] = robustness.max_relative_change(
                variants[key][0], torch.stack(ms, dim=1))
        return out

    def randomization(self, method: str, variants: Mapping[str, tuple[Tensor, Any]]
                      ) -> dict[str, Tensor]:
        """Spearman of |map| with the map of the fully re-initialised model, per variant."""
        randomized = self.once("randomized", lambda: sanity.randomized_copy(self.model))
        aggregates = [key for key in variants if key != "none"]
        maps = self.variants(method, aggregates, model=randomized, task="randomization")
        return {key: spearman(to_map(variants[key][0], activation="abs"),
                              to_map(m, activation="abs")) for key, (m, _) in maps.items()}


def smooth_all(model: nn.Module, x: Tensor, method: str | Callable[..., Tensor],
               target: Tensor, aggregates: Sequence[str], smoothing: SmoothConfig, *,
               progress: Callable[[int], None] | None = None) -> dict[str, SmoothResult]:
    """`smooth` with the options `smoothing` for several aggregates, all from one run of
    noisy passes."""
    result = smooth(model, x, smoothing, method=method, target=target,
                    aggregate=tuple(aggregates), progress=progress)
    return {a: result.select(a) for a in aggregates}


def _plain(model: nn.Module, x: Tensor, method: str | Callable[..., Tensor],
           target: Tensor) -> Tensor:
    """The base method's map (no noise, one pass)."""
    return smooth(model, x, method=method, target=target, samples=1, noise=0.0).attribution


def randomization(explain: Explainer, model: nn.Module, x: Tensor,
                  target: int | Tensor | None = None, *, groups: Mapping[str, Sequence[str]],
                  seed: int = 0) -> list[RandomizationRow]:
    """`metrics.sanity.grouped_randomization`: the randomisation check by layer groups.

    Example:
        >>> from smoothgrad.methods import gradient
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(),
        ...                             torch.nn.Linear(2 * 14 * 14, 3))
        >>> rows = randomization(gradient, model, torch.rand(1, 3, 16, 16), groups={"all": [""]})
        >>> [row.layer for row in rows]
        ['original', 'all', 'random map']
    """
    return sanity.grouped_randomization(explain, model, x, target, groups=groups, seed=seed)
