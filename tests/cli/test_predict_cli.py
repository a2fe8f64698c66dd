"""`nctune predict`: rows per image, failures per row, top-k, JSON, and no torn output."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nctune.cli import app
from nctune.data import list_images


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_predict_on_the_test_files_reproduces_the_reported_test_accuracy(tiny_runs, tmp_path):
    run = tiny_runs("scl")
    out = tmp_path / "pred.csv"
    res = invoke("predict", run.run_dir, run.data / "test", "--out", out, "--batch-size", "7")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    files = list_images(run.data / "test")
    assert [r["path"] for r in rows] == files
    hits = sum(r["label"] == Path(r["path"]).parent.name for r in rows)
    assert hits / len(rows) == run.report["test_accuracy"]
    assert list(rows[0]) == ["path", "label", "probability", "error"]
    assert f"Predicted {len(files)} of {len(files)} images (0 failed)" in res.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]  # no partial file left


def test_corrupt_image_row_fails_the_others_are_predicted(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = list_images(run.data / "val")[:5]
    for i, f in enumerate(files):
        (folder / f"{i}.png").write_bytes(Path(f).read_bytes())
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "p.jsonl"
    res = invoke("predict", run.run_dir, folder, "--out", out)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    failed = [r for r in rows if r["error"]]
    assert [r["path"] for r in failed] == [str(folder / "2.png")]
    assert failed[0]["label"] is None and "cannot read image" in failed[0]["error"]
    assert all(r["label"] in ("ant", "bee", "cat") for r in rows if not r["error"])
    assert "(1 failed)" in res.stdout and "2.png" in res.stderr


def test_top_k_and_json(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    out = tmp_path / "p.csv"
    res = invoke("predict", run.run_dir, run.data / "val", "--out", out, "--top-k", "2", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # the JSON alone on stdout
    assert doc["num_images"] == 12 and doc["num_failed"] == 0 and doc["out"] == str(out)
    for row in doc["predictions"]:
        top = row["top_k"]
        assert len(top) == 2 and top[0] == {
            "label": row["label"],
            "probability": row["probability"],
        }
        assert top[0]["probability"] >= top[1]["probability"] and top[0]["label"] != top[1]["label"]
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label", "probability", "label_2", "probability_2", "error"]
    assert [r["label_2"] for r in rows] == [r["top_k"][1]["label"] for r in doc["predictions"]]
    # k above the class count lists every class
    res = invoke("predict", run.run_dir, run.data / "val", "--out", out, "--top-k", "9", "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)["predictions"][0]["top_k"]) == 3


@pytest.mark.parametrize(
    "args, match",
    [
        (["{empty}"], "no images in this folder"),
        (["{nope}"], "no such file"),
        (["{val}", "--top-k", "0"], "--top-k"),
        (["{val}", "--out", "{tmp}/p.txt"], ".csv or .jsonl"),
        (["{val}", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tiny_runs, tmp_path, args, match):
    run = tiny_runs("linear")
    (tmp_path / "empty").mkdir()
    fill = {"empty": tmp_path / "empty", "nope": tmp_path / "nope", "val": run.data / "val"}
    fill["tmp"] = tmp_path
    args = [a.format(**fill) for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "o.csv"]
    res = invoke("predict", run.run_dir, *args, *out)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_not_a_run_is_one_line_exit_2(tmp_path, tiny_runs):
    res = invoke("predict", tmp_path, tiny_runs("linear").data / "val", "--out", tmp_path / "o.csv")
    assert res.exit_code == 2 and "no fine-tuned model" in res.stderr


@pytest.mark.slow
def test_sigkill_mid_predict_leaves_no_truncated_output(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    folder = tmp_path / "many"
    folder.mkdir()
    src = list_images(run.data / "train")
    for i in range(600):  # enough that predicting one image per batch takes a while
        (folder / f"{i:04d}.png").write_bytes(Path(src[i % len(src)]).read_bytes())
    out = tmp_path / "out" / "pred.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "nctune", "predict", str(run.run_dir), str(folder)]
    proc = subprocess.Popen([*cmd, "--out", str(out), "--batch-size", "1"], env=env)
    deadline = time.monotonic() + 120
    partial: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = list(out.parent.glob(".pred.csv.partial-*")) if out.parent.exists() else []
        if partial and partial[0].read_text().count("\n") > 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "predict finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # the output file appears only when complete
    lines = partial[0].read_text().splitlines()
    assert lines[0].startswith("path,label") and 20 <= len(lines) - 1 < 600
    assert all(len(next(csv.reader([line]))) == 4 for line in lines)  # whole rows only
    # a completed run afterwards (in this process) writes the full file
    done = invoke("predict", run.run_dir, folder, "--out", out, "--batch-size", "64")
    assert done.exit_code == 0, done.output
    assert len(out.read_text().splitlines()) == 601


def test_a_labelled_manifest_keeps_its_label_beside_the_prediction(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    files = list_images(run.data / "test")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,split\n" + "".join(f"{f},{Path(f).parent.name},test\n" for f in files)
    )
    out = tmp_path / "p.csv"
    res = invoke("predict", run.run_dir, manifest, files[0], "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)["predictions"]
    truth = [Path(f).parent.name for f in files]
    assert [r["true_label"] for r in doc] == [*truth, None]  # a plain file has no label
    assert list(doc[0])[:3] == ["path", "true_label", "label"]
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:4] == ["path", "true_label", "label", "probability"]
    assert [r["true_label"] for r in rows] == [*truth, ""]
    correct = sum(r["true_label"] == r["label"] for r in rows[:-1]) / len(files)
    assert correct == pytest.approx(run.report["test_accuracy"])
    jsonl = tmp_path / "p.jsonl"
    assert invoke("predict", run.run_dir, manifest, "--out", jsonl).exit_code == 0
    assert [json.loads(line)["true_label"] for line in jsonl.open()] == truth
    # without a label column the rows are as before
    plain = tmp_path / "plain.csv"
    plain.write_text("path\n" + "".join(f"{f}\n" for f in files))
    assert invoke("predict", run.run_dir, plain, "--out", out).exit_code == 0
    assert "true_label" not in next(csv.DictReader(out.open()))
