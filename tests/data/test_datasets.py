"""nctune.data.datasets: cached and uncached in-memory resizes, augmentation, unreadable files."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

import nctune.data.datasets as datasets_mod
from nctune.data import build_data
from nctune.errors import DataError
from tests.data.helpers import IC, InputConfig, cfg, corrupt_folder, make_folder


def test_no_augment_train_equals_eval_and_augment_is_random(tmp_path):
    s = build_data(cfg(subset="vendored", val_fraction=0.0), IC)
    assert s.train.augment is False
    torch.testing.assert_close(s.train[5][0], s.train[5][0], rtol=0, atol=0)
    a = build_data(cfg(subset="vendored", val_fraction=0.0, augment=True), IC)
    assert a.train.augment is True and a.test.augment is False
    torch.manual_seed(0)
    draws = torch.stack([a.train[5][0] for _ in range(6)])
    assert draws.shape == (6, 3, 16, 16) and not all(torch.equal(draws[0], d) for d in draws[1:])
    torch.testing.assert_close(a.test[0][0], s.test[0][0])


def test_uncached_resize_matches_cached(monkeypatch):
    ic = InputConfig(image_size=40, interpolation="bicubic")
    cached = build_data(cfg(subset="vendored", max_test_samples=20), ic).test
    monkeypatch.setattr(datasets_mod, "_CACHE_LIMIT_BYTES", 0)  # as if the split were huge
    lazy = build_data(cfg(subset="vendored", max_test_samples=20), ic).test
    assert cached._cache is not None and lazy._cache is None
    for i in (0, 7, 19):
        torch.testing.assert_close(lazy[i][0], cached[i][0], rtol=0, atol=0)


def test_corrupt_image_in_getitem_and_verify(tmp_path):
    root, bad = corrupt_folder(tmp_path)
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), IC)
    i = s.train.paths.index(str(bad))
    with pytest.raises(DataError, match=r"000\.png: cannot read image"):
        s.train[i]
    with pytest.raises(DataError, match=r"000\.png: cannot read image"):
        s.verify()
    s.verify(max_images=0)  # a cap of zero checks nothing


def test_truncated_image(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2})
    good = root / "a" / "001.png"
    Image.new("RGB", (64, 64)).save(good)
    good.write_bytes(good.read_bytes()[:40])
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), IC)
    with pytest.raises(DataError, match=r"001\.png: cannot read image"):
        s.verify()


def test_pil_log_records_are_held_back_for_a_refused_file_and_passed_on_otherwise(
    tmp_path, monkeypatch, capsys
):
    # No logging configured, as on the command line (pytest's capture handlers would take
    # the records): Python's last resort prints a WARNING+ record on stderr.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    pil_log = logging.getLogger("PIL.TiffImagePlugin")
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)

    real_open = datasets_mod.Image.open

    def logging_open(path, *a, **k):
        pil_log.error("decoder says: %s", path.rsplit("/", 1)[-1])
        return real_open(path, *a, **k)

    monkeypatch.setattr(datasets_mod.Image, "open", logging_open)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        datasets_mod.open_image(str(tmp_path / "bad.png"))
    assert capsys.readouterr().err == ""  # the refusal's one line is the caller's to print
    assert datasets_mod.open_image(str(good)).size == (4, 4)
    assert capsys.readouterr().err == "decoder says: good.png\n"  # a file that reads: passed on
    pil_log.error("outside open_image")
    assert capsys.readouterr().err == "outside open_image\n"  # as Python prints it


def test_a_decoded_sample_too_elongated_to_resize_is_named_by_its_source():
    """Sources that hand over decoded images (torchvision, Hugging Face, WebDataset shards)
    name the sample: there is no file to name."""
    from nctune.data.transforms import _Spec

    base = [(Image.new("L", (12, 10), 9), 0), (Image.new("L", (1, 3_000_000), 9), 1)]
    spec = _Spec.from_input_config(InputConfig(image_size=32))
    ds = datasets_mod._TorchvisionDataset(base, [0, 1], [0, 1], spec, name="strips")
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"^data\.name: strips sample 1: a 1×3000000 px image"):
        ds[1]
