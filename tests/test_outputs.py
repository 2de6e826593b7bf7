"""What outputs name (issue 23): files named after the aggregate they hold, and every figure
naming the class its map explains with its probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import smoothgrad as sg
from conftest import TINY_MODEL, call
from smoothgrad import images

CAT = str(images.sample_path("chelsea"))




@pytest.fixture
def tiny(tmp_path: Path) -> str:
    (tmp_path / "sg_outputs_tiny.py").write_text(TINY_MODEL)
    return f"{tmp_path / 'sg_outputs_tiny.py'}:build"


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


# ------------------------------------------------- every figure names the explained class


def expected_label(model: sg.models.LoadedModel, image_path: str, target: int | None) -> str:
    """The label a figure must carry, computed here from the model's softmax (not by the
    code under test): the explained class (the prediction without a target) and its
    probability, as `viz.class_label` writes it."""
    with torch.no_grad():
        probabilities = model(model.preprocess(images.load(image_path))).softmax(dim=1)[0]
    index = int(probabilities.argmax()) if target is None else target
    return f"{model.labels[index]} (p = {float(probabilities[index]):.3f})"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[sg.viz.Row]:
    """The rows of every comparison figure the command draws."""
    from smoothgrad import viz

    rows: list[viz.Row] = []
    original = viz.comparison_figure

    def record(items: list[viz.Row], **kwargs: object) -> object:
        rows.extend(items)
        return original(items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(viz, "comparison_figure", record)
    return rows


def test_explain_figure_names_the_target_not_the_prediction(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, drawn: list[sg.viz.Row]) -> None:
    """Issue 23: `explain photo.jpg --target "Egyptian cat"` labelled the figure's row with
    the top prediction ("tiger cat 0.39")."""
    code, err = call(capsys, "explain", CAT, "--target", "Egyptian cat", "--samples", "2",
                     "--save", "png", "--out", str(tmp_path), "--quiet")
    assert code == 0, err
    model = sg.models.load("efficientnet_lite0")
    assert [row.label for row in drawn] == [expected_label(model, CAT, 285)]
    assert drawn[0].label.startswith("Egyptian cat (p = 0.3")


def test_demo_figures_name_the_explained_class(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, tiny: str,
                                              drawn: list[sg.viz.Row]) -> None:
    """The demo explains each photo's prediction; its rows say so, with the probability."""
    code, err = call(capsys, "demo", "--model", tiny, "--samples", "2", "--out", str(tmp_path),
                     "--quiet")
    assert code == 0, err
    model = sg.models.load(tiny)
    photos = images.sample_images()
    want = [expected_label(model, str(photos[name]), None) for name in photos]
    assert [row.label for row in drawn] == want * 2  # gradient, then guided backprop


def test_show_and_the_notebook_view_name_the_class_and_its_probability() -> None:
    """`result.show(model)` and a result as a cell's value (no model) name the explained
    class and its probability (they gave "class 2", no probability)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = sg.smooth(model, x, target=[2, 0], samples=3)
    with torch.no_grad():
        p = model(x).softmax(dim=1)
    want = [f"dog (p = {float(p[0, 2]):.3f})", f"cat (p = {float(p[1, 0]):.3f})"]
    panels = result.show(model, labels=["cat", "bird", "dog"])
    assert [caption.split(" · ")[0] for caption in panels.captions] == [
        f"explaining {label}" for label in want]
    unlabelled = sg.display.show(result)
    assert unlabelled.captions[0].startswith(f"explaining class 2 (p = {float(p[0, 2]):.3f})")
    assert f"class 2 (p = {float(p[0, 2]):.3f})" in result._repr_html_()
    torch.testing.assert_close(result.probability, torch.stack([p[0, 2], p[1, 0]]))
    assert panels.figure().axes[0].get_ylabel().startswith(f"explaining {want[0]}")


def test_sweep_figures_name_the_target(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep --target` draws rows of maps of that class: their titles say which, with its
    probability (they named no class)."""
    from smoothgrad import viz

    titles: list[str] = []
    original = viz.row_figure

    def record(*args: object, **kwargs: object) -> object:
        titles.append(str(kwargs.get("suptitle")))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(viz, "row_figure", record)
    code, err = call(capsys, "sweep", CAT, "--model", tiny, "--target", "3", "--noise", "0,0.1",
                     "--samples", "2", "--at-samples", "2", "--reference-samples", "3",
                     "--steps", "2", "--out", str(tmp_path), "--quiet")
    assert code == 0, err
    want = expected_label(sg.models.load(tiny), CAT, 3)
    assert len(titles) == 2 and all(f"for {want}," in title for title in titles), titles
