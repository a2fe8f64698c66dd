"""data.source=torchvision: in-memory and per-sample sets, unknown names, missing files."""

from __future__ import annotations

import pytest

from nctune.data import TensorImageDataset, build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, make_folder, tiny_idx_folder


def test_torchvision_in_memory_with_official_test(tmp_path):
    tiny_idx_folder(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    s = build_data(cfg(source="torchvision", name="FashionMNIST", path=tmp_path / "tv"), IC)
    assert (len(s.train), len(s.val), len(s.test)) == (36, 4, 20)
    assert s.classes[0] == "T-shirt/top" and s.source == "torchvision:FashionMNIST"
    assert isinstance(s.train, TensorImageDataset)
    assert s.train[0][0].shape == (3, 16, 16)


def test_torchvision_decoded_per_sample(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5}, mode="RGB")
    s = build_data(cfg(source="torchvision", name="ImageFolder", path=root, val_fraction=0.2), IC)
    assert s.classes == ["a", "b"] and (len(s.train), len(s.val)) == (8, 2)
    assert s.train[0][0].shape == (3, 16, 16)


def test_torchvision_unknown_name():
    with pytest.raises(
        DataError,
        match=r"^data\.name: unknown torchvision dataset 'cifar-10' \(did you mean CIFAR10\?\)$",
    ):
        build_data(cfg(source="torchvision", name="cifar-10", path="/tmp"), IC)


def test_torchvision_missing_files(tmp_path):
    with pytest.raises(
        DataError, match=r"^data\.path: torchvision CIFAR10 files not found .*data\.download=true"
    ):
        build_data(cfg(source="torchvision", name="CIFAR10", path=tmp_path), IC)
