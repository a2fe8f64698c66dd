"""data.source=hf: save_to_disk folders, Parquet, DatasetDict splits, ClassLabel names, and
one-line errors for missing or mistyped columns. Datasets built here; nothing downloaded."""

from __future__ import annotations

import pytest

from nctune.data import build_data
from nctune.data.sources.hf import is_saved_dataset
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, class_counts
from tests.data.sources.formats import CLASSES, hf_dataset, image_folder

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return hf_dataset(image_folder(tmp_path_factory.mktemp("if"), per_class=6, side=12))


def test_saved_folder_gives_classlabel_names_and_held_out_split(tmp_path, ds):
    ds.save_to_disk(str(tmp_path / "saved"))
    assert is_saved_dataset(tmp_path / "saved") and not is_saved_dataset(tmp_path)
    s = build_data(cfg(source="hf", path=tmp_path / "saved", val_fraction=1 / 3), IC)
    assert s.classes == list(CLASSES)
    assert (len(s.train), len(s.val)) == (12, 6) and class_counts(s.val, 3) == [2, 2, 2]
    x, y = s.train[0]
    assert tuple(x.shape) == (3, 16, 16) and y in (0, 1, 2)


def test_parquet_file_and_dataset_dict_splits(tmp_path, ds):
    ds.to_parquet(str(tmp_path / "d.parquet"))
    s = build_data(cfg(source="hf", path=tmp_path / "d.parquet", val_fraction=0.0), IC)
    assert len(s.train) == 18 and s.classes == list(CLASSES) and s.val is None
    parts = ds.train_test_split(test_size=6, seed=0, stratify_by_column="label")
    dd = datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert is_saved_dataset(tmp_path / "dd")
    s = build_data(cfg(source="hf", path=tmp_path / "dd", val_fraction=0.5), IC)
    assert (len(s.train), len(s.val)) == (12, 6)  # the dataset's own split, not the fraction


def test_integer_labels_take_data_classes(tmp_path, ds):
    plain = ds.cast_column("label", datasets.Value("int64"))
    plain.save_to_disk(str(tmp_path / "ints"))
    s = build_data(cfg(source="hf", path=tmp_path / "ints", val_fraction=0.0), IC)
    assert s.classes == ["0", "1", "2"]
    s = build_data(cfg(source="hf", path=tmp_path / "ints", classes=["a", "b", "c"]), IC)
    assert s.classes == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"label 2 has no class name \(2 names given\)"):
        build_data(cfg(source="hf", path=tmp_path / "ints", classes=["a", "b"]), IC)


def test_bad_columns_are_one_line(tmp_path, ds):
    ds.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"no column 'pixels'.*columns: 'image', 'label'") as err:
        build_data(cfg(source="hf", path=tmp_path / "saved", image_key="pixels"), IC)
    assert "\n" not in str(err.value)
    named = ds.cast_column("label", datasets.Value("string"))
    named.save_to_disk(str(tmp_path / "strings"))
    with pytest.raises(DataError, match=r"label column 'label' is string, not an integer"):
        build_data(cfg(source="hf", path=tmp_path / "strings"), IC)
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"not a save_to_disk folder, a .parquet or an .arrow"):
        build_data(cfg(source="hf", path=tmp_path / "notes.csv"), IC)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain cannot be read as a Hugging Face dataset"):
        build_data(cfg(source="hf", path=tmp_path / "plain"), IC)


def test_corrupt_image_row_names_the_row(tmp_path):
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(2)})
    good = image_folder(tmp_path / "if", per_class=2, side=8) / "ant" / "000.png"
    rows = {"image": [{"bytes": good.read_bytes()}, {"bytes": b"not a png"}], "label": [0, 1]}
    bad = datasets.Dataset.from_dict(rows, features=feats)
    bad.save_to_disk(str(tmp_path / "bad"))
    s = build_data(cfg(source="hf", path=tmp_path / "bad", val_fraction=0.0), IC)
    s.train[0]
    with pytest.raises(DataError, match=r"\(train\) row 1: cannot read column 'image'"):
        s.train.verify()


def test_init_recognises_a_saved_dataset_folder(tmp_path, ds):
    from nctune.starter import starter_recipe

    ds.save_to_disk(str(tmp_path / "saved"))
    started = starter_recipe(tmp_path / "saved", "timm:test_resnet", estimate=False)
    assert started.recipe.data.source == "hf" and started.classes == list(CLASSES)


def test_hub_name_offline_is_one_line_naming_the_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError, match=r"data.name: cannot load the hub dataset 'nobody/x'"
    ) as err:
        build_data(cfg(source="hf", name="nobody/x"), IC)
    assert str(datasets.config.HF_DATASETS_CACHE) in str(err.value)
    assert "\n" not in str(err.value)
