"""Issue 20 item 17: after a SIGKILLed ``nctune tune`` worker, a re-run says what it waits
for and, the dead worker having run on this machine, does not sit out the whole grace."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import optuna
import pytest
from typer.testing import CliRunner

from nctune.cli import app
from nctune.tune._storage import Holder, _gone, holders, open_storage
from tests.cli.test_tune_cli import _cmd, _env, _trials, sets
from tests.expect import appears


@pytest.mark.slow
def test_rerun_after_sigkill_says_what_it_waits_for_and_skips_the_grace(tmp_path):
    out = tmp_path / "s"
    args = [
        *sets(
            "strategy.name=full",  # no prefix cache: every epoch trains the backbone
            "train.epochs=3",
            "search.heartbeat=1",
            "search.grace=600",  # today's code sits out these ten minutes silently
            "search.pruner=none",
        ),
        "--trials",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        appears(out / "trials" / "0" / "checkpoint.pt", proc, 120)  # into its training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    storage = f"sqlite:///{out / 'study.db'}"
    assert [t.state.name for t in _trials(storage, "s")] == ["RUNNING"]

    t0 = time.monotonic()

    def sat_out_the_grace(*_):
        raise TimeoutError("the re-run waited 120 s: it is sitting out the 600 s grace")

    # the re-run, in this process; an alarm ends it if it waits out the grace (a regression
    # then fails in 2 minutes, not 10)
    before = signal.signal(signal.SIGALRM, sat_out_the_grace)
    signal.alarm(120)
    try:
        done = CliRunner().invoke(app, ["tune", *args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert done.exit_code == 0, (done.output, done.exception)
    assert time.monotonic() - t0 < 120
    # "waiting for trial 0 (worker HOST:PID, gone from this machine, since …; retried in 2s)"
    # or, its short grace already over, "trial 0: worker HOST:PID, since … is gone …; retried now"
    worker = f"{socket.gethostname()}:{proc.pid}"
    said = [ln for ln in done.stderr.splitlines() if worker in ln]
    assert said and all("trial 0" in ln and "retried" in ln for ln in said), done.stderr
    after = _trials(storage, "s")
    assert [t.state.name for t in after] == ["FAIL", "COMPLETE"]  # retried once, here
    assert after[1].system_attrs.get("failed_trial") == 0


def test_a_live_or_foreign_worker_gets_the_whole_grace(tmp_path):
    """Only a process of this machine that is provably gone shortens the grace."""
    host = socket.gethostname()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert not _gone(f"{host}:{sleeper.pid}")  # alive
        assert not _gone(f"other-host:{sleeper.pid}")  # not ours to judge
        assert not _gone(None) and not _gone("garbage")
        sleeper.kill()
        time.sleep(0.2)
        assert _gone(f"{host}:{sleeper.pid}")  # killed, not yet reaped: a zombie
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _gone(f"{host}:{sleeper.pid}")

    store = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat=5, grace=100)
    study = optuna.create_study(storage=store, study_name="x")
    for worker in (f"{host}:{sleeper.pid}", "elsewhere:1"):
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        store.record_heartbeat(trial._trial_id)
    held = sorted(holders(study), key=lambda h: h.number)
    assert [(h.number, h.worker, h.dead) for h in held] == [
        (0, f"{host}:{sleeper.pid}", True),
        (1, "elsewhere:1", False),
    ]
    assert all(isinstance(h, Holder) for h in held)
    assert 5 <= held[0].left <= 7 and 98 <= held[1].left <= 100  # heartbeat + 2 s, grace
