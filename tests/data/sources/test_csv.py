"""data.source=csv: path,label[,split] manifests and their errors."""

from __future__ import annotations

import pytest

from nctune.data import build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, class_counts, write_manifest, write_png


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


def test_read_manifest_for_prediction_labels_and_files_optional(tmp_path):
    from nctune.data import read_manifest

    write_png(tmp_path / "a.png")
    m = write_manifest(tmp_path, "path,split\na.png,test\ngone.png,\n")
    rows = read_manifest(m, require_label=False, check_files=False)
    assert [(r.line, r.path, r.label, r.split) for r in rows] == [
        (2, str(tmp_path / "a.png"), "", "test"),
        (3, str(tmp_path / "gone.png"), "", "train"),
    ]
    with pytest.raises(DataError, match="missing column"):
        read_manifest(m)  # the data source needs labels
    with pytest.raises(DataError, match="line 3: image file"):
        read_manifest(m, require_label=False)
