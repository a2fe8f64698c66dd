"""data.source=fashion_mnist: vendored subset, IDX files, the Debian package, the subset script."""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import nctune.data.sources.fashion_mnist as fashion_mnist_mod
from nctune.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, class_counts, tiny_idx_folder

ROOT = Path(__file__).resolve().parents[3]
VENDORED = ROOT / "nctune" / "_data" / "fashion_mnist_subset.npz"
SCRIPT = ROOT / "scripts" / "make_fashion_mnist_subset.py"
HAVE_DEBIAN = all(
    (DEBIAN_FASHION_MNIST / f"{p}-{k}-ubyte.gz").is_file()
    for p in ("train", "t10k")
    for k in ("images-idx3", "labels-idx1")
)
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN, reason=f"Debian dataset-fashion-mnist not installed ({DEBIAN_FASHION_MNIST})"
)


def test_vendored_subset_file():
    assert VENDORED.stat().st_size <= 2_000_000
    with np.load(VENDORED) as z:
        assert z["train_images"].shape == (3000, 28, 28) and z["train_images"].dtype == np.uint8
        assert z["test_images"].shape == (1000, 28, 28)
        assert np.bincount(z["train_labels"]).tolist() == [300] * 10
        assert np.bincount(z["test_labels"]).tolist() == [100] * 10
    assert (VENDORED.parent / "FASHION_MNIST_LICENSE.txt").is_file()


def test_vendored_forced(tmp_path):
    s = build_data(cfg(subset="vendored"), IC)
    assert s.source == "fashion_mnist (vendored subset)"
    assert s.classes == FASHION_MNIST_CLASSES
    assert (len(s.train), len(s.val), len(s.test)) == (2700, 300, 1000)
    assert class_counts(s.val, 10) == [30] * 10 and class_counts(s.test, 10) == [100] * 10
    x, _ = s.train[0]
    assert x.shape == (3, 16, 16) and x.min() >= -1.0 and x.max() <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_auto_falls_back_to_vendored(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist_mod, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    s = build_data(cfg(), IC)
    assert s.source == "fashion_mnist (vendored subset)"
    with pytest.raises(DataError, match=r"data\.subset=full: .*absent.*dataset-fashion-mnist"):
        build_data(cfg(subset="full"), IC)


def test_fashion_mnist_from_path(tmp_path):
    folder = tiny_idx_folder(tmp_path / "fm", gz=False)
    s = build_data(cfg(path=folder, val_fraction=0.0, max_test_samples=10), IC)
    assert (len(s.train), len(s.test)) == (40, 10)
    assert class_counts(s.test, 10) == [1] * 10  # the cap is stratified
    assert s.source == f"fashion_mnist ({folder})"


@needs_debian
def test_debian_full():
    s = build_data(cfg(subset="full", image_size=28, max_test_samples=500), IC)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 500)
    assert class_counts(s.test, 10) == [50] * 10
    assert str(DEBIAN_FASHION_MNIST) in s.source
    assert s.train[0][0].shape == (3, 28, 28)


def load_script():
    spec = importlib.util.spec_from_file_location("make_fashion_mnist_subset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_npz_writer_is_reproducible():
    script = load_script()
    arrays = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": np.zeros(2, np.uint16)}
    blob = script.npz_bytes(arrays)
    assert blob == script.npz_bytes(arrays)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(io.BytesIO(blob)) as z:
        np.testing.assert_array_equal(z["a"], arrays["a"])


@needs_debian
def test_script_regenerates_vendored_file(tmp_path):
    out = tmp_path / "subset.npz"
    assert load_script().main(["--out", str(out)]) == 0
    assert out.read_bytes() == VENDORED.read_bytes()


def test_corrupt_idx(tmp_path):
    folder = tiny_idx_folder(tmp_path / "fm")
    bad = folder / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: cannot read IDX file"):
        build_data(cfg(path=folder), IC)
    with pytest.raises(DataError, match=r"^data\.path: .* lacks the Fashion-MNIST IDX files"):
        build_data(cfg(path=tmp_path), IC)
