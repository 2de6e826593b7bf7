"""Batch runs: explain a whole dataset, resumably, on one process or many (torchrun).

Example:
    $ smoothgrad batch photos/ --out maps/ --samples 50
    $ torchrun --standalone --nproc-per-node 4 -m smoothgrad batch photos/ --out maps/

INPUT is a folder (searched recursively for image files; names starting with "." are
skipped), a text file with one image path a line (relative paths are relative to the
list's folder; blank lines and lines starting with "#" are skipped), a glob
(``"data/**/*.JPEG"``, quoted) or a single image.

Output layout, for an input whose key is ``a/b.jpg``::

    DIR/run.json              the options that determine the outputs (checked on rerun)
                              and the style of the figures in DIR
    DIR/arrays/a/b.jpg.npy    the attribution, (C, H, W) float32 (or --dtype float16)
    DIR/stderr/a/b.jpg.npy    its standard error (per element), same shape and type
    DIR/figures/a/b.jpg.png   with --figures: the map as a colour image, drawn from the array,
                              the explained class and its probability written under it
    DIR/records/a/b.jpg.json  written last: marks the image finished (or failed)
    DIR/index.csv             one row per input, sorted by key: path, array, status,
                              target, label, probability, samples, flip_rate,
                              relative_error, converged (with --samples auto), error

The key is the path relative to INPUT for a folder, and the absolute path without its
leading "/" for lists, globs and single images (``../x.jpg`` run from ``/home/me`` is
``home/x.jpg``). Keys are normalised paths of distinct files, so two inputs never share
an output and no output lies outside DIR; the one remaining clash (a folder named like
another input's output, ``x.npy/`` beside ``x``) is detected and recorded as a failure.
A rerun keys its images the way the run in DIR does (``run.json``'s ``keys``), whatever
INPUT form names them: a glob or list of a folder's images resumes that folder's run, a
folder resumes a list's run under absolute keys, and an image outside the folder of a
folder's run is refused (exit 2); only ``--overwrite`` keys a new run its own way.

Resume. Every file is written to a temporary sibling, fsynced and renamed, and an image's
record is written after its arrays and figure, so a kill at any moment leaves each image
either finished (record present) or not. A rerun skips finished images, retries failed
ones, removes leftover temporary files and rewrites the index; ``run.json`` must match
the new options that change what the arrays mean (model and a hash of its weights,
method, samples, noise, aggregate, seed, antithetic, target, dtype, keys), or the run is
refused
(exit 2) unless ``--overwrite``, which discards DIR's outputs and starts over. Settings
that only change the float rounding (device, threads, batch size, images per batch, torch
version) give a warning instead. Figures are not options: ``--figures`` on a finished run
draws the missing figures from the stored arrays without explaining anything again, and
another figure style draws them all again. A full disk stops the run (exit 2, naming the
file); rerun to resume once there is room.

Exactness. Noise of sample k depends only on (seed, k, shape), but measured on this
project's CPU the *same* image gives different last bits when the pass it is in has a
different number of rows (EfficientNet-Lite0, 1 thread: 8 vs 16 rows differ by 1e-4) or
the process a different number of threads; which other images share a pass of the same
size did not matter. So batches are fixed by the data, not by the run: the sorted inputs
are cut into groups of ``--images-per-batch`` consecutive images once, every group is
explained as one ``smooth`` call (whatever rank runs it, and also when only some of its
images are left to redo after a kill), and ``--batch-size auto`` means the fixed
``default_batch_size(device)`` here rather than the engine's timing-based tuning. The
intra-op threads are fixed per run too: ``--threads N``, else (resuming) the count
``run.json`` recorded, else torch's count in rank 0 (the CPU count in a lone process, 1 under
torchrun, which sets ``OMP_NUM_THREADS=1``); every rank runs with it. Outputs are then
identical bit for bit for any number of ranks and any kill-and-resume history, given the
same thread count: a fresh torchrun run equals a lone process run with ``--threads 1``, and
a run resumed under torchrun keeps the count it started with.

Several processes. Under ``torchrun`` (RANK/WORLD_SIZE in the environment) each rank
takes every WORLD_SIZE-th group of the unfinished ones, runs on its own device
(``cuda:LOCAL_RANK`` with NCCL, else the CPU with gloo), and writes only its images'
files; rank 0 checks ``run.json`` and the finished images first and merges the index
after all ranks are done. DIR must be on a file system every rank sees.

Exit code: 0 when every image is explained, 1 when some failed (see the index), 2 for
bad usage (one line on stderr).

In Python, build a :class:`Job` and :func:`run` it (the command line does the same)::

    from smoothgrad.batch import Job, run
    summary = run(Job("photos/", Path("maps/"), samples=50))

Modules: ``sources`` (finding and decoding the inputs), ``store`` (the output folder: lock,
manifest, records, index), ``world`` (the torchrun ranks), ``job`` (the options),
``runner`` (:func:`run`).
"""

from __future__ import annotations

from smoothgrad.batch.job import DTYPES, Job, images_per_batch
from smoothgrad.batch.runner import RunWarning, Summary, run
from smoothgrad.batch.sources import IMAGE_SUFFIXES, BatchError, Source, collect, output_clashes
from smoothgrad.batch.store import INDEX_COLUMNS

__all__ = [
    "DTYPES",
    "IMAGE_SUFFIXES",
    "INDEX_COLUMNS",
    "BatchError",
    "Job",
    "RunWarning",
    "Source",
    "Summary",
    "collect",
    "images_per_batch",
    "output_clashes",
    "run",
]
