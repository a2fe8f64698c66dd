"""train.mlflow: a finetune logged to a real local MLflow file store reads back with MLflow's
own client (params, metric history, artifacts); tune nests one run per trial; a store that
cannot be used is one line, exit 2, nothing written. Tiny model at 32 px; offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nctune.cli import app
from tests.expect import one_line
from tests.tiny import set_args, tiny

mlflow = pytest.importorskip("mlflow")


def _finetune(out, *extra):
    sets = tiny("train.epochs=2", "strategy.name=linear", *extra)
    return CliRunner().invoke(app, ["finetune", *set_args(sets), "--out", str(out), "--json"])


def test_finetune_reads_back_with_mlflows_client(tmp_path):
    store = f"file:{tmp_path / 'mlruns'}"
    res = _finetune(tmp_path / "run", f"train.mlflow={store}", "train.mlflow_experiment=exp")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("exp")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["strategy.name"] == "linear"
    assert run.data.params["data.image_size"] == "32"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([e["loss"] for e in report["history"]])
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(report["val_accuracy"])
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "model.safetensors", "metrics.csv", "recipe.yaml"} <= files
    local = client.download_artifacts(run.info.run_id, "report.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text())["nc1_after"] == report["nc1_after"]


def test_unusable_tracking_uri_is_one_line_and_writes_nothing(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _finetune(tmp_path / "run", f"train.mlflow=http://127.0.0.1:{port}")
    one_line(res, "train.mlflow", "unreachable")
    (tmp_path / "file").write_text("x")
    res = _finetune(tmp_path / "run", f"train.mlflow=file:{tmp_path / 'file'}")
    one_line(res, "train.mlflow", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_tune_logs_one_child_run_per_trial(tmp_path):
    store = f"file:{tmp_path / 'mlruns'}"
    sets = tiny("train.epochs=1", "strategy.name=linear", f"train.mlflow={store}")
    sets += ["data.max_test_samples=100"]  # the best trial's test pass: 100 of 1,000 images
    sets += ["search.space={'train.lr': {'choice': [0.001, 0.01]}}", "search.pruner=none"]
    res = CliRunner().invoke(
        app, ["tune", *set_args(sets), "--trials", "2", "--out", str(tmp_path / "search")]
    )
    assert res.exit_code == 0, res.output
    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("nctune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "search"
    assert parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["trial 0", "trial 1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
