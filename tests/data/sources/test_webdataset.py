"""data.source=webdataset and `nctune shard`: the same numbers as the image folder (also
through hf and under torchrun), every sample read once, and one-line errors naming the
shard and key. Shards and datasets are written by the tests; nothing downloaded."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nctune.analyze import analyze_recipe
from nctune.cli import app
from nctune.config import load_recipe
from nctune.data import build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg
from tests.data.sources.formats import CLASSES, hf_dataset, image_folder, shards
from tests.expect import one_line
from tests.torchrun_batch import ONE_LAUNCH

TINY = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.image_size=32",
    "data.val_fraction=0.25",
    "data.batch_size=16",
    "device=cpu",
]


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("formats") / "images")


def test_same_images_same_nc1_per_block_in_all_three_formats(folder, tmp_path):
    pytest.importorskip("datasets")
    hf_dataset(folder).save_to_disk(str(tmp_path / "hf"))
    shards(folder, tmp_path / "wds", shard_size=10)
    pattern = str(tmp_path / "wds" / "train-{000000..000003}.tar")
    layers = {}
    for source, path in [
        ("imagefolder", folder),
        ("hf", tmp_path / "hf"),
        ("webdataset", tmp_path / "wds"),
        ("webdataset", pattern),
    ]:
        recipe = load_recipe(None, [*TINY, f"data.source={source}", f"data.path={path}"])
        doc = analyze_recipe(recipe).profile.to_dict()
        assert (doc["num_samples"], doc["num_classes"]) == (27, 3)
        layers[f"{source}:{path}"] = doc["layers"]
    ref = layers.pop(f"imagefolder:{folder}")
    assert len(ref) >= 3
    for name, got in layers.items():
        assert [x["name"] for x in got] == [x["name"] for x in ref]
        for a, b in zip(ref, got, strict=True):
            assert b["nc1"] == pytest.approx(a["nc1"], rel=1e-9, abs=0), (name, a["name"])
            assert b["ncc_accuracy"] == a["ncc_accuracy"], name


def test_shard_command_writes_all_or_nothing(folder, tmp_path):
    res = CliRunner().invoke(
        app, ["shard", str(folder), str(tmp_path / "out"), "--shard-size", "16", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["samples"] == {"train": 36} and doc["classes"] == list(CLASSES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "classes.txt",
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    with tarfile.open(tmp_path / "out" / "train-000002.tar") as tar:
        assert tar.getnames() == [
            f"{i:08d}.{ext}" for i in (32, 33, 34, 35) for ext in ("png", "cls")
        ]
    # a bad image folder: exit 2, one line, the earlier shards untouched and no staging left
    before = (tmp_path / "out" / "train-000000.tar").read_bytes()
    (tmp_path / "one").mkdir()
    image_folder(tmp_path / "one", per_class=1)
    for extra in ("bee", "cow"):
        for p in (tmp_path / "one" / extra).iterdir():
            p.unlink()
        (tmp_path / "one" / extra).rmdir()
    res = CliRunner().invoke(app, ["shard", str(tmp_path / "one"), str(tmp_path / "out")])
    one_line(res, "at least two classes")
    assert (tmp_path / "out" / "train-000000.tar").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    res = CliRunner().invoke(app, ["shard", str(folder), str(tmp_path / "x"), "--shard-size", "0"])
    one_line(res, "--shard-size")
    assert not (tmp_path / "x").exists()


def test_shard_list_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no .tar shards \(empty shard list\)"):
        build_data(cfg(source="webdataset", path=tmp_path / "empty"), IC)
    pattern = str(tmp_path / "s-{000..003}.tar")
    with pytest.raises(DataError, match=r"brace pattern .* matches no file \(first: .*s-000.tar"):
        build_data(cfg(source="webdataset", path=pattern), IC)
    (tmp_path / "list.txt").write_text("# no shards yet\n")
    with pytest.raises(DataError, match=r"list.txt lists no shards \(empty shard list\)"):
        build_data(cfg(source="webdataset", path=tmp_path / "list.txt"), IC)


def test_bad_samples_name_the_shard_and_key(folder, tmp_path):
    png = (folder / "ant" / "000.png").read_bytes()
    write_tar(tmp_path / "nolabel.tar", {"a.png": png, "a.cls": b"0", "b.png": png})
    with pytest.raises(DataError, match=r"shard .*nolabel.tar key b: no 'cls' label"):
        build_data(cfg(source="webdataset", path=tmp_path / "nolabel.tar"), IC)
    write_tar(tmp_path / "word.tar", {"a.png": png, "a.cls": b"cat"})
    with pytest.raises(DataError, match=r"word.tar key a: label 'cat' in 'cls' is not an integer"):
        build_data(cfg(source="webdataset", path=tmp_path / "word.tar"), IC)
    members = {"a.png": png, "a.cls": b"0", "b.png": png, "b.cls": b"1", "c.png": b"junk"}
    write_tar(tmp_path / "bad.tar", {**members, "c.cls": b"1"})
    recipe = [*TINY, "data.source=webdataset", f"data.path={tmp_path / 'bad.tar'}"]
    recipe += ["data.val_fraction=0"]
    res = CliRunner().invoke(
        app, ["analyze", *[a for r in recipe for a in ("--set", r)], "--out", str(tmp_path / "out")]
    )
    one_line(res, "bad.tar key c: cannot read the image")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@ONE_LAUNCH
def test_torchrun_over_shards_equals_one_process_each_sample_read_once(
    tmp_path, tmp_path_factory, monkeypatch
):
    from nctune.data.sources import webdataset as w
    from tests.torchrun_batch import sets, shared, shared_root, webdataset_sets

    # two: torchrun on CPU (gloo), in the one launch of tests/torchrun_batch.py, over 36
    # images in shards of 7, each rank logging the shard:key of every sample it reads
    two = shared(tmp_path_factory)["webdataset"]
    two.ok()
    reads = {2: [shared_root() / f"reads.{r}" for r in range(2)], 1: [tmp_path / "reads.0"]}
    # one: this process, no process group, logging its reads the same way
    read = w._ShardImages.__getitem__

    def counted(self, i):
        with open(reads[1][0], "a") as f:
            f.write(f"{self.shards[self.shard[int(i)]]}:{self.key[int(i)]}\n")
        return read(self, i)

    monkeypatch.setattr(w._ShardImages, "__getitem__", counted)
    args = ["analyze", *sets(*webdataset_sets(shared_root() / "data"))]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out1"), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert two.stdout[1] == ""  # rank 0 alone printed
    docs = {1: json.loads(res.stdout), 2: json.loads(two.stdout[0])}
    per_rank = [p.read_text().split() for p in reads[2]]
    assert all(per_rank) and set(per_rank[0]).isdisjoint(per_rank[1])
    every = sorted(k for keys in per_rank for k in keys)
    assert len(every) == len(set(every)) == 36  # none read twice, none skipped
    assert every == sorted(reads[1][0].read_text().split())
    assert docs[1]["num_samples"] == docs[2]["num_samples"] == 36
    for a, b in zip(docs[1]["layers"], docs[2]["layers"], strict=True):
        for key in ("nc1", "cdnv", "trace_ratio"):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=0), (a["name"], key)


def test_shard_handles_are_closed_not_leaked(folder, tmp_path):
    # A handle left for the garbage collector is a ResourceWarning, which a command shows as
    # a second stderr line after its one-line error (seen in CI: "unclosed file …bad.tar").
    # Threads reading the same new shard must not open it twice either.
    import gc
    import threading
    import warnings

    from nctune.data.sources.webdataset import _index, _ShardImages

    png = (folder / "ant" / "000.png").read_bytes()
    tar = write_tar(
        tmp_path / "one.tar",
        {f"{k}.png": png for k in "abcdefgh"} | {f"{k}.cls": b"0" for k in "abcdefgh"},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            images = _ShardImages(_index([str(tar)], ["png"], "cls"))
            start = threading.Barrier(8)

            def read(i, images=images, start=start):
                start.wait()
                images[i]

            threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            del images, threads
            gc.collect()
    # only this shard's: other tests in the same process may leave their own (a database
    # connection) for this collection to find
    leaks = [w for w in caught if w.category is ResourceWarning and str(tar) in str(w.message)]
    assert not leaks, leaks[0].message
