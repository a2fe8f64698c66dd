"""ONNX and TorchScript export: run by their runtimes, logits equal to PyTorch's to 1e-4."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import nctune
from nctune.cli import app
from nctune.data import list_images
from nctune.errors import ArtifactError, ExportError
from nctune.serving.export import export_run


def _pixels(run, n=6):
    """Real test images the run never saw in verification, as the graph's [0, 1] input."""
    model = nctune.load_finetuned(run.run_dir)
    files = list_images(run.data / "test")[:n]
    x = torch.stack([model.transform(Image.open(f)) for f in files])
    mean = torch.tensor(model.input_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.input_config.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return x * std + mean, model(x)


@pytest.mark.parametrize("strategy", ["linear", "scl", "lora"])
def test_onnx_export_matches_pytorch(tiny_runs, tmp_path, strategy):
    ort = pytest.importorskip("onnxruntime")  # part of the test extra: CI installs it
    run = tiny_runs(strategy)
    res = export_run(run.run_dir, "onnx", tmp_path / "m.onnx")
    assert res.path.is_file() and res.max_abs_diff <= 1e-4 and res.num_images == 12
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one file, no temporaries
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    pixels, logits = _pixels(run)
    out = session.run(None, {"pixels": pixels.numpy()})[0]
    np.testing.assert_allclose(out, logits.numpy(), atol=1e-4, rtol=0)
    meta = json.loads(session.get_modelmeta().custom_metadata_map["nctune"])
    assert meta["classes"] == ["ant", "bee", "cat"]
    assert meta["preprocessing"]["center_crop"] == 32


@pytest.mark.parametrize("strategy", ["linear", "scl", "lora"])
def test_torchscript_export_matches_pytorch(tiny_runs, tmp_path, strategy):
    run = tiny_runs(strategy)
    res = export_run(run.run_dir, "torchscript", tmp_path / "m.pt")
    assert res.max_abs_diff <= 1e-4
    extra = {"nctune.json": ""}
    loaded = torch.jit.load(str(res.path), _extra_files=extra)
    pixels, logits = _pixels(run)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), logits, atol=1e-4, rtol=0)
    assert json.loads(extra["nctune.json"])["classes"] == ["ant", "bee", "cat"]


def test_default_onnx_export_takes_a_batch_of_16_and_matches_pytorch(tiny_runs):
    ort = pytest.importorskip("onnxruntime")
    run = tiny_runs("scl")
    res = export_run(run.run_dir, "onnx", num_images=3)  # no dynamic_batch: the default
    try:
        assert res.path == run.run_dir / "model.onnx" and res.dynamic_batch
        assert res.input["shape"] == ["batch", 3, 32, 32]
        assert res.num_images == 3 and res.opset and res.opset >= 17
        session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
        pixels, logits = _pixels(run, n=16)
        assert len(pixels) == 16
        out = session.run(None, {"pixels": pixels.numpy()})[0]
        np.testing.assert_allclose(out, logits.numpy(), atol=1e-4, rtol=0)
    finally:
        res.path.unlink()


def test_static_batch_onnx_is_batch_one(tiny_runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run = tiny_runs("linear")
    res = export_run(run.run_dir, "onnx", tmp_path / "m.onnx", dynamic_batch=False, num_images=3)
    assert res.input["shape"] == [1, 3, 32, 32] and not res.dynamic_batch
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]


def test_an_existing_file_is_refused_untouched_without_overwrite(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    out = tmp_path / "m.pt"
    out.write_bytes(b"someone's file")
    res = CliRunner().invoke(
        app, ["export", str(run.run_dir), "--format", "torchscript", "--out", str(out)]
    )
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--overwrite" in lines[0] and str(out) in lines[0], res.stderr
    assert out.read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporaries left
    args = ["export", str(run.run_dir), "--format", "torchscript", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--overwrite", "--json"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != b"someone's file" and json.loads(res.stdout)["path"] == str(out)


def test_a_file_that_appears_during_the_export_is_not_clobbered(tiny_runs, tmp_path, monkeypatch):
    import nctune.serving.export as ex

    run = tiny_runs("linear")
    out = tmp_path / "m.pt"
    real = ex._run_torchscript

    def racing(tmp, px):  # another process writes --out while this export verifies
        out.write_bytes(b"theirs")
        return real(tmp, px)

    monkeypatch.setattr(ex, "_run_torchscript", racing)
    with pytest.raises(ArtifactError, match="already exists"):
        export_run(run.run_dir, "torchscript", out)
    assert out.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_static_and_dynamic_batch_flags_together_are_refused(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    args = ["export", str(run.run_dir), "--static-batch", "--dynamic-batch"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "--static-batch" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_beyond_tolerance_nothing_is_written(tiny_runs, tmp_path, monkeypatch):
    run = tiny_runs("linear")
    import nctune.serving.export as ex

    real = ex._run_torchscript
    monkeypatch.setattr(ex, "_run_torchscript", lambda tmp, px: real(tmp, px) + 1e-3)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_run(run.run_dir, "torchscript", tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_an_export_error(tiny_runs, tmp_path):
    with pytest.raises(ExportError, match="--format"):
        export_run(tiny_runs("linear").run_dir, "tflite", tmp_path / "m")


def test_missing_extra_is_one_line_naming_it(tiny_runs, tmp_path, monkeypatch):
    # onnxruntime made unimportable (as when the extra is not installed), via the real CLI
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    run_dir = tiny_runs("linear").run_dir
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "nctune[export]"' in lines[0], res.stderr
    assert "onnxruntime" in lines[0] and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []
