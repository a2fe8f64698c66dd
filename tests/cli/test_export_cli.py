"""`nctune export` through the CLI: --json, the written file, and one-line refusals."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from nctune.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_torchscript_export_json_and_file(tiny_runs, tmp_path):
    run = tiny_runs("scl")
    out = tmp_path / "sub" / "scl.pt"
    res = invoke("export", run.run_dir, "--format", "torchscript", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["path"] == str(out) and doc["format"] == "torchscript"
    assert doc["num_images"] == 12 and doc["max_abs_diff"] <= 1e-4
    assert doc["input"] == {
        "name": "pixels",
        "shape": ["batch", 3, 32, 32],
        "dtype": "float32",
        "range": [0.0, 1.0],
    }
    assert torch.jit.load(str(out))(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_export_refusals_are_one_line_exit_2(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    for args, match in [
        (["--format", "tflite"], "--format"),
        (["--format", "torchscript", "--images", tmp_path / "none"], "no such file"),
        (["--format", "torchscript", "--tolerance", "0"], "--tolerance"),
    ]:
        res = invoke("export", run.run_dir, *args, "--out", tmp_path / "m.pt")
        assert res.exit_code == 2, res.output
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and match in lines[0] and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []
    res = invoke("export", tmp_path, "--format", "torchscript")
    assert res.exit_code == 2 and "no fine-tuned model" in res.stderr
