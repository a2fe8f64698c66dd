"""`nctune finetune` end to end: artefacts, load_finetuned, bad input, SIGINT/SIGKILL + resume."""

from __future__ import annotations

import csv
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nctune import load_finetuned
from nctune.cli import app
from nctune.config import load_recipe
from nctune.data import build_data
from nctune.errors import DataError
from nctune.training.train import evaluate
from tests.expect import appears
from tests.tiny import extend, tiny

TINY = tiny("data.max_test_samples=60", "train.epochs=2", "train.lr=0.01")
REPORT_KEYS = {
    "strategy",
    "tuned_layers",
    "trainable_params",
    "total_params",
    "val_accuracy",
    "test_accuracy",
    "nc1_before",
    "nc1_after",
    "wall_seconds",
    "history",
}


def sets(*extra: str) -> list[str]:
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def finetune_json(out: Path, *extra: str) -> dict:
    """Run ``nctune finetune`` on the tiny recipe into ``out``; its ``--json`` document."""
    res = invoke("finetune", *sets(*extra), "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def reloaded_test_accuracy(run_dir: Path) -> float:
    """Production inference: load_finetuned (no pickle) on the run's own test split."""
    model = load_finetuned(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    splits = build_data(recipe.data, model.input_config, seed=recipe.seed)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=16)
    return evaluate(model, loader, torch.device("cpu"))[0]


def test_finetune_writes_the_contract_and_load_finetuned_reproduces_it(tmp_path):
    out = tmp_path / "run"
    doc = finetune_json(out, "strategy.name=scl", "strategy.layers=[layer3.0]")
    assert set(doc) >= REPORT_KEYS
    assert doc == json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.csv",
        "model.safetensors",
        "recipe.yaml",
        "report.json",
        "training.png",
    ]
    # metrics.csv: one row per epoch, the same numbers as report.json's history
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in doc["history"]] == [1, 2]
    assert [float(r["loss"]) for r in rows] == [h["loss"] for h in doc["history"]]
    assert doc["strategy"] == "scl" and doc["tuned_layers"] == ["layer3.0"]
    assert 0 < doc["trainable_params"] < doc["total_params"]
    assert len(doc["history"]) == 2 and {"loss", "accuracy", "nc1"} <= set(doc["history"][0])
    assert doc["nc1_before"] > 0 and doc["nc1_after"] > 0
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Production inference: rebuilt from safetensors metadata, no pickle, same accuracy.
    model = load_finetuned(out)
    assert not model.training and model.classes == doc["classes"]
    assert reloaded_test_accuracy(out) == pytest.approx(doc["test_accuracy"], abs=1e-12)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["strategy.name=magic"], "strategy.name"),
        (["strategy.rule=kne"], "strategy.rule"),
        (["strategy.name=layers", "strategy.layers=[layer9.9]"], "strategy.layers"),
        (["strategy.name=lora", "strategy.lora_targets=[layer1.0.bn1]"], "strategy.lora_targets"),
        (["train.lr=0"], "train.lr"),
        (["train.lr=-1e-3"], "train.lr"),
    ],
)
def test_bad_strategy_input_is_one_line_exit_2_and_no_folder(tmp_path, extra, match):
    out = tmp_path / "run"
    res = invoke("finetune", *sets(*extra), "--out", str(out))
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in res.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = invoke("finetune", *sets(), "--out", str(out))
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert "--resume" not in res.stderr  # no checkpoint here: nothing to resume
    assert (out / "keep.txt").read_text() == "precious"
    (out / "checkpoint.pt").write_bytes(b"x")
    res = invoke("finetune", *sets(), "--out", str(out))
    assert res.exit_code == 2 and f"--resume {out}" in res.stderr


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    def fails_before_any_checkpoint(*args, **kwargs):
        raise DataError("data: tiny/img.png: cannot decode the image; replace or remove it")

    with monkeypatch.context() as m:
        m.setattr(sys.modules["nctune.finetune"], "finetune", fails_before_any_checkpoint)
        res = invoke("finetune", *sets(), "--out", str(out), "--overwrite")
    assert res.exit_code == 2 and "img.png" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old run, restored as it was

    res = invoke("finetune", *sets("strategy.name=linear"), "--out", str(out), "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists() and (out / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no set-aside copy left


def test_resume_refuses_a_different_recipe_and_a_finished_run(tmp_path):
    out = tmp_path / "run"
    assert invoke("finetune", *sets("strategy.name=linear"), "--out", str(out)).exit_code == 0
    res = invoke("finetune", *sets("strategy.name=linear"), "--resume", str(out))
    assert res.exit_code == 2 and "that run finished" in res.stderr and "--overwrite" in res.stderr
    # a finished run in --out: replace it or pick another folder; resuming is no option
    res = invoke("finetune", *sets("strategy.name=linear"), "--out", str(out))
    assert res.exit_code == 2 and "it finished" in res.stderr and "--overwrite" in res.stderr
    assert "--resume" not in res.stderr
    (out / "checkpoint.pt").write_bytes(b"x")
    res = invoke("finetune", *sets("strategy.name=linear", "train.lr=0.5"), "--resume", str(out))
    assert res.exit_code == 2 and "train.lr" in res.stderr
    res = invoke("finetune", *sets("strategy.name=linear"), "--resume", str(out))
    assert res.exit_code == 2 and "unreadable checkpoint" in res.stderr
    assert "continue with" not in res.stderr  # no advice to resume from that very file
    for damaged in ("backbone: [unclosed", "- a list\n- not a recipe\n"):
        (out / "recipe.yaml").write_text(damaged)
        res = invoke("finetune", *sets("strategy.name=linear"), "--resume", str(out))
        assert res.exit_code == 2, res.output
        assert "recipe.yaml is damaged" in res.stderr and len(res.stderr.splitlines()) == 1


def test_bad_input_found_after_a_checkpoint_keeps_it_and_says_how_to_resume(tmp_path, monkeypatch):
    finetune_mod = importlib.import_module("nctune.finetune")  # nctune.finetune is the verb
    real = finetune_mod.measure_after_training

    def corrupt_after_training(*args, **kwargs):
        raise DataError("data: test/img.png: cannot read image; fix or remove the file")

    monkeypatch.setattr(finetune_mod, "measure_after_training", corrupt_after_training)
    out = tmp_path / "run"
    res = invoke("finetune", *sets("strategy.name=linear"), "--out", str(out), "-q")
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()  # -q: no epoch lines, the error alone
    assert len(lines) == 1 and "img.png" in lines[0] and f"--resume {out}" in lines[0]
    assert (out / "checkpoint.pt").exists()
    monkeypatch.setattr(finetune_mod, "measure_after_training", real)  # the user fixed the image
    res = invoke("finetune", *sets("strategy.name=linear"), "--resume", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "report.json").exists() and not (out / "checkpoint.pt").exists()


# --------------------------------------------------------------- signals
SLOW = extend(
    TINY,
    "data.samples_per_class=20",  # 13 steps an epoch: after epoch 1's checkpoint, 39 more
    "train.epochs=4",  # steps to land the signal in (the killer polls every 50 ms)
    "strategy.name=full",  # no prefix cache: every epoch costs real time, easy to interrupt
)


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nctune", "finetune", *args]


def _metrics(run_dir: Path) -> dict:
    doc = json.loads((run_dir / "report.json").read_text())
    return {k: doc[k] for k in ("val_accuracy", "test_accuracy", "nc1_after")} | {
        "history": [(h["loss"], h["accuracy"], h["val_accuracy"], h["nc1"]) for h in doc["history"]]
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    # in this process (one thread, as the killed one): only the killed run needs its own
    out = tmp_path_factory.mktemp("ref") / "run"
    res = invoke("finetune", *(a for s in SLOW for a in ("--set", s)), "--out", str(out), "-q")
    assert res.exit_code == 0, res.output
    return _metrics(out)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_metrics(tmp_path, sig, uninterrupted):
    out = tmp_path / "run"
    args = [a for s in SLOW for a in ("--set", s)]
    proc = subprocess.Popen(
        _cmd(*args, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    appears(out / "checkpoint.pt", proc)  # epoch 1 is saved; the signal lands in epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 128 + signal.SIGINT, err.decode()
        assert b"Traceback" not in err
        # the printed command is the one that resumes: same --set values, the run folder
        line = next(x for x in err.decode().splitlines() if "Continue with: " in x)
        suggested = shlex.split(line.split("Continue with: ", 1)[1])
        assert suggested == ["nctune", "finetune", *args, "--resume", str(out)]
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()
    done = invoke("finetune", *args, "--resume", str(out), "-q")  # resumed in this process
    assert done.exit_code == 0, done.output
    assert _metrics(out) == uninterrupted
    assert not (out / "checkpoint.pt").exists()  # a finished run keeps model.safetensors only
    report = json.loads((out / "report.json").read_text())  # time over both sessions
    assert report["sessions"] == 2 and report["cpu_seconds"] > 0
    assert report["wall_seconds"] >= sum(h["seconds"] for h in report["history"])  # epoch 1's too


@pytest.mark.parametrize("first", ["linear", "scl"])
def test_a_run_folder_is_a_backbone_to_fine_tune_again(tmp_path, first):
    from nctune import create_backbone

    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    layers = ["strategy.layers=[layer3.0]"] if first == "scl" else []
    finetune_json(run1, f"strategy.name={first}", *layers)
    tuned = load_finetuned(run1)
    backbone = create_backbone(f"file:{run1}")
    assert backbone.spec == f"file:{run1}" and backbone.num_classes == tuned.num_classes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = backbone.features(x)
        torch.testing.assert_close(feats, tuned.backbone(x).flatten(1))  # the tuned weights
        if first == "linear":  # a plain head comes back as the classifier
            torch.testing.assert_close(backbone.model(x), tuned(x))

    doc = finetune_json(run2, "strategy.name=linear", f"backbone.name=file:{run1}")
    # rebuilt from the original architecture record, not from a pointer to run1
    assert reloaded_test_accuracy(run2) == pytest.approx(doc["test_accuracy"], abs=1e-12)
