"""examples/own_loop.py runs (tiny settings) and its result works with load_finetuned and predict."""

from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nctune
from nctune.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_loop.py"


@pytest.mark.slow
def test_own_loop_trains_tracks_nc1_saves_and_predicts(tmp_path, monkeypatch, capsys):
    # run as a user runs it (`python examples/own_loop.py ...`), in this process: a fresh
    # interpreter only added ~4 s of imports
    out = tmp_path / "run"
    tiny = ["--backbone", "timm:resnet10t", "--no-pretrained", "--image-size", "32"]
    argv = [str(EXAMPLE), *tiny, "--per-class", "6", "--epochs", "2", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert capsys.readouterr().out.count("head-input NC1") == 2
    result = json.loads((out / "own_loop.json").read_text())
    assert len(result["history"]) == 2 and all(h["nc1"] > 0 for h in result["history"])
    assert len(result["layers"]) == 1 and result["layers"][0] in dict(result["nc1_profile"])

    model = nctune.load_finetuned(out)
    assert model.input_config.image_size == 32 and model.skip_block == result["layers"][0]
    assert model.classes == ["Sneaker", "T-shirt-top", "Trouser"]
    res = CliRunner().invoke(
        app, ["predict", str(out), str(out / "images" / "test"), "--out", str(tmp_path / "p.csv")]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    hits = sum(r["label"] == Path(r["path"]).parent.name for r in rows)
    assert len(rows) == 9 and hits / len(rows) == result["test_accuracy"]
