"""Image loading: formats, modes, EXIF, refusals. References are PIL itself and pixel maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from smoothgrad import images
from smoothgrad.images import ImageError


def _gradient(width: int = 40, height: int = 30) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6, y * 8, (x + y) * 3], axis=-1).astype(np.uint8)


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int32)


@pytest.mark.parametrize(
    ("fmt", "suffix", "lossless"),
    [("JPEG", ".jpg", False), ("PNG", ".png", True), ("WEBP", ".webp", False),
     ("TIFF", ".tif", True), ("BMP", ".bmp", True)],
)
def test_formats_round_trip(tmp_path: Path, fmt: str, suffix: str, lossless: bool) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    array = _gradient()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(array).save(path, format=fmt, **({} if lossless else {"quality": 95}))
    loaded = images.load(path)
    assert loaded.size == (40, 30)
    error = np.abs(_pixels(loaded) - array.astype(np.int32))
    assert error.max() == 0 if lossless else error.mean() < 4


def test_grayscale_and_palette(tmp_path: Path) -> None:
    gray = _gradient()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    expected = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(_pixels(images.load(tmp_path / "g.png")), expected)

    palette = Image.fromarray(_gradient()).quantize(16)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(_pixels(images.load(tmp_path / "p.png")), _pixels(palette.convert("RGB")))


def test_transparency_composited_on_white(tmp_path: Path) -> None:
    rgb = _gradient().astype(np.float64)
    alpha = np.zeros((30, 40))
    alpha[:, 10:20], alpha[:, 20:] = 0.5, 1.0
    rgba = np.dstack([rgb, np.rint(alpha * 255)]).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    a = rgba[..., 3:].astype(np.float64) / 255
    expected = a * rgb + (1 - a) * 255
    assert np.abs(_pixels(images.load(tmp_path / "a.png")) - expected).max() <= 1
    assert (_pixels(images.load(tmp_path / "a.png"))[:, :10] == 255).all()


def test_16_bit_scaled_not_clipped(tmp_path: Path) -> None:
    values = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)  # up to 64746
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    loaded = _pixels(images.load(tmp_path / "g16.png"))
    expected = np.rint(values / 257.0)  # 65535 -> 255, linear
    assert np.array_equal(loaded, np.repeat(expected[..., None], 3, 2))
    assert (loaded == 255).mean() < 0.01  # PIL's convert("L") clips: almost all would be 255


def test_32_bit_int_and_float_tiff(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535], [1285, 2570, 32896]])
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert np.array_equal(_pixels(images.load(tmp_path / "i.tif"))[..., 0], values // 257)

    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert _pixels(images.load(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:8, :8] = (255, 0, 0)  # red block at the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation 6: rotate 90 degrees clockwise to display
    Image.fromarray(array).save(tmp_path / "o.jpg", exif=exif, quality=95)
    loaded = images.load(tmp_path / "o.jpg")
    assert loaded.size == (20, 40)
    top_right = _pixels(loaded)[2, -3]  # clockwise turn moves top-left to top-right
    assert top_right[0] > 200 and top_right[1] < 60


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.fromarray(_gradient(200, 200)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated"):
        images.load(path)


@pytest.mark.parametrize("kind", ["text", "missing", "directory"])
def test_unreadable_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "photo.jpg"
    if kind == "text":
        path.write_text("not a picture\n")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(ImageError, match=r"cannot read image '.*photo\.jpg'") as info:
        images.load(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    with pytest.raises(ImageError, match=r"bomb\.png.*decompression bomb"):
        images.load(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 400)
    assert images.load(path).size == (20, 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own hard limit is 2x this
    with pytest.raises(ImageError, match=r"bomb\.png"):
        images.load(path)


def test_sample_images() -> None:
    samples = images.sample_images()
    assert sorted(samples) == ["chelsea", "coffee"]
    # sizes documented in scikit-image: chelsea (300, 451, 3), coffee (400, 600, 3)
    assert images.load(samples["chelsea"]).size == (451, 300)
    assert images.load(images.sample_path("coffee")).size == (600, 400)
    with pytest.raises(ImageError, match="chelsea"):
        images.sample_path("dog")


def test_samples_match_scikit_image_originals() -> None:
    skdata = pytest.importorskip("skimage.data")
    for name in ("chelsea", "coffee"):
        original = getattr(skdata, name)().astype(np.int32)
        assert np.abs(_pixels(images.load(images.sample_path(name))) - original).mean() < 3
