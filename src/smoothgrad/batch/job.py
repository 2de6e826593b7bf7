"""What a batch run is asked to do: one typed, checked object (the command line builds it).

Example:
    >>> job = Job("photos/", Path("maps"), SmoothConfig(samples=20), figures=viz.Style())
    >>> job.smoothing.samples, job.figures.percentile
    (20, 99.0)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import smoothgrad
from smoothgrad import viz
from smoothgrad.batch.sources import BatchError
from smoothgrad.batch.store import Settings, model_fingerprint
from smoothgrad.config import SmoothConfig
from smoothgrad.models import DEFAULT_MODEL
from smoothgrad.tuning import default_batch_size

__all__ = ["DTYPES", "Job", "images_per_batch"]

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Job:
    """A `smoothgrad batch` run: inputs, output folder, model, smoothing and output options.

    ``input`` is a folder, a list file, a glob or an image (see :func:`collect`); ``figures``
    is the style of the PNG maps, or None for none; ``target`` a class index or label, None
    for each image's prediction; ``workers`` decoding processes per rank (None: automatic);
    ``threads`` torch's intra-op CPU threads in every rank (None: the count recorded in
    ``out`` by an earlier run, else this process's); ``progress`` shows a progress bar on a
    terminal; ``smoothing`` the options of :func:`smoothgrad.smooth` (its
    ``batch_size="auto"`` means the device's fixed default here, so reruns are exact).
    """

    input: str
    out: Path
    smoothing: SmoothConfig = field(default_factory=SmoothConfig)
    model: str = DEFAULT_MODEL
    weights: Path | None = None
    device: str = "cpu"
    target: int | str | None = None
    dtype: str = "float32"
    figures: viz.Style | None = None
    images_per_batch: int | str = "auto"
    workers: int | None = None
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [(isinstance(self.smoothing.method, str),
                   "a batch run needs a built-in method, given by name"),
                  (self.dtype in DTYPES, f"dtype {self.dtype!r} is not one of "
                                         f"{', '.join(DTYPES)}"),
                  (self.weights is None or os.path.isfile(self.weights),
                   f"--weights: no such file '{self.weights}'"),
                  (self.threads is None or (isinstance(self.threads, int)
                                            and self.threads >= 1),
                   f"threads must be a positive integer, got {self.threads!r}")]
        for ok, message in checks:
            if not ok:
                raise BatchError(message)

    def settings(self, model: nn.Module, device: torch.device, target: int | None, *,
                 keys: str, threads: int) -> Settings:
        """The manifest of this job with `model` (the user's module) on `device`, its outputs
        keyed as `keys` says (`store.keys_option`), run with `threads` intra-op threads."""
        config = self.smoothing
        rows = default_batch_size(device) if config.batch_size == "auto" else config.batch_size
        group = images_per_batch(self.images_per_batch, rows, config.samples)
        options: dict[str, Any] = {
            "model": _model_spec(self.model),
            "model_sha256": model_fingerprint(model),
            "method": config.method_name,
            "samples": config.samples,
            "noise": config.noise if config.stdev is None else None,
            "stdev": config.stdev,
            "aggregate": config.as_dict()["aggregate"],
            "seed": config.seed,
            "antithetic": config.antithetic,
            "target": target,
            "dtype": self.dtype,
            "keys": keys,
        }
        if config.fast:
            options["fast"] = True
        if config.samples == "auto":
            options.update(tol=config.tol, max_samples=config.max_samples)
        numerics = {"device": device.type, "batch_size": rows, "images_per_batch": group,
                    "threads": threads if device.type == "cpu" else None,
                    "torch": torch.__version__, "smoothgrad": smoothgrad.__version__}
        # "labelled": figures name their class (issue 23); older runs' figures are redrawn
        figures = (None if self.figures is None
                   else {**asdict(self.figures), "labelled": True})
        return Settings(options, numerics, rows, group, target, figures)


def images_per_batch(requested: int | str, rows: int, samples: int | str) -> int:
    """Images explained together: `requested`, or (auto) as many as fill one pass.

    Example:
        >>> images_per_batch("auto", 64, 10), images_per_batch("auto", 8, 50)
        (6, 1)
    """
    if samples == "auto":
        return 1  # adaptive n stops when all images of a call converge: keep them apart
    if isinstance(requested, int):
        return requested
    return max(1, rows // int(samples))


def _model_spec(spec: str) -> str:
    where, colon, attr = spec.rpartition(":")
    if colon and (where.endswith(".py") or "/" in where or "\\" in where):
        return f"{os.path.abspath(where)}:{attr}"
    return spec
