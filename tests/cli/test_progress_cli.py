"""What a long run shows and how it stops: epoch log lines off a terminal, -q, metrics.csv,
Ctrl-C during the profiling pass, --version, and `nctune init` → `nctune analyze`."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import nctune
from nctune.cli import app
from tests.cli.test_finetune_cli import sets

#: The documented epoch line (docs/cli.md): epoch, loss, accuracy, val accuracy, NC1, time, ETA.
EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+) loss=\d+\.\d{4} acc=\d+\.\d% val_acc=(?:\d+\.\d%|-) "
    r"nc1=(?:\S+) time=\d+\.\ds eta=(?:\d+s|\d+m\d\ds|\dh\d\dm|-)$"
)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_non_tty_finetune_logs_one_line_per_epoch_and_metrics_csv(tmp_path):
    out = tmp_path / "run"
    res = invoke("finetune", *sets("strategy.name=linear", "train.epochs=3"), "--out", str(out))
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    epochs = [m for m in map(EPOCH_LINE.match, lines) if m]
    assert [(int(m[1]), int(m[2])) for m in epochs] == [(1, 3), (2, 3), (3, 3)], res.stderr
    assert lines[-1].startswith("epoch 3/3") or lines[-1].startswith("after training")
    # every other line says which pass started or ended — no bar remnants, no blank lines
    others = [ln for ln in lines if not EPOCH_LINE.match(ln)]
    assert others and all(re.search(r": (started, |done )", ln) for ln in others), others
    # metrics.csv: a header and one row per epoch (Lightning CSVLogger style)
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {
        "epoch",
        "phase",
        "loss",
        "accuracy",
        "val_accuracy",
        "nc1",
        "lr",
        "seconds",
    }

    quiet = invoke("finetune", *sets("strategy.name=linear"), "--out", str(tmp_path / "q"), "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"nctune {nctune.__version__}"
    from importlib.metadata import version

    assert nctune.__version__ == version("nctune")


def test_help_points_to_the_fields_and_the_common_overrides():
    for command in ("analyze", "finetune", "sweep", "init", "rank"):
        res = invoke(command, "--help")
        assert res.exit_code == 0
        text = " ".join(res.stdout.split())
        assert "docs/recipes.md" in text and "nctune init --fields" in text, command
        for key in ("data.path=", "device=cuda", "train.epochs=", "strategy.name="):
            assert key in text, (command, key)


def test_init_writes_a_recipe_that_analyze_runs(tmp_path, make_image_folder):
    images = make_image_folder("photos", {"cat": 6, "dog": 6, "fox": 6})
    recipe = tmp_path / "mine.yaml"
    res = invoke(
        "init", "--data", str(images), "--backbone", "timm:resnet10t", "--out", str(recipe),
        "--set", "backbone.pretrained=false", "--set", "data.image_size=32",
        "--set", "data.batch_size=8", "--set", "device=cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "3 classes" in res.stdout and "18 images" in res.stdout
    text = recipe.read_text()
    assert text.count("\n# ") + text.count("\n  # ") >= 10  # commented, key by key
    doc = yaml.safe_load(text)
    assert doc["backbone"]["name"] == "timm:resnet10t"
    assert doc["data"]["source"] == "imagefolder" and Path(doc["data"]["path"]) == images
    out = tmp_path / "analysis"
    res = invoke("analyze", str(recipe), "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert (out / "analysis.json").exists()
    # written once: a second init refuses to clobber it, a missing folder is one line
    again = invoke("init", "--data", str(images), "--out", str(recipe))
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    missing = invoke("init", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "n.yaml"))
    assert missing.exit_code == 2 and "data.path" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and not (tmp_path / "n.yaml").exists()


def test_init_fields_lists_every_documented_field():
    from nctune.recipe_fields import field_rows

    res = invoke("init", "--fields")
    assert res.exit_code == 0
    for row in field_rows():
        assert row.name in res.stdout
    doc = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    for row in field_rows():  # the same rows docs/recipes.md is generated from
        assert f"| `{row.name}` |" in doc


# --------------------------------------------------------------- Ctrl-C while profiling
#: strategy auto needs the profile; 300 images in batches of 8 (38 batches) keep the pass
#: long enough to be interrupted in the middle, and small enough to finish on --resume.
PROFILED = [
    "backbone.name=timm:resnet10t",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=30",
    "data.val_fraction=0.03",
    "data.max_test_samples=40",
    "data.image_size=32",
    "data.batch_size=8",
    "train.epochs=1",
    "train.profile_after=false",
    "strategy.name=auto",
]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigint_during_profiling_exits_130_fast_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = [a for s in PROFILED for a in ("--set", s)]
    cmd = [sys.executable, "-m", "nctune", "finetune", *args]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=_env(),
        text=True,
    )  # fmt: skip
    seen = []
    for line in proc.stderr:  # non-TTY: a line when the profiling pass starts
        seen.append(line)
        if line.startswith("profile: train: started"):  # after its first batch
            break
    else:
        pytest.fail(f"no profiling line: {seen}")
    sent = time.monotonic()  # inside the pass: its first batch of 38 is done
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == 130, rest
    assert took < 3.0, f"exit took {took:.1f}s after SIGINT"
    assert "profile: train: done" not in rest  # it really stopped inside the pass
    assert "Traceback" not in rest and "Continue with: " in rest
    # nothing half-made: the recipe, no checkpoint, no cache, no report
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]
    done = invoke("finetune", *args, "--resume", str(out), "-q")  # in this process
    assert done.exit_code == 0, done.output
    assert (out / "report.json").exists() and not (out / "checkpoint.pt").exists()


def test_readme_first_screen_command_runs_on_your_own_images(tmp_path, make_image_folder):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:40])
    command = next(
        line
        for line in first_screen.splitlines()
        if "PATH/TO/IMAGEFOLDER" in line and "--set" in line
    )
    images = make_image_folder("mine", {"a": 5, "b": 5})
    argv = shlex.split(command.replace("PATH/TO/IMAGEFOLDER", str(images)))
    assert argv[0] == "nctune"
    out = tmp_path / "out"
    res = invoke(*argv[1:], "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert (out / "analysis.json").exists()


def test_help_and_version_do_not_load_torch():
    code = (
        "import sys; from nctune.cli import app; "
        "heavy = [m for m in ('torch', 'timm', 'matplotlib', 'peft', 'transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
