"""`nctune predict` over data sets (issue 22): WebDataset shards and a saved Hugging Face
dataset give the same rows as the image folder they were made from, each named by its
sample (``SHARD#KEY``, ``FOLDER#SPLIT/ROW``); a corrupt sample stops the run in one line."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nctune.cli import app
from nctune.data import list_images

pytest.importorskip("braceexpand")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(out.open()))


def _predicted(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["label"], r["probability"]) for r in rows]


@pytest.fixture(scope="module")
def folder_rows(tiny_runs, tmp_path_factory):
    """The run, and predict's rows over its whole image folder (train, val, test)."""
    run = tiny_runs("linear")
    out = tmp_path_factory.mktemp("pred") / "folder.csv"
    res = invoke("predict", run.run_dir, run.data, "--out", out, "--top-k", "2")
    assert res.exit_code == 0, res.output
    return run, _rows(out)


def test_shards_predict_as_their_image_folder(folder_rows, tmp_path):
    from nctune.data.sources.webdataset import write_shards

    run, rows = folder_rows
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(run.data, shards, shard_size=7)
    keys = []  # the folder's sorted walk is test/, train/, val/: so is the shards' names
    for split in ("test", "train", "val"):
        n = len(list_images(run.data / split))
        keys += [f"{shards}/{split}-{i // 7:06d}.tar#{i:08d}" for i in range(n)]
    for given in (shards, f"{shards}/train-{{000000..000004}}.tar"):
        out = tmp_path / "shards.csv"
        res = invoke("predict", run.run_dir, given, "--out", out, "--top-k", "2")
        assert res.exit_code == 0, res.output
        got = _rows(out)
        if given == shards:
            assert [r["path"] for r in got] == keys
            assert _predicted(got) == _predicted(rows)
            assert [r["label_2"] for r in got] == [r["label_2"] for r in rows]
            truth = [Path(r["path"]).parent.name for r in rows]
            assert [r["true_label"] for r in got] == truth  # from classes.txt + cls
        else:  # the train shards only, by pattern
            train = [i for i, r in enumerate(rows) if "/train/" in r["path"]]
            assert _predicted(got) == [_predicted(rows)[i] for i in train]
    out = tmp_path / "val.csv"
    assert invoke("predict", run.run_dir, shards, "--split", "val", "--out", out).exit_code == 0
    assert [r["path"] for r in _rows(out)] == [k for k in keys if "/val-" in k]


def test_saved_hf_dataset_predicts_as_its_image_folder(folder_rows, tmp_path):
    datasets = pytest.importorskip("datasets")
    run, rows = folder_rows
    paths = list_images(run.data / "val")
    names = ["ant", "bee", "cat"]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    labels = [names.index(Path(p).parent.name) for p in paths]
    ds = datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "hf.csv"
    res = invoke("predict", run.run_dir, tmp_path / "saved", "--out", out, "--top-k", "2")
    assert res.exit_code == 0, res.output
    got = _rows(out)
    assert [r["path"] for r in got] == [f"{tmp_path / 'saved'}#train/{i}" for i in range(12)]
    val = [r for r in rows if "/val/" in r["path"]]
    assert _predicted(got) == _predicted(val)
    assert [r["true_label"] for r in got] == [Path(p).parent.name for p in paths]


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_a_corrupt_sample_is_one_line_naming_shard_and_key_exit_2(folder_rows, tmp_path):
    run, _ = folder_rows
    shard = tmp_path / "bad.tar"
    good = Path(list_images(run.data / "val")[0]).read_bytes()
    with tarfile.open(shard, "w") as tar:
        for key, data in (("s0", good), ("s1", b"\x89PNG\r\n\x1a\n not a png"), ("s2", good)):
            _member(tar, f"{key}.png", data)
            _member(tar, f"{key}.cls", b"0")
    out = tmp_path / "p.csv"
    res = invoke("predict", run.run_dir, shard, "--out", out)
    assert res.exit_code == 2, res.output
    assert f"shard {shard} key s1: cannot read the image" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [shard]  # no rows file, no partial file


def test_evaluate_on_the_test_shards_reproduces_the_test_accuracy(folder_rows, tmp_path):
    import json

    from nctune.data.sources.webdataset import write_shards

    run, _ = folder_rows
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shards(run.data, shards, shard_size=5)
    res = invoke(
        "evaluate", run.run_dir, shards, "--split", "test", "--json", "--out", tmp_path / "e"
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["num_images"] == len(list_images(run.data / "test"))
    assert doc["accuracy"] == run.report["test_accuracy"]


def test_a_brace_pattern_matching_nothing_is_one_line_exit_2(folder_rows, tmp_path):
    run, _ = folder_rows
    out = tmp_path / "p.csv"
    res = invoke("predict", run.run_dir, f"{tmp_path}/train-{{000000..000003}}.tar", "--out", out)
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert (
        "\n" not in line and line.startswith("error: brace pattern") and "matches no file" in line
    )
    assert not out.exists()
