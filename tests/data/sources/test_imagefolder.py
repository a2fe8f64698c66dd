"""data.source=imagefolder: class folders, given splits and their errors."""

from __future__ import annotations

import pytest

from nctune.data import build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, class_counts, make_folder


def test_imagefolder_stratified_split(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 10, "dog": 20, "eel": 10})
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.25), IC)
    assert s.classes == ["cat", "dog", "eel"] and s.num_classes == 3
    assert class_counts(s.val, 3) == [2, 5, 3] or class_counts(s.val, 3) == [3, 5, 2]
    assert len(s.val) == 10 and len(s.train) == 30 and s.test is None
    assert set(s.train.paths).isdisjoint(s.val.paths)
    assert s.source == f"imagefolder:{root}"
    assert "train 30 / val 10 / test -" in s.describe() and "\n" not in s.describe()


def test_imagefolder_given_splits(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 4, "b": 4})
    make_folder(tmp_path / "ds" / "val", {"a": 2, "b": 1})
    make_folder(tmp_path / "ds" / "test", {"a": 3})
    s = build_data(cfg(source="imagefolder", path=tmp_path / "ds"), IC)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 3, 3)
    assert class_counts(s.test, 2) == [3, 0]


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3})
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*/c has no images"):
        build_data(cfg(source="imagefolder", path=root), IC)


def test_fewer_than_two_classes(tmp_path):
    root = make_folder(tmp_path / "ds", {"only": 4})
    with pytest.raises(DataError, match=r"^data\.path: .*needs at least two classes"):
        build_data(cfg(source="imagefolder", path=root), IC)


def test_empty_given_split(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 3, "b": 3})
    (tmp_path / "ds" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"val split is empty"):
        build_data(cfg(source="imagefolder", path=tmp_path / "ds"), IC)


def test_val_class_not_in_train(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 3, "b": 3})
    make_folder(tmp_path / "ds" / "val", {"a": 1, "zzz": 1})
    with pytest.raises(DataError, match=r"zzz is not a class of the training split"):
        build_data(cfg(source="imagefolder", path=tmp_path / "ds"), IC)
