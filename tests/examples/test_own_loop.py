"""examples/own_loop.py runs (tiny settings) and its result works with load_finetuned and predict."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from typer.testing import CliRunner

import nctune
from nctune.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_loop.py"


def test_own_loop_trains_tracks_nc1_saves_and_predicts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("own_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run"
    tiny = ["--backbone", "timm:resnet10t", "--no-pretrained", "--image-size", "32"]
    result = module.main([*tiny, "--per-class", "6", "--epochs", "2", "--out", str(out)])
    assert len(result["history"]) == 2 and all(h["nc1"] > 0 for h in result["history"])
    assert len(result["layers"]) == 1 and result["layers"][0] in dict(result["nc1_profile"])
    assert "head-input NC1" in capsys.readouterr().out

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
