"""16-bit, 32-bit integer and float images reach the model scaled to 8 bits, never clipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nctune.data import build_data
from nctune.data.bitdepth import array_to_uint8, to_rgb8
from nctune.errors import DataError
from tests.data.helpers import InputConfig, cfg

# mean 0, std 1: the dataset tensors are the 8-bit pixels / 255, easy to compare
IC = InputConfig(image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _gradient16(seed: int) -> np.ndarray:
    """A 16x16 uint16 image spanning the whole 16-bit range (not just the low byte)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 65535, 256).reshape(16, 16)
    return np.clip(base + rng.normal(0, 500, base.shape), 0, 65535).astype(np.uint16)


def _folders(tmp_path):
    """The same images as real 16-bit PNGs and as their exact 8-bit equivalents."""
    for k, cls in enumerate(("dark", "light")):
        for i in range(3):
            px = _gradient16(10 * k + i)
            for depth, arr in (("16", px), ("8", np.rint(px / 257.0).astype(np.uint8))):
                path = tmp_path / f"png{depth}" / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return tmp_path / "png16", tmp_path / "png8"


def _pixels(folder) -> torch.Tensor:
    splits = build_data(cfg(source="imagefolder", path=folder, val_fraction=0.0), IC)
    return torch.stack([splits.train[i][0] for i in range(len(splits.train))])


def test_a_real_16_bit_png_loads_like_its_8_bit_equivalent(tmp_path):
    png16, png8 = _folders(tmp_path)
    with Image.open(next(png16.rglob("*.png"))) as img:
        assert img.mode in ("I;16", "I")  # really 16 bits on disk, as PIL reads it back
        assert np.asarray(img).max() > 255
    wide, narrow = _pixels(png16), _pixels(png8)
    assert wide.shape == narrow.shape
    torch.testing.assert_close(wide, narrow, rtol=0, atol=0)
    assert 0.3 < float(wide.mean()) < 0.7  # a gradient, not the all-white of clipping


@pytest.mark.parametrize(
    "mode, values, want",
    [
        ("I;16", [0, 257, 32896, 65535], [0, 1, 128, 255]),
        ("I", [0, 257, 32896, 65535], [0, 1, 128, 255]),  # 16-bit TIFF/PNG opened as I
        ("I", [-5, 0, 500_000, 1_000_000], [0, 0, 128, 255]),  # beyond 16 bits: own max
        ("F", [0.0, 0.5, 1.0, 0.25], [0, 128, 255, 64]),  # 0..1 floats
        ("F", [0.0, 127.6, 255.0, 10.0], [0, 128, 255, 10]),  # 0..255 floats
        ("F", [-1.0, 1000.0, 2000.0, 0.0], [0, 128, 255, 0]),  # beyond: own max
    ],
)
def test_wide_modes_scale_to_8_bit(mode, values, want):
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == mode
    rgb = to_rgb8(img)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == want
    assert (np.asarray(rgb)[..., 0] == np.asarray(rgb)[..., 2]).all()


def test_8_bit_modes_are_untouched():
    img = Image.new("RGB", (3, 2), (10, 200, 30))
    assert np.array_equal(np.asarray(to_rgb8(img)), np.asarray(img))
    assert np.asarray(to_rgb8(Image.new("L", (2, 2), 77))).tolist() == [[[77] * 3] * 2] * 2


def test_arrays_from_datasets_scale_by_dtype_instead_of_wrapping():
    assert array_to_uint8(np.array([0, 65535, 256], dtype=np.uint16)).tolist() == [0, 255, 1]
    assert array_to_uint8(np.array([[0.0, 1.0]], dtype=np.float32)).tolist() == [[0, 255]]
    rgb16 = np.full((2, 2, 3), 65535, dtype=np.uint16)
    assert (array_to_uint8(rgb16) == 255).all()  # uint16 RGB: 65535 → 255, not 255 (wrap) …
    assert array_to_uint8(np.array([256], dtype=np.uint16)).tolist() == [1]  # … nor 0


def test_a_float_image_with_nan_pixels_is_one_data_error_naming_the_file(tmp_path):
    path = tmp_path / "bad" / "a" / "0.tiff"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32)).save(path)
    for i in range(2):
        Image.new("L", (4, 4), 9).save(tmp_path / "bad" / "a" / f"{i + 1}.png")
        (tmp_path / "bad" / "b").mkdir(exist_ok=True)
        Image.new("L", (4, 4), 99).save(tmp_path / "bad" / "b" / f"{i}.png")
    with pytest.raises(DataError, match=r"0\.tiff.*NaN"):
        splits = build_data(cfg(source="imagefolder", path=tmp_path / "bad", val_fraction=0.0), IC)
        [splits.train[i] for i in range(len(splits.train))]
