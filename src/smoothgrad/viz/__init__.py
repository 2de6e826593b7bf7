"""Turn attributions into pictures: processed maps, colours, overlays, figures, files.

The pipeline is ``process`` (attribution -> float map) -> ``colorize`` (map ->
RGB) -> ``overlay`` / ``row_figure`` / ``comparison_figure`` -> ``save``.

Headless by construction: figures are plain ``matplotlib.figure.Figure``
objects, never pyplot ones, so no backend is selected and no global figure
registry grows. matplotlib is imported inside the functions that need it.

>>> import numpy as np
>>> from smoothgrad import viz
>>> grad = np.random.default_rng(0).normal(size=(3, 8, 8))
>>> rgb = viz.colorize(viz.process(grad))
>>> rgb.shape, rgb.dtype
((8, 8, 3), dtype('uint8'))
"""

from __future__ import annotations

from smoothgrad.viz.colours import (
    Activation,
    Picture,
    Reduce,
    Style,
    colorize,
    overlay,
    png_bytes,
    process,
    save_heatmap_png,
)
from smoothgrad.viz.figures import (
    Row,
    comparison_figure,
    convergence_figure,
    figure_files,
    row_figure,
    save,
)
from smoothgrad.viz.labels import captioned, class_label

__all__ = [
    "Activation",
    "Picture",
    "Reduce",
    "Row",
    "Style",
    "captioned",
    "class_label",
    "colorize",
    "comparison_figure",
    "convergence_figure",
    "figure_files",
    "overlay",
    "png_bytes",
    "process",
    "row_figure",
    "save",
    "save_heatmap_png",
]
