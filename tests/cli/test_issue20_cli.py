"""Issue 20 through the real ``nctune`` entry point: ``predict`` never writes a NaN answer
(item 7), ``init`` refuses a backbone its source does not know (item 26)."""

from __future__ import annotations

import csv
import importlib
import json

import pytest
import torch
from typer.testing import CliRunner

from nctune.cli import app
from tests.expect import one_line
from tests.test_issue20_serving import nan_model_run

INFERENCE = importlib.import_module("nctune.serving.inference")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ item 7: predict
@pytest.mark.parametrize("key", ["head.weight", "backbone.bn1.running_var"])
def test_predict_with_a_nan_model_is_refused_in_one_line_and_writes_nothing(
    tiny_runs, tmp_path, key
):
    run = tiny_runs("linear")
    bad = nan_model_run(run.run_dir, tmp_path / "nan", key)
    out = tmp_path / "p.csv"
    one_line(invoke("predict", bad, run.data / "val", "--out", out), "model.safetensors", key)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


def test_an_image_with_non_finite_logits_is_an_error_row_not_a_nan_probability(
    tiny_runs, tmp_path, monkeypatch
):
    run = tiny_runs("linear")
    real = INFERENCE.load_finetuned

    def overflowing_on_the_first_image(*args, **kwargs):
        model = real(*args, **kwargs)
        forward = model.forward

        def patched(x, *a, **kw):
            out = forward(x, *a, **kw).clone()
            out[0, 0] = float("inf")  # the first image of each batch overflows
            return out

        model.forward = patched
        return model

    monkeypatch.setattr(INFERENCE, "load_finetuned", overflowing_on_the_first_image)
    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"p.{suffix}"
        res = invoke("predict", run.run_dir, run.data / "val", "--out", out, "--batch-size", "64")
        assert res.exit_code == 0, res.output
        if suffix == "csv":
            rows = list(csv.DictReader(out.open()))
            assert rows[0]["label"] == "" and rows[0]["probability"] == ""
            assert all(r["probability"] not in ("nan", "") for r in rows[1:])
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert rows[0]["label"] is None and rows[0]["probability"] is None
        assert "not finite" in rows[0]["error"] and not any(r["error"] for r in rows[1:])
        assert "(1 failed)" in res.stdout and "not finite" in res.stderr


def test_a_finite_model_still_predicts(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    out = tmp_path / "p.jsonl"
    assert invoke("predict", run.run_dir, run.data / "val", "--out", out).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["probability"])) for r in rows)


# ------------------------------------------------------------------ item 26: init --backbone
@pytest.fixture
def images(tmp_path):
    from PIL import Image

    for cls in ("ant", "bee"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "img" / cls / f"{i}.png")
    return tmp_path / "img"


@pytest.mark.parametrize(
    "backbone, reason",
    [
        ("nonsense", "unknown timm model 'nonsense'"),
        ("timm:resnet5O", "unknown timm model"),
        ("torchvision:resnt18", "did you mean resnet18"),
        ("packaged:nope", "unknown packaged model"),
        ("timm:", "names no model"),
    ],
)
def test_init_with_an_unknown_backbone_is_exit_2_naming_it_and_the_sources(
    images, tmp_path, backbone, reason
):
    out = tmp_path / "recipe.yaml"
    res = invoke("init", "--data", images, "--backbone", backbone, "--out", out)
    line = one_line(res, "--backbone", reason, "timm:", "torchvision:", "packaged:", "file:")
    assert line.count("--backbone") == 1 and not out.exists()


@pytest.mark.parametrize("backbone", ["timm:resnet10t", "torchvision:resnet18", "resnet10t"])
def test_init_with_a_known_backbone_still_writes_the_recipe(images, tmp_path, backbone):
    out = tmp_path / "recipe.yaml"
    res = invoke("init", "--data", images, "--backbone", backbone, "--out", out)
    assert res.exit_code == 0, res.output
    assert out.exists() and "Traceback" not in res.output


def test_init_names_backbone_name_when_set_replaced_it(images, tmp_path):
    out = tmp_path / "recipe.yaml"
    res = invoke("init", "--data", images, "--set", "backbone.name=timm:nonsense", "--out", out)
    line = one_line(res, "backbone.name", "unknown timm model 'nonsense'")
    assert "--backbone" not in line
