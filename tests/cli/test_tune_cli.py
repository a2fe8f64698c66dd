"""`nctune tune` end to end: bad search spaces, --json, SIGKILL + re-run, workers sharing a
study (SQLite, and a real PostgreSQL server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from nctune.cli import app
from tests.expect import appears
from tests.tiny import set_args, tiny

TINY = tiny(
    "data.max_test_samples=100",  # the best trial's test pass: 100 of the 1,000 images
    "strategy.name=linear",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.profile_after=false",
    "search.space={train.lr: {float: [0.001, 0.1], log: true}}",
)


def sets(*extra: str) -> list[str]:
    return set_args([*TINY, *extra])


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    ("space", "named", "why"),
    [
        ("{trian.lr: {float: [0.1, 1]}}", "trian.lr", "no recipe field"),
        ("{train.lr: {float: [0.1, 0.1]}}", "train.lr", "empty range"),
        ("{train.lr: {int: [3, 1]}}", "train.lr", "empty range"),
        ("{train.lr: {float: [0, 1], log: true}}", "train.lr", "log: true needs lo > 0"),
        ("{train.epochs: {float: [1, 3]}}", "train.epochs", "wrong type"),
        ("{train.optimizer: {choice: [adamw, rmsprop]}}", "train.optimizer", "rmsprop"),
        ("{train.lr: {choice: []}}", "train.lr", "at least one value"),
        ("{seed: {blocks_from_profile: 2}}", "seed", "only applies to strategy.layers"),
        ("{train.lr: {float: [0.1, 1], lgo: true}}", "train.lr.lgo", "unknown key"),
        ("{}", "search.space", "empty"),
    ],
)
def test_bad_search_space_is_one_line_exit_2(tmp_path, space, named, why):
    out = tmp_path / "s"
    res = invoke("tune", *sets(f"search.space={space}"), "--out", str(out))
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "search.space" in lines[0] and named in lines[0] and why in lines[0], lines[0]
    assert "Traceback" not in res.output and not out.exists()


def test_json_result_and_every_trial_failing(tmp_path):
    out = tmp_path / "s"
    res = invoke("tune", *sets(), "--trials", "2", "--json", "--out", str(out))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["counts"]["COMPLETE"] == 2 and doc["study_name"] == "s"
    assert doc["best"]["run_dir"] == str(out / "trials" / str(doc["best"]["number"]))
    assert {"best.yaml", "search.json", "search.png", "study.db"} <= {p.name for p in out.iterdir()}
    # a sampled combination the backbone refuses, every time: exit 2, the first reason
    res = invoke(
        "tune",
        *sets("search.space={strategy.layers: {choice: [no_such_block]}}", "strategy.name=layers"),
        "--trials",
        "2",
        "--out",
        str(tmp_path / "bad"),
    )
    assert res.exit_code == 2, res.output
    # the tiny recipe's 90 validation images draw the small-split warning first
    lines = [line for line in res.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "all 2 trials failed" in lines[0] and "no_such_block" in lines[0]


def test_a_val_split_too_small_to_rank_trials_is_said_before_the_search(tmp_path):
    # 90 validation images for 10 classes: under the 20 a class that can rank trials
    res = invoke("tune", *sets(), "--trials", "1", "--out", str(tmp_path / "small"))
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    said = [line for line in lines if line.startswith("warning: search.metric")]
    assert len(said) == 1, res.stderr
    for part in ("90 validation images", "10 classes", "data.val_fraction", "nc1_after"):
        assert part in said[0], said[0]
    assert lines[0] == said[0]  # before the first trial's output, not after the search
    # 210 validation images rank trials: nothing to say
    res = invoke(
        "tune", *sets("data.val_fraction=0.07"), "--trials", "1", "--out", str(tmp_path / "big")
    )
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.stderr, res.stderr


# ------------------------------------------------------------ processes
def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nctune", "tune", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials() if not t.user_attrs.get("surplus")]


def _finished(trials) -> list:
    return [t for t in trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_keeps_finished_trials(tmp_path):
    out = tmp_path / "s"
    args = [
        *sets(
            "strategy.name=full",  # no prefix cache: every epoch trains the backbone
            "train.epochs=3",
            "search.heartbeat=1",
            "search.grace=2",
            "search.pruner=none",
        ),
        "--trials",
        "3",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        # trial 0 done, trial 1 past its first epoch (its checkpoint): into its training
        appears(out / "trials" / "1" / "checkpoint.pt", proc, 300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    storage = f"sqlite:///{out / 'study.db'}"
    before = _trials(storage, "s")
    assert [(t.number, t.state.name) for t in before] == [(0, "COMPLETE"), (1, "RUNNING")]

    done = invoke("tune", *args)  # the re-run: another worker, here in this process
    assert done.exit_code == 0, done.output
    after = _trials(storage, "s")
    assert after[0].value == before[0].value and after[0].params == before[0].params
    assert len(_finished(after)) == 3  # the requested number, the kept trial among them
    assert after[1].state.name == "FAIL"  # the heartbeat marked the killed trial failed …
    retried = [t for t in after if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == after[1].params  # … and retried once
    assert retried[0].state.name == "COMPLETE"
    doc = json.loads((out / "search.json").read_text())
    assert doc["counts"]["COMPLETE"] == 3


def _two_workers(out: Path, storage: str | None, trials: int) -> None:
    """Two workers on one study: a ``nctune tune`` process, and this test's process as the
    second (started in-process as the first opens the study). Enough trials that both run
    some: the process had run 3–4 of SQLite's half-second trials when the second joined."""
    args = [*sets("search.pruner=none"), "--trials", str(trials), "--out", str(out)]
    if storage:
        args += ["--storage", storage, "--study", "shared"]
    log = out.parent / "worker.log"
    with log.open("wb") as sink:  # a file, not a pipe nobody reads while this worker runs
        proc = subprocess.Popen(_cmd(*args), stdout=sink, stderr=sink, env=_env())
    try:
        appears(out, proc, 300)  # made just before the worker opens the study
        res = invoke("tune", *args)
        proc.wait(timeout=600)
    finally:  # never leave a worker behind, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert res.exit_code == 0, res.output
    assert proc.returncode == 0, log.read_text()


def _check_shared(out: Path, storage: str, name: str, want: int) -> None:
    trials = _trials(storage, name)
    finished = _finished(trials)
    assert len(finished) == want  # none lost, none extra
    assert len({t.number for t in trials}) == len(trials)
    dirs = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(dirs)) == want  # every trial its own run folder
    for t in finished:
        assert (Path(t.user_attrs["run_dir"]) / "report.json").is_file()
    # both workers ran trials (each trial records the process that ran it)
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    doc = json.loads((out / "search.json").read_text())
    assert doc["counts"]["COMPLETE"] == want


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path):
    out = tmp_path / "s"
    _two_workers(out, None, 10)
    _check_shared(out, f"sqlite:///{out / 'study.db'}", "s", 10)


# ------------------------------------------------------------ PostgreSQL
# (the `postgres` fixture lives in tests/conftest.py)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(tmp_path, postgres):
    out = tmp_path / "s"
    _two_workers(out, postgres, 4)
    _check_shared(out, postgres, "shared", 4)
    assert not (out / "study.db").exists()  # the study lives in the server
