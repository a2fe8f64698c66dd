"""Per-epoch logs in a run folder: metrics.csv (Lightning CSVLogger layout) and TensorBoard."""

from __future__ import annotations

import csv
import sys
import types

import pytest

from nctune.training.loggers import COLUMNS, METRICS_FILE, CSVLogger, epoch_loggers
from nctune.training.train import EpochStats


def _epoch(e: int, val: float | None = 0.5) -> EpochStats:
    return EpochStats(e, "main", 1.0 / e, 0.1 * e, val, None if e == 1 else 2.0 / e, 1e-3, 0.5)


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_has_one_row_per_epoch_even_after_a_resume(tmp_path):
    log = CSVLogger(tmp_path)
    history = [_epoch(1)]
    log(history)
    assert [r["epoch"] for r in _rows(tmp_path / METRICS_FILE)] == ["1"]
    history += [_epoch(2, val=None)]
    CSVLogger(tmp_path)(history)  # a resumed run: a new logger, the history from the checkpoint
    rows = _rows(tmp_path / METRICS_FILE)
    assert list(rows[0]) == list(COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["nc1"] == "" and rows[1]["val_accuracy"] == ""  # missing values: empty cells
    assert float(rows[1]["loss"]) == 0.5
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILE]  # atomic: no temp file left


def test_tensorboard_gets_each_epoch_once(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("closed",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    loggers = epoch_loggers(tmp_path, tensorboard=True)
    assert len(loggers) == 2
    history = [_epoch(1)]
    for log in loggers:
        log(history)
    history.append(_epoch(2))
    for log in loggers:
        log(history)
    loggers[1].close()
    assert calls[0] == ("dir", str(tmp_path / "tensorboard"))
    losses = [(v, s) for tag, *rest in calls[1:] if tag == "train/loss" for v, s in [rest]]
    assert losses == [(1.0, 1), (0.5, 2)]  # epoch 1 not written twice
    assert ("train/nc1", 1.0, 2) in calls and not any(
        c[0] == "train/nc1" and c[2] == 1 for c in calls if len(c) == 3
    )
    assert calls[-1] == ("closed",)


def test_tensorboard_missing_is_a_warning_and_csv_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        loggers = epoch_loggers(tmp_path, tensorboard=True)
    assert [type(log) for log in loggers] == [CSVLogger]
    assert epoch_loggers(None, tensorboard=True) == []
