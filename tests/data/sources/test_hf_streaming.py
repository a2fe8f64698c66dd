"""data.streaming for data.source=hf (issue 22): one in-order pass over a streamed saved
folder or Parquet file gives the same NC1 per block as the memory-mapped dataset; the
commands that need random access refuse it in one line. Datasets built here."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nctune.analyze import analyze_recipe
from nctune.cli import app
from nctune.config import load_recipe
from nctune.errors import ConfigError
from tests.data.sources.formats import hf_dataset, image_folder
from tests.data.sources.test_webdataset import TINY
from tests.expect import one_line

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    ds = hf_dataset(image_folder(root / "images"))
    ds.save_to_disk(str(root / "hf"))
    ds.to_parquet(str(root / "d.parquet"))
    return root


def test_streamed_analyze_gives_the_same_nc1_per_block(saved, monkeypatch):
    from nctune.data.sources import hf

    read = hf._StreamImages.__getitem__
    seen: list[int] = []

    def counted(self, i):
        seen.append(int(i))
        return read(self, i)

    monkeypatch.setattr(hf._StreamImages, "__getitem__", counted)
    docs = {}
    for path, streaming in [
        (saved / "hf", False),
        (saved / "hf", True),
        (saved / "d.parquet", True),
    ]:
        sets = [*TINY, "data.source=hf", f"data.path={path}", f"data.streaming={streaming}"]
        docs[(path.name, streaming)] = analyze_recipe(load_recipe(None, sets)).profile.to_dict()
    ref = docs.pop(("hf", False))
    assert len(seen) == 2 * 36  # streamed twice: train + val passes, each row read once
    for name, doc in docs.items():
        assert doc["num_samples"] == ref["num_samples"] == 27
        assert [x["name"] for x in doc["layers"]] == [x["name"] for x in ref["layers"]]
        for a, b in zip(ref["layers"], doc["layers"], strict=True):
            assert b["nc1"] == pytest.approx(a["nc1"], rel=1e-9, abs=0), (name, a["name"])
            assert b["ncc_accuracy"] == a["ncc_accuracy"], name


def test_finetune_refuses_streaming_in_one_line(saved, tmp_path):
    sets = [*TINY, "data.source=hf", f"data.path={saved / 'hf'}", "data.streaming=true"]
    args = ["finetune", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(app, args)
    one_line(res, "data.streaming: finetune, tune and sweep need random access")
    assert "save_to_disk" in res.stderr and not (tmp_path / "run").exists()


def test_streaming_is_for_hf_only(saved):
    with pytest.raises(ConfigError, match="only data.source: hf streams"):
        load_recipe(None, [*TINY, "data.source=imagefolder", "data.streaming=true"])
