"""nctune.data: sources, splits, few-shot sampling, transforms, loaders and errors.

Everything is built in tmp_path or read from files on this machine; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nctune.data as data_mod
import nctune.data.datasets as datasets_mod
import nctune.data.sources.fashion_mnist as fashion_mnist_mod
from nctune.backbones import InputConfig as BackboneInputConfig
from nctune.config import DataConfig
from nctune.data import (
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    DataSplits,
    build_data,
    eval_transform,
    make_loader,
    subsample,
)
from nctune.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
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


@dataclass
class InputConfig:
    """Stand-in for nctune.backbones.InputConfig."""

    image_size: int = 16
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


IC = InputConfig()


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


# ------------------------------------------------------------------ helpers
def write_png(path: Path, value: int = 128, size=(12, 10), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], mode: str = "L") -> Path:
    for ci, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", value=(20 * ci + i) % 256, mode=mode)
    return root


def class_counts(ds, k: int) -> list[int]:
    return np.bincount(ds.targets, minlength=k).tolist()


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def tiny_idx_folder(folder: Path, n_train=40, n_test=20, gz=True) -> Path:
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), 2051
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10, 2049)
    return folder


# ---------------------------------------------------------- imagefolder
def test_imagefolder_stratified_split(tmp_path):
    root = make_folder(tmp_path / "ds", {"cat": 10, "dog": 20, "eel": 10})
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.25), IC)
    assert s.classes == ["cat", "dog", "eel"] and s.num_classes == 3
    assert class_counts(s.val, 3) == [2, 5, 3] or class_counts(s.val, 3) == [3, 5, 2]
    assert len(s.val) == 10 and len(s.train) == 30 and s.test is None
    assert set(s.train.paths).isdisjoint(s.val.paths)
    assert s.source == f"imagefolder:{root}"
    assert "train 30 / val 10 / test -" in s.describe() and "\n" not in s.describe()


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


def test_imagefolder_given_splits(tmp_path):
    make_folder(tmp_path / "ds" / "train", {"a": 4, "b": 4})
    make_folder(tmp_path / "ds" / "val", {"a": 2, "b": 1})
    make_folder(tmp_path / "ds" / "test", {"a": 3})
    s = build_data(cfg(source="imagefolder", path=tmp_path / "ds"), IC)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 3, 3)
    assert class_counts(s.test, 2) == [3, 0]


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


# ------------------------------------------------------------- transforms
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


def test_models_that_want_other_than_three_channels_are_refused():
    with pytest.raises(ConfigError, match="in_chans"):
        build_data(cfg(subset="vendored"), BackboneInputConfig(16, IC.mean, IC.std, in_chans=1))


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


def test_file_train_transform_is_eval_transform_unless_augmenting(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2}, mode="RGB")
    ic = InputConfig(crop_pct=0.875, interpolation="bicubic")
    s = build_data(cfg(source="imagefolder", path=root, val_fraction=0.0), ic)
    with Image.open(s.train.paths[1]) as img:
        expected = eval_transform(ic)(img)
    torch.testing.assert_close(s.train[1][0], expected, rtol=0, atol=0)
    a = build_data(cfg(source="imagefolder", path=root, augment=True, val_fraction=0.0), ic)
    assert a.train[0][0].shape == (3, 16, 16)


# ---------------------------------------------------------- fashion-mnist
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


# ------------------------------------------------------------------ csv
def test_csv_manifest_with_splits_and_names(tmp_path):
    for name in ("a1", "a2", "a3", "b1", "b2", "b3", "v1", "t1"):
        write_png(tmp_path / "img" / f"{name}.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,split\n"
        "img/a1.png,zebra,train\nimg/a2.png,zebra,train\nimg/a3.png,zebra,\n"
        "img/b1.png,ant,train\nimg/b2.png,ant,train\nimg/b3.png,ant,train\n"
        "img/v1.png,ant,val\nimg/t1.png,zebra,test\n"
    )
    s = build_data(cfg(source="csv", path=manifest), IC)
    assert s.classes == ["ant", "zebra"]
    assert (len(s.train), len(s.val), len(s.test)) == (6, 1, 1)
    assert s.test.targets.tolist() == [1] and s.source == f"csv:{manifest}"


def test_csv_integer_labels_without_split(tmp_path):
    rows = ["path,label"]
    for i in range(12):
        write_png(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i % 3}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    s = build_data(cfg(source="csv", path=tmp_path / "m.csv", val_fraction=0.25), IC)
    assert s.classes == ["0", "1", "2"]
    assert class_counts(s.val, 3) == [1, 1, 1] and len(s.train) == 9


# -------------------------------------------------------------- digits
def test_digits():
    s = build_data(cfg(source="digits", val_fraction=0.1, test_fraction=0.2), IC, seed=1)
    assert s.classes == [str(i) for i in range(10)]
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.val) == 180 and len(s.test) == 359
    x, y = s.train[0]
    assert x.shape == (3, 16, 16) and 0 <= y < 10


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="needs scikit-learn: pip install scikit-learn"):
        build_data(cfg(source="digits"), IC)


# ---------------------------------------------------------- torchvision
def test_torchvision_in_memory_with_official_test(tmp_path):
    tiny_idx_folder(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    s = build_data(cfg(source="torchvision", name="FashionMNIST", path=tmp_path / "tv"), IC)
    assert (len(s.train), len(s.val), len(s.test)) == (36, 4, 20)
    assert s.classes[0] == "T-shirt/top" and s.source == "torchvision:FashionMNIST"
    assert isinstance(s.train, data_mod.TensorImageDataset)
    assert s.train[0][0].shape == (3, 16, 16)


def test_torchvision_decoded_per_sample(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 5, "b": 5}, mode="RGB")
    s = build_data(cfg(source="torchvision", name="ImageFolder", path=root, val_fraction=0.2), IC)
    assert s.classes == ["a", "b"] and (len(s.train), len(s.val)) == (8, 2)
    assert s.train[0][0].shape == (3, 16, 16)


# --------------------------------------------------------------- loaders
def test_loader_determinism_and_order(tmp_path):
    s = build_data(cfg(source="digits", val_fraction=0.1), IC)
    c = cfg(source="digits", batch_size=100)

    def labels(loader):
        return torch.cat([y for _, y in loader]).tolist()

    first = labels(make_loader(s.train, c, train=True, seed=7))
    assert first == labels(make_loader(s.train, c, train=True, seed=7))
    assert first != labels(make_loader(s.train, c, train=True, seed=8))
    assert sorted(first) == sorted(s.train.targets.tolist())  # drop_last=False
    assert labels(make_loader(s.val, c, train=False)) == s.val.targets.tolist()
    xb, _ = next(iter(make_loader(s.val, c, train=False)))
    assert xb.shape == (100, 3, 16, 16)


def test_subsample_is_stratified():
    s = build_data(cfg(subset="vendored", val_fraction=0.0), IC)
    sub = subsample(s.train, 100, seed=0)
    assert class_counts(sub, 10) == [10] * 10
    assert subsample(s.train, None) is s.train


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("source", ["imagefolder", "csv", "fashion_mnist"])
def test_missing_path(tmp_path, source):
    with pytest.raises(DataError, match=r"^data\.path: .*/nope does not exist$"):
        build_data(cfg(source=source, path=tmp_path / "nope"), IC)


def test_path_required(tmp_path):
    with pytest.raises(DataError, match=r"^data\.path: required for data\.source=imagefolder"):
        build_data(cfg(source="imagefolder"), IC)


def corrupt_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3})
    bad = root / "a" / "000.png"
    bad.write_bytes(b"not a png at all")
    return root, bad


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


# workers=1 costs ~5 s: after a worker error, torch's DataLoader waits that long to join
# the worker when the loader is collected (torch behaviour, not nctune's).
@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_through_loader_is_one_line(tmp_path, workers):
    root, bad = corrupt_folder(tmp_path)
    c = cfg(source="imagefolder", path=root, val_fraction=0.0, num_workers=workers)
    s = build_data(c, IC)
    with pytest.raises(DataError) as info:
        for _ in make_loader(s.train, c, train=False):
            pass
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(bad))


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


def test_holdout_too_small(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"^data\.val_fraction=0\.5: .*empty validation split"):
        build_data(cfg(source="imagefolder", path=root, val_fraction=0.5), IC)


def write_manifest(tmp_path: Path, text: str) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / name)
    (tmp_path / "m.csv").write_text(text)
    return tmp_path / "m.csv"


def test_csv_missing_columns(tmp_path):
    m = write_manifest(tmp_path, "file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) 'path'"):
        build_data(cfg(source="csv", path=m), IC)


def test_csv_label_outside_classes(tmp_path):
    m = write_manifest(tmp_path, "path,label,split\na.png,x,train\nb.png,y,train\nc.png,q,test\n")
    with pytest.raises(
        DataError, match=r"m\.csv line 4: label 'q' is not one of the training classes"
    ):
        build_data(cfg(source="csv", path=m, val_fraction=0.0), IC)


def test_csv_missing_image(tmp_path):
    m = write_manifest(tmp_path, "path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(DataError, match=r"m\.csv line 3: image file .*missing\.png not found"):
        build_data(cfg(source="csv", path=m), IC)


def test_csv_integer_gap_and_bad_split(tmp_path):
    m = write_manifest(tmp_path, "path,label\na.png,0\nb.png,2\n")
    with pytest.raises(DataError, match=r"class 1 has no training images"):
        build_data(cfg(source="csv", path=m), IC)
    m = write_manifest(tmp_path, "path,label,split\na.png,x,train\nb.png,y,dev\n")
    with pytest.raises(DataError, match=r"line 3: split 'dev' must be train, val or test"):
        build_data(cfg(source="csv", path=m), IC)


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


def test_corrupt_idx(tmp_path):
    folder = tiny_idx_folder(tmp_path / "fm")
    bad = folder / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: cannot read IDX file"):
        build_data(cfg(path=folder), IC)
    with pytest.raises(DataError, match=r"^data\.path: .* lacks the Fashion-MNIST IDX files"):
        build_data(cfg(path=tmp_path), IC)


def test_splits_describe_without_optional_splits():
    s = DataSplits(train=[0] * 5, val=None, test=None, classes=["a", "b"], source="x", image_size=8)
    assert s.num_classes == 2
    assert s.describe() == "x: train 5 / val - / test - images, 2 classes, 8x8 px"
