"""What an epoch measured (:class:`EpochStats`) and the evaluation pass (:func:`evaluate`).

Accuracy and the collapse statistics of the features the head sees come from one pass; under
``torch.distributed`` each process evaluates its shard and the counts and statistics are
summed, so every process returns the union's numbers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from nctune import distributed as dist
from nctune.collapse import CollapseStats
from nctune.errors import CollapseError, Interrupted
from nctune.taps import autocast
from nctune.training.batches import CachedBatches, ImageBatches
from nctune.training.callbacks import Callback, CallbackList


@dataclass
class EpochStats:
    """One epoch of training.

    Attributes:
        epoch: the epoch number, counted from 1 over all phases.
        phase: ``'main'``, or lp-ft's ``'probe'`` / ``'full'``.
        loss: mean training cross-entropy (label smoothing included) over the epoch.
        accuracy: training top-1 accuracy, from the training forward passes.
        val_accuracy: validation top-1 accuracy after the epoch (None without a val set).
        nc1: NC1 of the head's input over the epoch's training passes (None when not
            tracked or undefined).
        lr: the learning rate of the epoch's last step.
        seconds: wall time of the epoch, validation included.
    """

    # The checkpoint validates its history against these very fields (pydantic reads a
    # dataclass's annotations): one schema for the record and its check.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", allow_inf_nan=True)

    epoch: Annotated[int, Field(ge=1)]
    phase: Literal["main", "probe", "full"]
    loss: float
    accuracy: float
    val_accuracy: float | None
    nc1: float | None
    lr: float
    seconds: float


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    device: torch.device,
    num_classes: int | None = None,
    amp: bool = True,
    *,
    callbacks: Callback | list[Callback] | None = None,
    phase: str = "evaluate",
    stoppable: bool = True,
) -> tuple[float, CollapseStats | None]:
    """Top-1 accuracy of ``model`` in eval mode, and (with ``num_classes``) the statistics of
    the features its head sees.

    Args:
        model: a :class:`~nctune.training.strategies.TunedModel` (or PEFT wrapper of one).
        data: a DataLoader / iterable of ``(images, labels)``, or a batch source of the trainer.
        device: where the model runs.
        num_classes: K for the head-input :class:`~nctune.collapse.CollapseStats`.
        amp: autocast on CUDA (as in training; a cached source must match its cache).
        callbacks: ``on_progress(phase, done, total)`` after every batch; ``should_stop``
            polled after every batch (when ``stoppable``): True raises
            :class:`~nctune.errors.Interrupted`.
        phase: the pass's name for ``on_progress``.
        stoppable: poll ``should_stop`` (the training loop's validation pass does not: it
            polls once per epoch, on every rank alike).

    Returns:
        ``(accuracy, statistics or None)``; the accuracy is NaN when ``data`` is empty.
        The model's train/eval mode is restored. Under ``torch.distributed`` ``data`` is this
        process's shard: counts and statistics are summed over the processes, so every
        process returns the union's accuracy and statistics.
    """
    callbacks = CallbackList.of(callbacks)
    source = data if hasattr(data, "attached") else ImageBatches(data, 0, device)
    was = model.training
    model.eval()
    stats = CollapseStats(num_classes) if num_classes else None
    correct = seen = 0
    total = num_batches(source)
    callbacks.on_progress(phase, 0, total)
    try:
        with source.attached():
            for i, (x, y) in enumerate(source.batches()):
                y = torch.as_tensor(y).to(device)
                with autocast(device, amp):
                    logits, feats = source.forward(model, x)
                correct += int((logits.argmax(1) == y).sum())
                seen += int(y.numel())
                if stats is not None:
                    stats.update(feats.float(), y)
                callbacks.on_progress(phase, i + 1, total)
                if stoppable and callbacks.should_stop():
                    raise Interrupted("stopped during an evaluation pass")
    finally:
        model.train(was)
    correct, seen = dist.all_reduce_sum(correct, seen)
    return (correct / seen if seen else float("nan")), dist.reduce_stats(stats)


def num_batches(source) -> int | None:
    """How many batches ``source.batches()`` yields, when that is known (for progress)."""
    if isinstance(source, CachedBatches):
        return math.ceil(len(source.cache) / source.batch_size)
    data = source.data
    if isinstance(data, Dataset) and source.batch_size:
        return math.ceil(len(data) / source.batch_size)
    return len(data) if hasattr(data, "__len__") and not isinstance(data, Dataset) else None


def safe_nc1(stats: CollapseStats | None) -> float | None:
    """NC1 of ``stats``, or None when it is undefined (no samples, one class present).

    Args:
        stats: accumulated collapse statistics, or None (not tracked).

    Returns:
        The NC1 value, or None; the statistics' warnings are silenced.
    """
    if stats is None or stats.num_samples == 0:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return stats.compute().nc1
    except CollapseError:
        return None
