"""`nctune evaluate` through the CLI: --json, the files, the table and one-line refusals."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from nctune.cli import app
from nctune.data import list_images


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_json_is_the_written_document_and_matches_the_report(tiny_runs, tmp_path):
    run = tiny_runs("scl")
    out = tmp_path / "ev"
    res = invoke("evaluate", run.run_dir, "--out", out, "--json", "--top-k", "2")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "evaluation.json").read_text())
    assert doc["accuracy"] == pytest.approx(run.report["test_accuracy"], abs=1e-12)
    assert doc["top_k"] == 2 and doc["split"] == "test" and doc["num_images"] == 18
    assert (
        doc["files"] == ["evaluation.json", "confusion.png"] and (out / "confusion.png").is_file()
    )
    assert [c["class"] for c in doc["per_class"]] == ["ant", "bee", "cat"]


def test_console_shows_the_table_and_where_the_files_are(tiny_runs):
    run = tiny_runs("linear")
    res = invoke("evaluate", run.run_dir, run.data / "val")
    assert res.exit_code == 0, res.output
    for text in ("precision", "recall", "F1", "macro avg", "weighted avg", "Accuracy", "top-3"):
        assert text in res.stdout, res.stdout
    assert "Results in" in res.stdout and (run.run_dir / "evaluation" / "evaluation.json").is_file()


def _refused(res, match):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in res.output, res.stderr


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    wrong = tmp_path / "wrong"
    (wrong / "dog").mkdir(parents=True)
    (wrong / "dog" / "0.png").write_bytes((run.data / "test" / "ant" / "0.png").read_bytes())
    unlabelled = tmp_path / "unlabelled.csv"
    files = list_images(run.data / "test")
    unlabelled.write_text("path\n" + "\n".join(files) + "\n")
    out = tmp_path / "ev"
    for args, match in [
        ([wrong], "not classes of the run"),
        ([unlabelled], "'label'"),
        (["--top-k", "0"], "--top-k"),
        (["--split", "dev"], "--split"),
        ([tmp_path / "none"], "no such file"),
    ]:
        _refused(invoke("evaluate", run.run_dir, *args, "--out", out), match)
    assert not out.exists()
    _refused(invoke("evaluate", tmp_path), "no fine-tuned model")
