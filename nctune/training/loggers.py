"""Per-epoch metric logs in a run folder: ``metrics.csv`` and, optionally, TensorBoard.

``metrics.csv`` follows Lightning's ``CSVLogger``: one header row, then one row per epoch,
written as the epochs finish, so ``pandas.read_csv(DIR / "metrics.csv")`` shows a running
run. The whole file is rewritten atomically from the run's history after each epoch: a
resumed run (whose history comes back from the checkpoint) still has exactly one row per
epoch, and a reader never sees a half-written row.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from nctune.runs._io import atomic_write_text
from nctune.training.callbacks import Callback

METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

#: The columns of ``metrics.csv``, in order (the fields of ``nctune.training.evaluation.EpochStats``).
COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_accuracy", "nc1", "lr", "seconds")


def _row(epoch: Any) -> dict[str, Any]:
    return asdict(epoch) if is_dataclass(epoch) else dict(epoch)


class CSVLogger(Callback):
    """Writes ``run_dir/metrics.csv`` from the history, one row per epoch (``log(history)``
    is ``log.on_epoch_end(history)``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE

    def __call__(self, history: Sequence[Any]) -> None:
        self.on_epoch_end(history)

    def on_epoch_end(self, history: Sequence[Any]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for epoch in history:
            row = _row(epoch)
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
        atomic_write_text(self.path, buf.getvalue())


class TensorBoardLogger(Callback):
    """Scalars per epoch under ``run_dir/tensorboard`` (``tensorboard --logdir DIR``).

    Only epochs not yet written by this logger are added, so a resumed run continues the
    curves instead of repeating them.
    """

    def __init__(self, run_dir: str | Path) -> None:
        # Lazy: tensorboard is optional and heavy; only runs that ask for it import it.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))
        self.written = 0

    def __call__(self, history: Sequence[Any]) -> None:
        self.on_epoch_end(history)

    def on_epoch_end(self, history: Sequence[Any]) -> None:
        for epoch in history[self.written :]:
            row = _row(epoch)
            for key in ("loss", "accuracy", "val_accuracy", "nc1", "lr", "seconds"):
                if row.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", row[key], row["epoch"])
        self.written = len(history)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def teardown(self) -> None:
        self.close()


def epoch_loggers(run_dir: str | Path | None, tensorboard: bool = False) -> list[Callback]:
    """The loggers a run folder gets: ``metrics.csv`` always, TensorBoard when asked.

    Args:
        run_dir: the run folder (None: no loggers).
        tensorboard: ``train.tensorboard``; when tensorboard is not installed a warning
            says so and the run continues with ``metrics.csv`` alone.

    Returns:
        Callbacks that log the history after each epoch (``on_epoch_end``) and close their
        files at ``teardown``.
    """
    if run_dir is None:
        return []
    loggers: list[Callback] = [CSVLogger(run_dir)]
    if tensorboard:
        try:
            loggers.append(TensorBoardLogger(run_dir))
        except ImportError:
            warnings.warn(
                "train.tensorboard: tensorboard is not installed (pip install tensorboard); "
                "the metrics are in metrics.csv only",
                stacklevel=2,
            )
    return loggers
