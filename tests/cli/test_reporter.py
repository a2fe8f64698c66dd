"""The progress display off a terminal: which lines -q, default and -v print (fake clock)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nctune.cli import common


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    return now


def _run(capsys, clock, quiet=False, verbose=False, json_=False) -> list[str]:
    common.set_verbosity(quiet, verbose, json_)
    try:
        with common.progress_bar(epochs=2) as progress:
            for i in range(5):  # a 4-batch profiling pass, 3 s per batch
                progress("profile: train", i, 4)
                clock[0] += 3.0
            progress("sweep", 0, 2)
            progress("sweep", 1, 2, info="scl layer3.0: 55.0%")
            for e in (1, 2):
                progress(f"epoch {e}/2", 1, 1, info="loss 1.0")
                progress.epoch([SimpleNamespace(epoch=k, loss=1.0 / k, accuracy=0.5,
                                                val_accuracy=None, nc1=2.5, seconds=10.0)
                                for k in range(1, e + 1)])  # fmt: skip
    finally:
        common.set_verbosity()
    return capsys.readouterr().err.splitlines()


def test_default_lines(capsys, clock):
    lines = _run(capsys, clock)
    assert lines == [
        "profile: train: started, 1/4 batches, eta 9s",
        "profile: train: done 4/4 batches in 12.0s",
        "sweep: 1/2 runs in 0s scl layer3.0: 55.0%",
        "epoch 1/2 loss=1.0000 acc=50.0% val_acc=- nc1=2.5 time=10.0s eta=10s",
        "epoch 2/2 loss=0.5000 acc=50.0% val_acc=- nc1=2.5 time=10.0s eta=0s",
    ]


def test_quiet_and_json_print_nothing_verbose_adds_batch_lines(capsys, clock):
    assert _run(capsys, clock, quiet=True) == []
    assert _run(capsys, clock, json_=True) == []
    verbose = _run(capsys, clock, verbose=True)
    # a batch line at most every 5 s: batch 2 comes 3 s after the start line, batch 3 6 s after
    assert "profile: train: 3/4 batches" in verbose and "profile: train: 2/4 batches" not in verbose
    assert len(verbose) == len(_run(capsys, clock)) + 1
