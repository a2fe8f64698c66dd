"""Nothing lost, nothing silently wrong (issue 10), through the real ``nctune`` entry point.

Two runs on one folder, divergence, a full disk while saving the model, an ``--overwrite``
run killed with SIGKILL: each exits 2 with one line (or recovers) and leaves the folder in a
state the next command can use.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from nctune.cli import app
from nctune.runs._lock import lock_path
from tests.expect import appears, one_line
from tests.tiny import extend, set_args, tiny

ROOT = Path(__file__).resolve().parents[2]
# the modules themselves: nctune.finetune (the attribute) is the public function once used
FINETUNE = importlib.import_module("nctune.finetune")
TRAIN = importlib.import_module("nctune.training.train")
ARTIFACTS = importlib.import_module("nctune.runs.artifacts")
TINY = tiny("data.max_test_samples=60", "train.epochs=2", "train.lr=0.01", "strategy.name=linear")


def sets(*extra: str) -> list[str]:
    return set_args([*TINY, *extra])


def invoke(*args: object) -> Result:
    argv = [str(a) for a in args]
    if argv and argv[0] in ("analyze", "finetune", "sweep"):
        argv.insert(1, "-q")  # no pass/epoch log lines (issue 15): stderr is the error alone
    return CliRunner().invoke(app, argv)


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return {
        **env,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "NCTUNE_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nctune", *args]


# ------------------------------------------------------------------ two runs, one folder
LONG = extend(TINY, "train.epochs=200", "strategy.name=full")


@pytest.mark.slow
def test_two_finetune_processes_on_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    args = [a for s in LONG for a in ("--set", s)]
    first = subprocess.Popen(
        _cmd("finetune", *args, "--out", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        appears(out / "checkpoint.pt", first, 180)  # well inside its run
        # the second run is this test's own process (a third interpreter only cost imports)
        second = CliRunner().invoke(app, ["finetune", *args, "--out", str(out), "--overwrite"])
        assert first.poll() is None, "the first run ended before the second was checked"
        assert second.exit_code == 2, second.output
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in second.output, second.output
        assert f"pid {first.pid}" in lines[0] and "in use by another nctune run" in lines[0]
        assert str(out) in lines[0] and "nctune finetune" in lines[0]
        assert second.stdout == ""
        # the first run's folder was not touched: still its own, still training
        assert (out / "checkpoint.pt").exists() and (out / "recipe.yaml").exists()
        assert siblings(out) == [".run.lock", "run"]
    finally:
        first.send_signal(signal.SIGTERM)  # finishes the step, checkpoints, exits 143
        _, err = first.communicate(timeout=180)
    assert first.returncode == 128 + signal.SIGTERM, err.decode()
    assert siblings(out) == ["run"]  # the lock is released with the run


@pytest.mark.slow
def test_sigkill_during_overwrite_restores_the_old_run_on_the_next_command(tmp_path):
    out = tmp_path / "run"
    assert invoke("finetune", *sets(), "--out", out).exit_code == 0  # a finished run
    before = (out / "model.safetensors").read_bytes()
    args = [a for s in LONG for a in ("--set", s)]
    proc = subprocess.Popen(
        _cmd("finetune", *args, "--out", str(out), "--overwrite"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    appears(tmp_path / f".run.old-{proc.pid}", proc, 180)  # the old run is set aside
    proc.kill()
    proc.communicate()
    assert not (out / "checkpoint.pt").exists()  # killed before its first checkpoint
    assert json.loads(lock_path(out).read_text())["pid"] == proc.pid  # a stale lock, too

    res = invoke("finetune", *sets(), "--out", out)  # the next command touching --out
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in res.output, res.stderr
    assert "already holds a run" in lines[0] and "--overwrite" in lines[0]
    assert "--resume" not in res.stderr  # a finished run has no checkpoint to resume
    assert f"restored the earlier run from .run.old-{proc.pid}" in lines[1]
    assert (out / "model.safetensors").read_bytes() == before
    assert siblings(out) == ["run"]


HOLD = """
import sys, time
from nctune.runs._lock import FolderClaim
FolderClaim(sys.argv[1], command="nctune tune other.yaml").acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("command", ["analyze", "sweep", "rank", "finetune", "resume"])
def test_every_command_refuses_a_folder_another_process_holds(tmp_path, command):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        if command == "resume":
            res = invoke("finetune", *sets(), "--resume", out)
        elif command == "sweep":
            res = invoke("sweep", *sets(), "--blocks", "layer1", "--modes", "layer", "--out", out)
        else:
            res = invoke(command, *sets(), "--out", out)
        one_line(res, str(out), f"pid {holder.pid}", "nctune tune other.yaml")
        assert res.stdout == "" and not out.exists()
    finally:
        holder.kill()
        holder.communicate()


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize(
    "lr, what",
    [("1e30", "the loss is nan"), ("1e300", "overflows")],
)
def test_divergence_stops_the_run_with_one_line_and_saves_no_model(tmp_path, lr, what):
    out = tmp_path / "run"
    res = invoke(
        "finetune",
        *sets(f"train.lr={lr}", "train.optimizer=sgd", "train.grad_clip=null"),
        "--out",
        out,
    )
    line = one_line(
        res, "diverged at epoch 1, step", what, "lower train.lr or enable train.grad_clip"
    )
    assert "--resume" not in line
    assert siblings(out) == []  # diverged in the first epoch: nothing worth keeping


def test_divergence_after_a_good_epoch_keeps_its_checkpoint_and_writes_no_model(
    tmp_path, monkeypatch
):
    real = TRAIN.lr_at

    def explodes_in_epoch_2(step, total, warmup, cfg, base_lr):  # steps_per_epoch is 1 here
        return 1e30 if step >= total // 2 else real(step, total, warmup, cfg, base_lr)

    monkeypatch.setattr(TRAIN, "lr_at", explodes_in_epoch_2)
    out = tmp_path / "run"
    res = invoke(
        "finetune", *sets("train.optimizer=sgd", "train.grad_clip=null"), "--out", out, "--json"
    )
    line = one_line(res, "diverged at epoch 2", "lower train.lr", "epoch 1", "checkpoint.pt")
    assert "--resume" not in line and res.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.csv", "recipe.yaml"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------ degenerate images
def test_analyze_on_an_all_black_image_folder_reports_undefined_nc1(tmp_path, write_recipe):
    from PIL import Image

    for cls in ("ant", "bee", "cat"):
        (tmp_path / "black" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32)).save(tmp_path / "black" / cls / f"{i}.png")
    recipe = write_recipe(data={"path": str(tmp_path / "black")})
    out = tmp_path / "out"
    res = invoke("analyze", recipe, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert all(layer["nc1"] is None for layer in doc["layers"])  # NaN: undefined, not 0
    assert "undefined on every block" in doc["recommendation"]["reason"]
    assert "class means coincide" in res.stderr and "Traceback" not in res.output
    assert (out / "analysis.json").exists() and (out / "collapse.png").exists()


# ------------------------------------------------------------------ damaged checkpoints
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run folder holding recipe.yaml and a real checkpoint.pt (the run failed late)."""
    from nctune.errors import DataError

    def fails_after_training(*args, **kwargs):
        raise DataError("data: test/img.png: cannot read image")

    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(FINETUNE, "measure_after_training", fails_after_training)
        assert invoke("finetune", *sets(), "--out", out).exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.csv", "recipe.yaml"]
    return out


def _damage(ckpt: dict, how: str) -> dict:
    if how == "missing-step":
        del ckpt["step"]
    elif how == "string-epoch":
        ckpt["epoch"] = "two"
    elif how == "history-entry":
        ckpt["history"][0].pop("loss")
    elif how == "not-a-dict":
        return [1, 2, 3]
    return ckpt


@pytest.mark.parametrize(
    "how, names",
    [
        ("missing-step", ["checkpoint.pt", "step"]),
        ("string-epoch", ["checkpoint.pt", "epoch"]),
        ("history-entry", ["checkpoint.pt", "history.0.loss"]),
        ("not-a-dict", ["checkpoint.pt", "not an nctune checkpoint"]),
        ("truncated", ["checkpoint.pt", "unreadable checkpoint"]),
    ],
)
def test_a_damaged_checkpoint_is_refused_before_any_slow_work(
    tmp_path, stopped_run, monkeypatch, how, names
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    path = out / "checkpoint.pt"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save(_damage(torch.load(path, weights_only=True), how), path)
    before = path.read_bytes()

    def never(*args, **kwargs):
        raise AssertionError("the backbone and data were built before the checkpoint was checked")

    monkeypatch.setattr(FINETUNE, "prepare", never)
    line = one_line(invoke("finetune", *sets(), "--resume", out), *names)
    assert "continue with" not in line
    assert path.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "metrics.csv",
        "recipe.yaml",
    ]


def test_the_intact_checkpoint_still_resumes(tmp_path, stopped_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    res = invoke("finetune", *sets(), "--resume", out)
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").exists() and not (out / "checkpoint.pt").exists()


# ------------------------------------------------------------------ a full disk
def _no_space_safetensors(model, filename, metadata=None):
    from safetensors import SafetensorError

    with open(filename, "wb") as f:  # what a full disk leaves: a short file ...
        f.write(b"\x00" * 16)
    # ... and the error safetensors raises for ENOSPC (seen on a 1 MiB tmpfs)
    raise SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )


def _no_space_oserror(model, filename, metadata=None):
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def _short_write(model, filename, metadata=None):
    from safetensors.torch import save_model

    save_model(model, filename, metadata=metadata)  # a device that drops data silently
    with open(filename, "r+b") as f:
        f.truncate(os.path.getsize(filename) // 2)


@pytest.mark.parametrize("fault", [_no_space_safetensors, _no_space_oserror, _short_write])
def test_disk_full_while_writing_the_model_keeps_the_checkpoint_and_says_how_to_resume(
    tmp_path, monkeypatch, fault
):
    import shlex

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ARTIFACTS, "st_save_model", fault)
        res = invoke("finetune", *sets(), "--out", out)
    line = one_line(res, "model.safetensors", "cannot write", "continue with")
    if fault is not _short_write:
        assert "No space left on device" in line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.csv", "recipe.yaml"]
    assert siblings(out) == ["run"]  # no temporary model file left behind
    suggested = shlex.split(line.split("continue with ", 1)[1])
    assert suggested[:2] == ["nctune", "finetune"] and suggested[-2:] == ["--resume", str(out)]
    res = invoke(*suggested[1:])  # space freed: the suggested command finishes the run
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.csv",
        "model.safetensors",
        "recipe.yaml",
        "report.json",
        "training.png",
    ]
