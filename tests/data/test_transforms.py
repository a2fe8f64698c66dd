"""nctune.data.transforms: RGB, resize/crop (timm's eval transform), normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nctune.backbones import InputConfig as BackboneInputConfig
from nctune.data import build_data, eval_transform
from tests.data.helpers import IC, InputConfig, cfg, make_folder, write_png


def test_grayscale_becomes_rgb_with_shape_and_normalisation(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "a" / "x.png", value=51, size=(30, 20))
    write_png(root / "b" / "y.png", value=200, size=(9, 9), mode="RGB")
    ic = InputConfig(image_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), ic)
    x, y = s.train[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 0
    mean = torch.tensor(ic.mean).view(3, 1, 1)
    std = torch.tensor(ic.std).view(3, 1, 1)
    torch.testing.assert_close(x * std + mean, torch.full((3, 8, 8), 51 / 255))
    x, y = s.train[1]
    expected = torch.tensor([200, 55, 7]).view(3, 1, 1).expand(3, 8, 8) / 255
    torch.testing.assert_close(x * std + mean, expected)


def test_image_size_override_and_eval_transform(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2})
    s = build_data(cfg(source="imagefolder", path=root, image_size=24, val_fraction=0.0), IC)
    assert s.train[0][0].shape == (3, 24, 24) and s.image_size == 24
    t = eval_transform(InputConfig(image_size=20, crop_pct=0.875))
    assert t(Image.new("L", (50, 30), 9)).shape == (3, 20, 20)


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_eval_transform_matches_timms_on_a_non_square_image(crop_mode):
    from timm.data import create_transform

    ic = BackboneInputConfig(
        image_size=32,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        interpolation="bicubic",
        crop_pct=0.9,
        crop_mode=crop_mode,
    )
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    want = create_transform(
        (3, 32, 32),
        is_training=False,
        interpolation="bicubic",
        mean=ic.mean,
        std=ic.std,
        crop_pct=0.9,
        crop_mode=crop_mode,
    )(img)
    torch.testing.assert_close(eval_transform(ic)(img), want, rtol=0, atol=1e-5)


def test_file_train_transform_is_eval_transform_unless_augmenting(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2}, mode="RGB")
    ic = InputConfig(crop_pct=0.875, interpolation="bicubic")
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), ic)
    with Image.open(s.train.paths[1]) as img:
        expected = eval_transform(ic)(img)
    torch.testing.assert_close(s.train[1][0], expected, rtol=0, atol=0)
    a = build_data(cfg(source="imagefolder", path=root, augment=True, val_fraction=0.0), ic)
    assert a.train[0][0].shape == (3, 16, 16)


def test_an_image_too_elongated_to_resize_is_a_data_error_not_an_overflow(monkeypatch):
    from nctune.data.transforms import check_resizable
    from nctune.errors import DataError

    # the fuzz finding: 1 × 134,228,553 px at 33 px → 4.4 billion px long, past a C int
    with pytest.raises(DataError, match=r"1×134228553 px image is too elongated .* 33 px"):
        check_resizable((1, 134_228_553), 33)
    # PIL's limit (2 × MAX_IMAGE_PIXELS = 178,956,970 px): 256 × 256,000 passes, × 768,000 not
    check_resizable((1000, 1_000_000), 256)
    with pytest.raises(DataError, match="768,000 px long"):
        check_resizable((3000, 9_000_000), 256)
    check_resizable((64, 48), 36)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user turned PIL's check off
    check_resizable((3000, 9_000_000), 256)
    with pytest.raises(DataError):  # a side past 2³¹ − 1 still cannot be made
        check_resizable((1, 10**8), 33)


def test_the_eval_transform_refuses_a_long_strip_and_crops_need_no_check(tmp_path):
    from nctune.errors import DataError

    strip = Image.new("L", (1, 3_000_000), 9)  # 3 MB; resized it would be 36 × 108,000,000
    with pytest.raises(DataError, match="too elongated"):
        eval_transform(InputConfig(image_size=32, crop_pct=0.9))(strip)
    squash = BackboneInputConfig(32, (0.5,) * 3, (0.5,) * 3, crop_pct=0.9, crop_mode="squash")
    assert eval_transform(squash)(strip).shape == (3, 32, 32)  # to a square: nothing long
    # in a training folder: refused with the file's name; augmenting crops before resizing
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2})
    strip.save(root / "a" / "strip.png")
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), IC)
    i = [p.endswith("strip.png") for p in s.train.paths].index(True)
    with pytest.raises(DataError, match=r"strip\.png: a 1×3000000 px image is too elongated"):
        s.train[i]
    a = build_data(cfg(source="imagefolder", path=root, augment=True, val_fraction=0.0), IC)
    assert a.train[i][0].shape == (3, 16, 16)
