"""Running a batch job: plan on rank 0, explain this rank's groups, write, merge the index.

Example (in-process, no command line)::

    from smoothgrad.batch import Job, run
    summary = run(Job("photos/", Path("maps"), samples=20))
    print(summary.text)
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import smoothgrad.batch.sources as inputs
from smoothgrad import guard, models, viz
from smoothgrad.batch.job import Job
from smoothgrad.batch.sources import BatchError, Decoded, Source, collect, key_root
from smoothgrad.batch.store import (
    Lock,
    Plan,
    Settings,
    earlier_run,
    groups_for,
    keys_option,
    plan,
    read_record,
    write_failure,
    write_figure,
    write_index,
    write_outputs,
)
from smoothgrad.batch.world import World
from smoothgrad.engine import smooth
from smoothgrad.errors import raised_by_smoothgrad
from smoothgrad.files import OutputError, one_line

__all__ = ["Outcome", "RunWarning", "Summary", "explain_group", "run"]


class RunWarning(UserWarning):
    """Something the user should know about a resumed or overwritten run."""


@dataclass
class Summary:
    """How a run went: the exit code (0 all explained, 1 some failed, 2 refused), the
    records of every input (rank 0 only) and the summary text (rank 0 only)."""

    code: int
    records: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


@dataclass
class Outcome:
    """One image's attribution, its standard error and the numbers of its index row;
    `converged` is None unless samples="auto"."""

    attribution: Tensor
    stderr: Tensor
    target: int
    probability: float
    samples: int
    flip_rate: float
    relative_error: float
    converged: bool | None


@dataclass
class _Context:
    """What every step of one rank's run needs."""

    job: Job
    world: World
    model: models.LoadedModel
    conf: Settings
    plan: Plan
    threads: int


def run(job: Job) -> Summary:
    """Explain every image of `job.input` into `job.out`; see :mod:`smoothgrad.batch`.

    Raises BatchError (or another ValueError) when the run cannot start: no images, a bad
    option, an output folder in use or holding a run with other options. Under torchrun
    only rank 0 raises; the other ranks return code 2.
    """
    started = time.perf_counter()
    world = World(models.resolve_device(job.device))
    lock = Lock(job.out)
    try:
        with _exact_cudnn(world.device):
            context = _start(job, world, lock)
            with guard.intra_op_threads(context.threads):
                stats = _explain_all(context)
                stats["drawn"] = _draw_all(context) if job.figures is not None else 0
            return _finish(context, stats, time.perf_counter() - started)
    except ValueError:
        if world.rank == 0:
            raise
        return Summary(2)  # rank 0 says it
    finally:
        lock.release()
        world.close()


def _exact_cudnn(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The same cuDNN algorithms every run (for exact resume), restored afterwards."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return guard.cudnn_benchmark(False, deterministic=True)


def _start(job: Job, world: World, lock: Lock) -> _Context:
    """Find the inputs and load the model (every rank); rank 0 plans, every rank learns it."""
    found: list[Source] | str = []
    root, threads = None, job.threads
    if world.rank == 0:
        found, root, threads = _inputs(job)
    found, root, threads = world.broadcast((found, root, threads))
    if isinstance(found, str):
        raise BatchError(found)
    model = models.load(job.model, weights=job.weights, device=world.device)
    try:
        target = None if job.target is None else model.class_index(job.target)
    except models.ModelError as exc:
        raise BatchError(f"--{exc}") from None
    conf = job.settings(model.module, world.device, target, keys=keys_option(root),
                        threads=threads)
    made = Plan()
    if world.rank == 0:
        try:
            made = plan(job.out, conf, found, job.overwrite, lock)
        except (BatchError, OSError) as exc:
            made = Plan(error=one_line(exc))
    made = world.broadcast(made)
    if made.error is not None:
        raise BatchError(made.error)
    if world.rank != 0:
        lock.take(exclusive=False)
    if world.rank == 0:
        for warning in made.warnings:
            warnings.warn(warning, RunWarning, stacklevel=3)
    return _Context(job, world, model, conf, made, threads)


def _inputs(job: Job) -> tuple[list[Source] | str, str | None, int]:
    """Rank 0: the inputs (or why there are none) keyed as the run in DIR keys them (so a
    folder and a glob of it resume each other; a new run, or --overwrite, keys them its own
    way), the folder that keys them, and the intra-op threads of every rank: --threads,
    else the earlier run's count (exact resume, also under torchrun), else this process's."""
    earlier = earlier_run(job.out)
    root = key_root(job.input)
    if earlier is not None and not job.overwrite:
        root = earlier.key_root(root)
    threads = job.threads or (earlier.threads if earlier else None) or torch.get_num_threads()
    try:
        return collect(job.input, job.out, root), root, threads
    except BatchError as exc:
        return str(exc), root, threads


def _explain_all(context: _Context) -> dict[str, Any]:
    """Explain this rank's groups; returns its counts, time and peak memory."""
    from tqdm import tqdm

    job, world, sources, todo = context.job, context.world, context.plan.sources, context.plan.todo
    groups = groups_for(todo, len(sources), context.conf.group, world.rank, world.size)
    unfinished = set(todo)
    mine = sum(len(unfinished.intersection(g)) for g in groups)
    workers = inputs.workers(job.workers, world.local_size)
    begun = time.perf_counter()
    explained = samples = 0
    with tqdm(total=mine, unit="img", desc="smoothgrad batch", dynamic_ncols=True,
              disable=not job.progress or world.rank != 0 or not sys.stderr.isatty(),
              file=sys.stderr) as bar:
        loader = inputs.decode(sources, groups, context.plan.errors, context.model.preprocess,
                               world.device, workers) if groups else iter([])
        for batch in loader:
            records = _explain_batch(context, batch, unfinished)
            explained += sum(r["status"] == "ok" for r in records)
            samples += sum(r["samples"] or 0 for r in records)
            bar.update(len(records))
            seconds = time.perf_counter() - begun
            bar.set_postfix_str(f"{samples / seconds:.1f} samples/s", refresh=False)
    return {"explained": explained, "samples": samples, "seconds": time.perf_counter() - begun,
            "attempted": mine, "memory": _peak_memory(world.device, workers > 0)}


def _finish(context: _Context, mine: dict[str, Any], seconds: float) -> Summary:
    """Gather every rank's counts; rank 0 writes the index and the summary."""
    world, out, sources = context.world, context.job.out, context.plan.sources
    stats = world.gather(mine)
    if world.rank != 0:
        return Summary(0)
    records = [read_record(source, out) or _missing(source) for source in sources]
    index = write_index(out, records)
    failed = [r for r in records if r["status"] != "ok"]
    text = _summary(records, failed, stats, context.plan, index, world.device, world.size,
                    seconds)
    return Summary(1 if failed else 0, records, text)


def explain_group(model: models.LoadedModel, xs: Sequence[Tensor], job: Job,
                  conf: Settings) -> list[Outcome]:
    """Explain images (1, C, H, W) of one shape as one `smooth` call, in order."""
    x = torch.cat(list(xs))
    with torch.no_grad():
        probabilities = model(x).float().softmax(dim=1)
    target = (probabilities.argmax(dim=1) if conf.target is None
              else torch.full((x.shape[0],), conf.target, device=x.device))
    config = job.smoothing.replace(batch_size=conf.rows)
    result = smooth(model, x, config, target=target)
    flips, errors = result.flip_rate, result.relative_error().tolist()
    return [Outcome(result.attribution[i], result.stderr[i], int(target[i]),
                    float(probabilities[i, target[i]]), result.samples,
                    float(flips[i]) if flips is not None else math.nan, errors[i],
                    errors[i] <= config.tol if config.samples == "auto" else None)
            for i in range(x.shape[0])]


def _by_shape(items: Sequence[Decoded]) -> list[list[Decoded]]:
    shapes: dict[tuple[int, ...], list[Decoded]] = {}
    for item in items:
        shapes.setdefault(tuple(item.data.shape), []).append(item)
    return list(shapes.values())


def _explain_batch(context: _Context, batch: list[Decoded],
                   todo: set[int]) -> list[dict[str, Any]]:
    """Explain one group (all its readable images, as in any run) and save its unfinished
    images; returns their records."""
    results: dict[int, Outcome | str] = {
        item.position: item.error for item in batch if item.error is not None}
    for same in _by_shape([item for item in batch if item.error is None]):
        try:
            done = explain_group(context.model, [item.data for item in same], context.job,
                                 context.conf)
        except Exception as exc:  # e.g. the user's model fails on this input: record it
            if raised_by_smoothgrad(exc):
                raise  # a bug of ours is not this image's failure
            message = one_line(exc)
            results.update({item.position: message for item in same})
        else:
            results.update({item.position: d for item, d in zip(same, done, strict=True)})
    records = []
    out = context.job.out
    for item in batch:
        if item.position not in todo:
            continue
        source, result = context.plan.sources[item.position], results[item.position]
        if isinstance(result, str):
            records.append(write_failure(source, out, result))
            continue
        try:
            records.append(_save(context, source, result))
        except OutputError:
            raise  # a full disk: stop here, the run resumes once there is room
        except OSError as exc:  # e.g. a file name too long for the file system
            records.append(write_failure(source, out, f"cannot write outputs: {one_line(exc)}"))
    return records


def _save(context: _Context, source: Source, done: Outcome) -> dict[str, Any]:
    job, labels = context.job, context.model.labels
    arrays = {"arrays": done.attribution.detach().cpu().numpy().astype(job.dtype),
              "stderr": done.stderr.detach().cpu().numpy().astype(job.dtype)}
    figure = None if job.figures is None else _figure(
        job.figures, arrays["arrays"], viz.class_label(done.target, done.probability, labels))
    record = {"path": source.path, "key": source.key, "status": "ok",
              "array": source.output(Path(), "arrays").as_posix(),
              "stderr": source.output(Path(), "stderr").as_posix(), "target": done.target,
              "label": labels[done.target] if 0 <= done.target < len(labels) else "",
              "probability": done.probability, "samples": done.samples,
              "flip_rate": None if math.isnan(done.flip_rate) else done.flip_rate,
              "relative_error": done.relative_error, "converged": done.converged,
              "error": None}
    return write_outputs(source, job.out, arrays, figure, record)


def _figure(style: viz.Style, array: np.ndarray[Any, Any], label: str) -> bytes:
    """The PNG of a stored attribution array with the class it explains written under it:
    figures depend on the arrays and records only."""
    picture = style.picture(np.asarray(array, dtype=np.float32))
    return viz.png_bytes(viz.captioned(picture, label))


def _draw_all(context: _Context) -> int:
    """Draw this rank's share of the finished images' figures from their stored arrays;
    returns how many were drawn."""
    job, world, sources = context.job, context.world, context.plan.sources
    assert job.figures is not None
    drawn = 0
    for position in context.plan.draw[world.rank::world.size]:
        source = sources[position]
        record = read_record(source, job.out) or {}
        label = viz.class_label(record.get("target", -1), record.get("probability"),
                                context.model.labels)
        try:
            array = np.load(source.output(job.out, "arrays"), allow_pickle=False)
            write_figure(source, job.out, _figure(job.figures, array, label))
            drawn += 1
        except OutputError:
            raise
        except (OSError, ValueError) as exc:  # a damaged array: explain the image again
            write_failure(source, job.out, f"cannot draw its figure: {one_line(exc)}")
    return drawn


def _missing(source: Source) -> dict[str, Any]:
    return {"path": source.path, "key": source.key, "status": "failed",
            "error": "no record was written (a rank stopped early?)"}


def _peak_memory(device: torch.device, workers: bool) -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (the decoding
    workers), in MiB; the GPU's peak allocation on CUDA."""
    import resource

    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    memory = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
              "worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
              if workers else 0.0}
    if device.type == "cuda":
        memory["gpu"] = torch.cuda.max_memory_allocated(device) / 1024**2
    return memory


def _summary(records: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]],
             stats: Sequence[dict[str, Any]], plan: Plan, index: Path, device: torch.device,
             ranks: int, seconds: float) -> str:
    attempted = sum(s["attempted"] for s in stats)
    explained = sum(s["explained"] for s in stats)
    samples = sum(s["samples"] for s in stats)
    busy = max((s["seconds"] for s in stats), default=0.0) or math.inf
    skipped = len(records) - len(plan.todo)
    memory = max(s["memory"]["process"] for s in stats)
    workers = max(s["memory"]["worker"] for s in stats)
    gpu = max((s["memory"].get("gpu", 0.0) for s in stats), default=0.0)
    lines = [f"smoothgrad batch: {len(records)} images, {len(records) - len(failed)} explained "
             f"({skipped} already done, {explained} now), {len(failed)} failed",
             f"  {seconds:.1f} s on {ranks} process{'es' * (ranks > 1)} ({device.type}): "
             f"{explained / busy:.2f} images/s, {samples / busy:.1f} noisy samples/s "
             f"over {attempted} images; peak memory per process {memory:.0f} MiB"
             + (f", per decoding worker {workers:.0f} MiB" if workers else "")
             + (f", GPU {gpu:.0f} MiB" if gpu else "")]
    drawn = sum(s.get("drawn", 0) for s in stats)
    if drawn:
        lines.append(f"  drew {drawn} figure{'s' * (drawn > 1)} of finished images from "
                     "their stored arrays")
    lines += _listed("failed", [f"{r['path']}: {r['error']}" for r in failed])
    lines += _listed("not converged", [
        f"{r['path']} (relative error {r['relative_error']:.3g} after {r['samples']} samples)"
        for r in records if r.get("converged") is False])
    lines.append(f"  index: {index}")
    return "\n".join(lines)


def _listed(what: str, items: Sequence[str], most: int = 5) -> list[str]:
    lines = [f"  {what}: {item}" for item in items[:most]]
    if len(items) > most:
        lines.append(f"  ... and {len(items) - most} more {what}")
    return lines
