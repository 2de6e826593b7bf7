"""What outputs name (issue 23): files named after the aggregate they hold, and every figure
naming the class its map explains with its probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import smoothgrad as sg
from smoothgrad import images
from smoothgrad.cli import main

CAT = str(images.sample_path("chelsea"))

TINY = '''
import numpy as np, torch
from torch import nn

def build():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model, squash

def squash(image):
    a = np.asarray(image.resize((12, 16)), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)
'''


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    (tmp_path / "sg_outputs_tiny.py").write_text(TINY)
    return f"{tmp_path / 'sg_outputs_tiny.py'}:build"


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


# ------------------------------------------------------------ files named after the aggregate


@pytest.mark.parametrize(("aggregate", "name"), [("mean", "smoothgrad"), ("abs", "abs"),
                                                 ("square", "square"), ("var", "vargrad")])
def test_explain_names_array_files_after_the_aggregate(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path, tiny: str,
                                                       aggregate: str, name: str) -> None:
    """Issue 23: `--aggregate square` wrote its SmoothGrad² map as `*_smoothgrad.npy`."""
    out = tmp_path / "out"
    code, err = call(capsys, "explain", CAT, "--model", tiny, "--samples", "3", "--aggregate",
                     aggregate, "--save", "npy", "--out", str(out), "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"chelsea_gradient{suffix}.npy" for suffix in ("", f"_{name}", f"_{name}_stderr"))
    model = sg.models.load(tiny)
    x = model.preprocess(images.load(CAT))
    want = sg.smooth(model, x, samples=3, aggregate=aggregate)
    saved = np.load(out / f"chelsea_gradient_{name}.npy")
    torch.testing.assert_close(torch.from_numpy(saved), want.attribution[0])
