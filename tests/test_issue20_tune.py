"""Issue 20, the search: a folder never changes studies, a grid runs each point once, bad
spaces and storages are one line, a stopped search says what happened.

Most tests run the real search loop, study and folders with trials that train nothing (the
``quick_trials`` fixture scores a trial by its sampled ``train.lr``); training itself is
covered by tests/test_tune.py and tests/cli/test_tune_cli.py.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from nctune.cli import app
from tests.expect import appears
from tests.tiny import set_args, tiny

ROOT = Path(__file__).resolve().parents[1]
GRID3 = "search.space={train.lr: {choice: [0.01, 0.03, 0.02]}}"
BASE = tiny(
    "strategy.name=linear",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.profile_after=false",
    "search.pruner=none",
    GRID3,
)


def sets(*extra: str) -> list[str]:
    return set_args(tiny(*BASE, *extra))


def invoke(*args: object):
    return CliRunner().invoke(app, ["tune", *map(str, args)])


def one_line(res, code: int = 2) -> str:
    """The one line a refused command prints (the tiny recipe's small-split warning aside)."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    lines = [x for x in res.stderr.splitlines() if not x.startswith("warning: search.metric")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` → the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _quick_train(self, trial, values, run) -> float:
    """A trial that trains nothing: its recipe and a report, scored by its learning rate."""
    from nctune.tune import trial_recipe

    run.write_recipe(trial_recipe(self.recipe, values).to_yaml())
    (run.path / "report.json").write_text(json.dumps({"test_accuracy": 0.5}))
    return float(values["train.lr"])


@pytest.fixture
def quick_trials(monkeypatch):
    objective = importlib.import_module("nctune.tune._objective")
    monkeypatch.setattr(objective.Objective, "_train", _quick_train)


def _study(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.get_trials() if not t.user_attrs.get("surplus")]


# ---------------------------------------------------------------- 1: one folder, one study
def test_a_search_folder_holding_another_studys_trials_is_refused_untouched(tmp_path, quick_trials):
    first = tmp_path / "tune1"
    res = invoke(*sets(), "--trials", "2", "--out", first)
    assert res.exit_code == 0, res.output
    before = snapshot(first)

    copy = tmp_path / "search-v1"  # cp -a runs/tune1 runs/search-v1
    shutil.copytree(first, copy)
    legacy = tmp_path / "legacy"  # a folder from before study.json: search.json names it
    shutil.copytree(first, legacy)
    (legacy / "study.json").unlink(missing_ok=True)
    emptied = tmp_path / "emptied"  # its study.db lost (0 bytes), its trials still there
    shutil.copytree(first, emptied)
    (emptied / "study.db").write_bytes(b"")
    other_db = f"sqlite:///{tmp_path / 'other.db'}"
    cases = [
        (copy, [], "tune1"),  # the copy under its own name (the default study name)
        (first, ["--study", "other"], "tune1"),
        (first, ["--storage", other_db, "--study", "tune1"], "tune1"),
        (legacy, [], "tune1"),
        (emptied, ["--study", "tune1"], "study.db"),
    ]
    for folder, extra, named in cases:
        kept = snapshot(folder)
        line = one_line(invoke(*sets(), "--trials", "3", "--out", folder, *extra))
        assert str(folder) in line and named in line, line
        assert snapshot(folder) == kept, (folder, extra)  # nothing changed
    assert snapshot(first) == before
    assert not (tmp_path / "other.db").exists()

    # the copy continues its own study: trials 0 and 1 stay, trial 2 is new
    res = invoke(*sets(), "--trials", "3", "--out", copy, "--study", "tune1")
    assert res.exit_code == 0, res.output
    after = snapshot(copy)
    for name, digest in before.items():
        if name.startswith("trials/"):
            assert after[name] == digest, name
    assert (copy / "trials" / "2" / "recipe.yaml").is_file()


# ---------------------------------------------------------------- 6: a grid runs each point once
@pytest.mark.parametrize(
    ("space", "trials", "points"),
    [
        (GRID3, 3, [0.01, 0.03, 0.02]),
        (GRID3, 5, [0.01, 0.03, 0.02]),  # the grid ends when every point ran
        ("search.space={train.lr: {float: [0.01, 0.04], step: 0.01}}", 4, None),
    ],
)
def test_a_grid_runs_every_point_exactly_once(tmp_path, quick_trials, space, trials, points):
    out = tmp_path / "g"
    res = invoke(*sets(space, "search.sampler=grid"), "--trials", trials, "--json", "--out", out)
    assert res.exit_code == 0, res.output
    ran = [t["params"]["train.lr"] for t in json.loads(res.stdout)["trials"]]
    if points is None:  # 0.01 + i * 0.01
        assert len(ran) == 4 and sorted(round(x, 6) for x in ran) == [0.01, 0.02, 0.03, 0.04]
    else:
        assert Counter(ran) == Counter(points), ran


def test_a_grid_queued_twice_still_runs_each_point_once(tmp_path, quick_trials):
    # two workers queueing the grid at the same moment: every point is waiting twice
    out = tmp_path / "g"
    out.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name="g", direction="maximize"
    )
    for lr in (0.01, 0.01, 0.03, 0.03, 0.02, 0.02):
        study.enqueue_trial({"train.lr": lr})
    res = invoke(*sets("search.sampler=grid"), "--trials", "3", "--json", "--out", out)
    assert res.exit_code == 0, res.output
    ran = [t.params["train.lr"] for t in _study(out, "g") if t.state.name == "COMPLETE"]
    assert Counter(ran) == Counter([0.01, 0.03, 0.02]), ran


_WORKER = """
import importlib, json, sys, time
objective = importlib.import_module("nctune.tune._objective")
from nctune.tune import trial_recipe

def _train(self, trial, values, run):
    run.write_recipe(trial_recipe(self.recipe, values).to_yaml())
    (run.path / "report.json").write_text(json.dumps({"test_accuracy": 0.5}))
    time.sleep(1.0)  # long enough for the two workers' trials to interleave
    return float(values["train.lr"])

objective.Objective._train = _train
from nctune.cli import main
main()  # as the console script: sys.argv[1:] is the command line
"""


def _slow_quick_train(self, trial, values, run) -> float:
    """The worker script's trial, for the worker that runs in this process."""
    score = _quick_train(self, trial, values, run)
    time.sleep(1.0)  # long enough for the two workers' trials to interleave
    return score


@pytest.mark.slow
def test_two_workers_run_a_grid_each_point_once(tmp_path, monkeypatch):
    # Two processes (a worker is a host:pid): a worker script, and this test's process as
    # the second, started as the first opens the study so that both queue the grid.
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    out = tmp_path / "g"
    space = "search.space={train.lr: {choice: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}}"
    args = [*sets(space, "search.sampler=grid"), "--trials", "6", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:  # a file, not a pipe nobody reads while this worker runs
        proc = subprocess.Popen(
            [sys.executable, str(script), "tune", *args], stdout=sink, stderr=sink, env=env
        )
    try:
        appears(out, proc, 300)  # made just before the worker opens the study
        monkeypatch.setattr(
            importlib.import_module("nctune.tune._objective").Objective,
            "_train",
            _slow_quick_train,
        )
        res = invoke(*args)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert res.exit_code == 0, res.output
    assert proc.returncode == 0, log.read_text()
    trials = _study(out, "g")
    ran = [t.params["train.lr"] for t in trials if t.state.name == "COMPLETE"]
    assert Counter(ran) == Counter([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]), ran
    workers = {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}
    assert workers == {f"{socket.gethostname()}:{pid}" for pid in (proc.pid, os.getpid())}


# ---------------------------------------------------------------- 9, 10: bad grids, up front
@pytest.mark.parametrize(
    ("space", "sampler", "needle"),
    [
        ("{train.epochs: {int: [1, 3], step: 0.5}}", "grid", "step: 0.5 is not a whole number"),
        ("{train.epochs: {int: [1, 3], step: 0.5}}", "tpe", "step: 0.5 is not a whole number"),
        ("{train.epochs: {int: [1, 2147483647]}}", "grid", "2,147,483,647 points"),
        ("{train.lr: {float: [0.0001, 1.0], step: 0.00001}}", "grid", "over the 10,000"),
    ],
)
def test_a_space_the_search_cannot_walk_is_refused_naming_the_field(
    tmp_path, space, sampler, needle
):
    out = tmp_path / "s"
    res = invoke(*sets(f"search.space={space}", f"search.sampler={sampler}"), "--out", out)
    line = one_line(res)
    field = re.search(r"\{(\w+\.\w+):", space).group(1)
    assert "search" in line and field in line and needle in line, line
    assert not out.exists()


# ---------------------------------------------------------------- 11, 12, 16: storages
def _damaged_db(path: Path) -> None:
    """A real study database whose ``trials`` table's root page is zeroed."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="d", direction="maximize")
    for _ in range(20):
        t = study.ask()
        t.suggest_float("train.lr", 1e-3, 1e-1, log=True)
        t.set_user_attr("run_dir", "x" * 200)
        study.tell(t, 0.5)
    del study
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='trials'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(bytes(size))


def test_a_study_db_with_zeroed_pages_is_one_line_naming_it(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    _damaged_db(out / "study.db")
    before = (out / "study.db").read_bytes()
    line = one_line(invoke(*sets(), "--trials", "1", "--out", out))
    assert str(out / "study.db") in line and "damaged" in line, line
    assert (out / "study.db").read_bytes() == before


@pytest.mark.parametrize("case", ["empty", "folder", "random", "malformed", "one line"])
def test_a_journal_storage_that_is_no_journal_is_one_line(tmp_path, case):
    folder = tmp_path / "journals"
    folder.mkdir()
    file = tmp_path / "search.log"
    contents = {
        "random": random.Random(0).randbytes(4096),
        "malformed": b'{"op_code": 0}\n{"op_code": 4, "worker_id": 1}\n',
        "one line": b"hello\n",  # Optuna forgives a damaged last line, and would append
    }
    if case in contents:
        file.write_bytes(contents[case])
    storage = {"empty": "journal:", "folder": f"journal:{folder}"}.get(case, f"journal:{file}")
    out = tmp_path / "s"
    line = one_line(invoke(*sets(), "--trials", "1", "--storage", storage, "--out", out))
    assert line.startswith(f"error: --storage {storage}"), line
    if case in contents:
        assert file.read_bytes() == contents[case]
    assert list(folder.iterdir()) == [] and not out.exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_storage_is_refused(tmp_path, url):
    out = tmp_path / "s"
    line = one_line(invoke(*sets(), "--trials", "1", "--storage", url, "--out", out))
    assert url in line and "in-memory" in line, line
    assert not out.exists()


# ---------------------------------------------------------------- 21: the documented workers
def test_the_documented_workers_share_one_study():
    text = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    loop = next(b for b in re.findall(r"```\w*\n(.*?)```", text, re.S) if "nctune tune" in b)
    studies = set()
    for gpu in "0123":
        line = " ".join(loop.replace("\\\n", " ").split()).replace("$gpu", gpu)
        argv = shlex.split(re.search(r"nctune tune [^&;]*", line).group(0))
        opts = dict(zip(argv[3::2], argv[4::2], strict=False))
        name = opts.get("--study") or Path(opts["--out"]).name  # the default study name
        studies.add((name, opts.get("--storage"), opts.get("--out")))
    assert len(studies) == 1, studies


# ---------------------------------------------------------------- 25: a stopped search
def test_a_trial_failed_by_the_heartbeat_says_why():
    from nctune.tune import TrialRecord

    stale = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params={"train.lr": 0.1},
        distributions={"train.lr": optuna.distributions.FloatDistribution(0.01, 0.2)},
        user_attrs={"worker": "host:123"},
    )
    reason = TrialRecord.from_frozen(stale).reason
    assert reason and "host:123" in reason and "heartbeat" in reason, reason


def test_the_plot_of_a_search_stopped_before_any_trial_warns_nothing(tmp_path):
    from nctune.report.search import plot_search
    from nctune.tune import SearchResult, TrialRecord

    failed = TrialRecord(0, "FAIL", {"train.lr": 0.1}, reason="interrupted")
    for trials in ([], [failed]):
        result = SearchResult(
            "s", "sqlite:///s.db", str(tmp_path), "val_accuracy", "maximize", 3, {}, trials,
            None, None, interrupted=True,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plot_search(result, tmp_path / "search.png")


@pytest.mark.slow
def test_sigterm_stops_a_search_with_143_and_says_the_trial_is_queued_again(tmp_path):
    out = tmp_path / "s"
    args = [
        *sets("strategy.name=full", "train.epochs=3"),
        "--trials",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nctune", "tune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        appears(out / "trials" / "0" / "checkpoint.pt", proc, 300)  # into its training
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint" not in err and "queued again" in err, err
    assert "legend" not in err and "Traceback" not in err, err
    doc = json.loads((out / "search.json").read_text())
    assert doc["interrupted"] and doc["trials"][0]["reason"].startswith("interrupted")
