"""nctune.data.splits: stratified seeded hold-out, few-shot sampling, caps, DataSplits."""

from __future__ import annotations

import pytest

from nctune.data import DataSplits, build_data, subsample
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, class_counts, make_folder


def test_imagefolder_test_fraction_and_zero_val(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 10, "b": 10})
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.2, test_fraction=0.2), IC)
    assert class_counts(s.val, 2) == [2, 2] and class_counts(s.test, 2) == [2, 2]
    assert len(s.train) == 12
    assert not ({*s.train.paths} & {*s.val.paths} or {*s.train.paths} & {*s.test.paths})
    s0 = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), IC)
    assert s0.val is None and s0.test is None and len(s0.train) == 20
    # the validation images do not depend on test_fraction
    s1 = build_data(cfg(source="imagefolder", path=root, val_fraction=0.2, test_fraction=0.4), IC)
    assert s1.val.paths == s.val.paths


def test_holdout_keeps_a_training_image_per_class(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 1, "b": 2, "c": 30})
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.5), IC)
    assert all(c >= 1 for c in class_counts(s.train, 3))


def test_seeded_determinism(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 15, "b": 15, "c": 15})
    c = cfg(source="imagefolder", path=root, val_fraction=0.2, samples_per_class=5)
    a, b = build_data(c, IC, seed=3), build_data(c, IC, seed=3)
    assert a.train.paths == b.train.paths and a.val.paths == b.val.paths
    other = build_data(c, IC, seed=4)
    assert other.val.paths != a.val.paths or other.train.paths != a.train.paths


def test_few_shot_counts_nested_and_val_unaffected(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 20, "b": 20, "c": 4})
    base = dict(source="imagefolder", path=root, val_fraction=0.25)
    full = build_data(cfg(**base), IC)
    five = build_data(cfg(**base, samples_per_class=5), IC)
    two = build_data(cfg(**base, samples_per_class=2), IC)
    # class c has 3 training images left after the hold-out: it keeps them all
    assert class_counts(five.train, 3) == [5, 5, 3]
    assert class_counts(two.train, 3) == [2, 2, 2]
    assert five.val.paths == full.val.paths == two.val.paths
    assert set(two.train.paths) <= set(five.train.paths) <= set(full.train.paths)


def test_subsample_is_stratified():
    s = build_data(cfg(subset="vendored", val_fraction=0.0), IC)
    sub = subsample(s.train, 100, seed=0)
    assert class_counts(sub, 10) == [10] * 10
    assert subsample(s.train, None) is s.train


def test_holdout_too_small(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"^data\.val_fraction=0\.5: .*empty validation split"):
        build_data(cfg(source="imagefolder", path=root, val_fraction=0.5), IC)


def test_splits_describe_without_optional_splits():
    s = DataSplits(train=[0] * 5, val=None, test=None, classes=["a", "b"], source="x", image_size=8)
    assert s.num_classes == 2
    assert s.describe() == "x: train 5 / val - / test - images, 2 classes, 8x8 px"
