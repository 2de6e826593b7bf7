"""The work behind the page: one explanation job at a time on the model, events as it goes.

A `Job` is explained by `explain`, which reports through `emit` (JSON-ready dicts): the
input, the top-5, the plain map, the class every map explains (the prediction, or the
page's choice) with its probability, the smoothed map after every pass with its relative
error and flip rate, the standard-error map, a strip of maps over σ, then the downloads. The
`Scheduler` runs jobs one after the other in a worker thread, tells waiting jobs how many
are ahead of them, and stops a job (between two passes) once its page has gone.
No web framework is imported here.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor, nn

from smoothgrad import display, methods, viz
from smoothgrad.config import DEFAULT_NOISE
from smoothgrad.engine import smooth
from smoothgrad.files import one_line
from smoothgrad.methods.registry import title as method_title
from smoothgrad.models import LoadedModel
from smoothgrad.result import SmoothResult

__all__ = ["METHODS", "STRIP_NOISE", "Job", "Results", "Scheduler", "Settings", "explain"]

Event = dict[str, Any]
Emit = Callable[[Event], None]

STRIP_NOISE = (0.0, 0.1, 0.2, 0.3, 0.5)
"""The noise levels of the strip of maps over σ."""
STRIP_SAMPLES = 20
"""Samples per map of the strip (fewer when the job asks for fewer)."""
IG_STEPS = 16
"""Integrated gradients steps on the page (50 in the library): 16 passes per sample."""
MAX_SAMPLES = 500
METHODS = {name: method_title(name) + (f" ({IG_STEPS} steps)" if name == "integrated_gradients"
                                        else "")
           for name in ("gradient", "guided_backprop", "input_x_gradient",
                        "integrated_gradients", "deeplift")}
MAP_UPDATES = 20
"""The smoothed map is sent about this many times per job (the numbers after every pass)."""


class Stopped(Exception):
    """Raised inside the smoothing loop when the job's page has gone."""


@dataclass(frozen=True)
class Settings:
    """What the page asked for: method name, relative σ, samples, whether to draw the strip,
    the class to explain (None: the prediction)."""

    method: str = "gradient"
    noise: float = DEFAULT_NOISE
    samples: int = 50
    strip: bool = True
    seed: int = 0
    target: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of "
                             f"{', '.join(METHODS)}")
        if not (isinstance(self.noise, float) and 0.0 <= self.noise <= 0.5):
            raise ValueError(f"σ must be between 0 and 50 % of the input range, "
                             f"got {self.noise!r}")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"n must be between 1 and {MAX_SAMPLES}, got {self.samples}")

    @property
    def base(self) -> Callable[..., Tensor] | str:
        """The base method as `smooth` takes it (integrated gradients with fewer steps)."""
        if self.method == "integrated_gradients":
            return functools.partial(methods.integrated_gradients, steps=IG_STEPS)
        return self.method


@dataclass
class Job:
    """One request: the image, its settings, where its events go, and its stop flag."""

    image: Image.Image
    name: str
    settings: Settings
    emit: Emit
    id: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    stop: threading.Event = field(default_factory=threading.Event)


class Results:
    """The downloads of the last `keep` finished jobs, in memory: id -> name -> bytes."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._files: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, job_id: str, files: dict[str, bytes]) -> None:
        with self._lock:
            self._files[job_id] = files
            while len(self._files) > self.keep:
                self._files.popitem(last=False)

    def get(self, job_id: str, name: str) -> bytes | None:
        with self._lock:
            return self._files.get(job_id, {}).get(name)


def png(picture: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(picture: npt.NDArray[np.uint8]) -> str:
    return "data:image/png;base64," + base64.b64encode(png(picture)).decode("ascii")


def npy(array: Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.detach().to("cpu", torch.float32).numpy())
    return buffer.getvalue()


def _number(value: float) -> float | None:
    """JSON has no infinity: an infinite relative error is sent as null (shown as ∞)."""
    return value if math.isfinite(value) else None


def explain(model: LoadedModel, job: Job) -> dict[str, bytes]:
    """Run one job on `model`, reporting through `job.emit`; return the files to download.

    Raises `Stopped` once `job.stop` is set (checked after every pass).
    """
    settings, emit = job.settings, job.emit
    x = model.preprocess(job.image)
    emit({"type": "input", "image": data_url(np.asarray(model.crop(job.image)))})
    emit({"type": "top5", "classes": [{"label": label, "probability": round(p, 4)}
                                      for label, p in model.top_k(x)]})
    # every map explains settings.target, or the clean prediction (the top-1 above)
    base = smooth(model, x, method=settings.base, target=settings.target, samples=1, noise=0.0)
    plain = base.attribution
    emit({"type": "plain", "image": data_url(display.map_picture(plain[0]))})
    label = display.explained(base, 0, model.labels) or ""
    emit({"type": "explained", "label": label, "class": model.labels[int(base.target[0])]
          if base.target is not None else None})
    result = _smoothed(model, x, job)
    smoothed = display.map_picture(result.attribution[0])
    stderr = display.map_picture(result.stderr[0], colormap="magma")
    emit({"type": "stderr", "image": data_url(stderr)})
    if settings.strip:
        _strip(model, x, job)
    pictures = {"smoothed": smoothed, "plain": display.map_picture(plain[0]), "stderr": stderr}
    return {**{f"{name}.png": png(viz.captioned(picture, label))  # figures name their class
               for name, picture in pictures.items()},
            "smoothed.npy": npy(result.attribution[0]), "plain.npy": npy(plain[0]),
            "stderr.npy": npy(result.stderr[0])}


def _smoothed(model: nn.Module, x: Tensor, job: Job) -> SmoothResult:
    """The SmoothGrad map, with a `progress` event (and map) after every pass."""
    settings = job.settings
    every = math.ceil(settings.samples / MAP_UPDATES)
    next_map = every

    def report(partial: SmoothResult) -> None:
        nonlocal next_map
        if job.stop.is_set():
            raise Stopped
        event: Event = {
            "type": "progress", "done": partial.samples, "total": settings.samples,
            "relative_error": _number(float(partial.relative_error()[0])),
            "flip_rate": None if partial.flip_rate is None else float(partial.flip_rate[0])}
        if partial.samples >= next_map or partial.samples == settings.samples:
            event["image"] = data_url(display.map_picture(partial.attribution[0]))
            next_map = partial.samples + every
        job.emit(event)

    # about ten passes, so the page sees the map settle (the library's default is larger)
    rows = max(1, min(8, settings.samples // 10))
    return smooth(model, x, method=settings.base, target=settings.target,
                  samples=settings.samples, noise=settings.noise, batch_size=rows,
                  seed=settings.seed, callback=report)


def _strip(model: nn.Module, x: Tensor, job: Job) -> None:
    samples = min(job.settings.samples, STRIP_SAMPLES)
    for noise in STRIP_NOISE:
        if job.stop.is_set():
            raise Stopped
        result = smooth(model, x, method=job.settings.base, target=job.settings.target,
                        samples=samples, noise=noise, seed=job.settings.seed)
        job.emit({"type": "strip", "noise": noise, "samples": result.samples,
                  "relative_error": _number(float(result.relative_error()[0])),
                  "image": data_url(display.map_picture(result.attribution[0]))})


class Scheduler:
    """Runs submitted jobs one at a time in a worker thread, in the order they came.

    Waiting jobs get a `queued` event with the number of jobs ahead of them whenever it
    changes; `cancel` drops a waiting job or stops the running one after its current pass.
    """

    def __init__(self, model: LoadedModel, results: Results,
                 run: Callable[[LoadedModel, Job], dict[str, bytes]] = explain) -> None:
        self.model, self.results, self._run = model, results, run
        self._waiting: list[Job] = []
        self.running: Job | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="smoothgrad-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._waiting.append(job)
            self._announce()
            self._changed.notify_all()

    def cancel(self, job: Job) -> None:
        job.stop.set()
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                self._announce()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the running job, drop the waiting ones, and wait for the worker."""
        with self._changed:
            self._closed = True
            for job in [*self._waiting, *([self.running] if self.running else [])]:
                job.stop.set()
            self._waiting.clear()
            self._changed.notify_all()
        self._thread.join(timeout)

    def _announce(self) -> None:
        busy = self.running is not None
        for place, job in enumerate(self._waiting):
            job.emit({"type": "queued", "ahead": place + busy})

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                job = self.running = self._waiting.pop(0)
                self._announce()
            try:
                job.emit({"type": "started"})
                started = time.perf_counter()
                files = self._run(self.model, job)
                self.results.put(job.id, files)
                job.emit({"type": "done", "id": job.id, "files": sorted(files),
                          "seconds": round(time.perf_counter() - started, 2)})
            except Stopped:
                job.emit({"type": "stopped"})
            except Exception as exc:  # the page shows it; the server goes on
                job.emit({"type": "error", "message": one_line(exc)})
            finally:
                with self._changed:
                    self.running = None
                    self._announce()

