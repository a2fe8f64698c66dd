"""The training state: where a run is, what it measured and which epoch it keeps.

:class:`TrainState` is what a checkpoint holds, in typed fields: :meth:`TrainState.save`
writes it (rank 0 only, atomically), :meth:`TrainState.restore` reads a checked
:class:`~nctune.training.checkpoint.Checkpoint` back into it, and :meth:`TrainState.finish`
turns it into the :class:`TrainResult` that :func:`~nctune.training.train.fit` returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nctune import distributed as dist
from nctune.collapse import CollapseStats
from nctune.errors import ArtifactError, TrainingError, one_line
from nctune.runs.artifacts import non_finite_tensor
from nctune.training.batches import IGNORE
from nctune.training.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    Checkpoint,
    PartialEpoch,
    damaged,
    rng_state,
    save_checkpoint,
)
from nctune.training.clock import SessionClock
from nctune.training.evaluation import EpochStats
from nctune.training.prefix_cache import CacheInfo
from nctune.training.strategies import AppliedStrategy


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _odd_setting(ref: dict[str, Any], group: dict[str, Any]) -> str | None:
    """What of a loaded parameter group the optimizer's step would fail on: a setting of a
    fresh group missing, of another kind (a number, a tuple), not finite, or a flag that
    picks the algorithm (``fused``, ``amsgrad``: a bool or unset) other than the run's own
    (the recipe is the same, so a saved group's flags are too)."""
    for key, want in ref.items():
        if key == "params":
            continue
        if key not in group:
            return f"lacks {key}"
        got = group[key]
        if isinstance(want, bool) or want is None:
            if got is not want and not (isinstance(got, bool) and got == want):
                return f"its {key} is {got!r:.40}, not this run's {want}"
            continue
        if _kind(want) != _kind(got):
            return f"its {key} is {got!r:.40}, not a {_kind(want)}"
        if _kind(got) == "number" and not math.isfinite(got):
            return f"its {key} is {got}, not finite"
        if isinstance(want, (tuple, list)) and len(want) != len(got):
            return f"its {key} has {len(got)} values, not {len(want)}"
    return None


def _moments(kind: type[torch.optim.Optimizer], settings: dict[str, Any]) -> set[str]:
    """The names of the moments an optimizer of ``kind`` with a group's ``settings`` keeps
    for each parameter: one step on a one-element stand-in shows them."""
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.zeros(1)
    probe = kind([{**settings, "params": [p]}])
    probe.step()
    return set(probe.state[p])


@dataclass
class TrainResult:
    """What :func:`~nctune.training.train.fit` returns.

    Attributes:
        history: one :class:`EpochStats` per finished epoch (resumed runs included).
        best_epoch: the kept epoch (from 1): the best validation accuracy (the earliest
            on ties), or the last epoch without a val set; -1 when no epoch finished.
        best_val_accuracy: that epoch's validation accuracy (None without a val set).
        stopped_early: early stopping ended the run.
        interrupted: a stop request ended the run; the model then holds the weights of
            the moment it stopped, not the best epoch's.
        seconds: wall time of this call.
        cache: whether the frozen-prefix cache was used, and why not.
        clock: the run's time over every session (a resumed run continues its checkpoint's).
    """

    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float | None
    stopped_early: bool
    interrupted: bool
    seconds: float
    cache: CacheInfo = field(default_factory=lambda: CacheInfo(False, reason="not attempted"))
    clock: SessionClock = field(default_factory=SessionClock)

    def history_dicts(self) -> list[dict[str, Any]]:
        """The history as plain dicts (``report.json``'s ``history``).

        Returns:
            One dict of :class:`EpochStats` fields per epoch.
        """
        return [asdict(h) for h in self.history]


@dataclass
class Best:
    """The kept epoch so far, and how many epochs have not beaten it (early stopping).

    Attributes:
        acc: its validation accuracy (None without a validation set).
        epoch: its number (from 1); -1 before the first epoch ends.
        state: its weights, on CPU (None before the first epoch ends).
        bad_epochs: epochs since it that did not improve on it.
    """

    acc: float | None = None
    epoch: int = -1
    state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def consider(self, val_acc: float | None, epoch: int, model: nn.Module) -> None:
        """Keep epoch ``epoch`` when it beats the kept one (the earliest wins ties); without
        validation the last epoch is kept."""
        if val_acc is None or self.acc is None or val_acc > self.acc:
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.acc, self.epoch, self.state, self.bad_epochs = val_acc, epoch, weights, 0
        else:
            self.bad_epochs += 1


@dataclass
class EpochSums:
    """An epoch's running sums over its training steps (a mid-epoch checkpoint's ``partial``).

    Attributes:
        loss_sum: Σ over samples of the loss (under torchrun: Σ over this rank's steps of
            the summed loss).
        correct, seen: correctly classified and seen training samples.
        stats: the head input's collapse statistics (None when not tracked).
    """

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    stats: CollapseStats | None = None

    @classmethod
    def start(cls, num_classes: int, track: bool, partial: PartialEpoch | None) -> EpochSums:
        """Fresh sums, or those of ``partial`` (the epoch a stop request cut short)."""
        sums = cls(stats=CollapseStats(num_classes) if track else None)
        if partial is not None:
            sums.loss_sum, sums.correct, sums.seen = partial.loss_sum, partial.correct, partial.seen
            if sums.stats is not None and partial.stats is not None:
                sums.stats.load_state_dict(partial.stats)
        return sums

    def add(
        self,
        logits: torch.Tensor,
        feats: torch.Tensor,
        y: torch.Tensor,
        loss: float,
        distributed: bool,
    ) -> None:
        """Book one step from its own forward pass (no extra pass for NC1)."""
        if distributed:  # this rank's samples, without stand-ins; ``loss`` is their sum
            keep = y != IGNORE
            b = int(keep.sum())
            self.loss_sum += loss
            logits, feats, y = logits[keep], feats[keep], y[keep]
        else:
            b = y.numel()
            self.loss_sum += loss * b
        self.correct += int((logits.detach().argmax(1) == y).sum())
        self.seen += b
        if self.stats is not None and b:
            self.stats.update(feats.detach().float(), y)

    def all_reduce(self) -> None:
        """The shards' sums → the global ones, on every rank (under torchrun)."""
        self.loss_sum, correct, seen = dist.all_reduce_sum(self.loss_sum, self.correct, self.seen)
        self.correct, self.seen = int(correct), int(seen)
        self.stats = dist.reduce_stats(self.stats)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``partial`` entry."""
        return {
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "seen": self.seen,
            "stats": self.stats.state_dict() if self.stats else None,
        }


@dataclass
class TrainState:
    """Everything a resumed run needs to continue exactly where it stopped.

    Attributes:
        applied: the strategy's model and its phase (lp-ft: ``'probe'`` then ``'full'``).
        model: the module that trains (``applied.model``, with SyncBatchNorm under torchrun
            when asked).
        device: where it trains.
        scaler: the gradient scaler (a no-op off float16 autocast).
        optimizer: the current phase's optimizer (None before the first phase starts).
        epoch: the epoch under way, counted from 0; equal to the finished epochs between
            two epochs.
        step: steps done in epoch ``epoch``.
        history: one :class:`EpochStats` per finished epoch.
        best: the kept epoch.
        resumed: the checkpoint this run continues, until its first epoch ends (its RNG
            state, optimizer and mid-epoch sums are still to be used).
        resumed_from: that checkpoint's path (for messages).
        cache: what the frozen-prefix cache did, for the result.
        stopped_early: early stopping ended the run.
        ema: timm's ``ModelEmaV3`` of the model with ``train.ema`` (None without): the kept
            epoch's weights are the averaged ones.
        clock: the run's time over its sessions (restored from the checkpoint).
    """

    applied: AppliedStrategy
    model: nn.Module
    device: torch.device
    scaler: torch.amp.GradScaler
    optimizer: torch.optim.Optimizer | None = None
    epoch: int = 0
    step: int = 0
    history: list[EpochStats] = field(default_factory=list)
    best: Best = field(default_factory=Best)
    resumed: Checkpoint | None = None
    resumed_from: Path | None = None
    cache: CacheInfo = field(default_factory=lambda: CacheInfo(False, reason=""))
    stopped_early: bool = False
    ema: Any = None
    clock: SessionClock = field(default_factory=SessionClock)

    def restore(
        self,
        ckpt: Checkpoint,
        path: Path,
        *,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        """Continue from ``ckpt`` (read from ``path``): position, weights, history, best epoch.

        The optimizer and scaler follow when their phase starts
        (:meth:`restore_optimizer`), the RNG state when the resumed epoch starts. What
        :func:`~nctune.training.checkpoint.load_checkpoint` could not check without the
        run is checked here, before any training: the position against the recipe.

        Args:
            ckpt: the checked checkpoint.
            path: where it was read (for messages).
            epochs: ``train.epochs``: the position must not lie beyond it.
            steps_per_epoch: a mid-epoch ``step`` must lie within an epoch.

        Raises:
            ArtifactError: the weights do not fit this run's model, or the position lies
                beyond the recipe's epochs or an epoch's steps (one line naming the field).
        """
        if epochs is not None and (ckpt.epoch, ckpt.step) > (epochs, 0):
            where = f"epoch {ckpt.epoch}" + (f", step {ckpt.step}" if ckpt.step else "")
            raise damaged(
                path, "epoch", f"the checkpoint is at {where}, beyond train.epochs {epochs}"
            )
        if steps_per_epoch is not None and ckpt.step >= steps_per_epoch:
            raise damaged(
                path, "step", f"{ckpt.step} is beyond the {steps_per_epoch} steps of an epoch"
            )
        self.epoch, self.step = ckpt.epoch, ckpt.step
        if ckpt.phase == "full" and self.applied.phase != "full":
            self.applied.start_full_phase()
        try:
            self.model.load_state_dict(ckpt.model)
        except RuntimeError as err:  # weights of another architecture or strategy
            first = one_line(str(err), 160)
            raise ArtifactError(
                f"{path}: its weights do not fit this run's model ({first}); start a new run"
            ) from None
        self.history = list(ckpt.history)
        self.best = Best(ckpt.best_acc, ckpt.best_epoch, ckpt.best_state, ckpt.bad_epochs)
        self.resumed, self.resumed_from = ckpt, path
        self.clock.resume(ckpt.clock)

    def restore_optimizer(self, phase: str) -> None:
        """Load the resumed checkpoint's optimizer and scaler when it was saved in ``phase``
        (an lp-ft run stopped in its probe continues its full phase with a fresh one).

        Raises:
            ArtifactError: the optimizer's or scaler's state does not fit this phase's
                parameters (other groups, other ids, a moment missing or of another
                shape, a flag such as ``fused`` other than the run's): one line,
                before the phase's first step.
        """
        if self.resumed is None or self.resumed.phase != phase:
            return
        path = self.resumed_from or CHECKPOINT
        fresh = [dict(g) for g in self.optimizer.param_groups]
        for where, target, saved in (
            ("optimizer", self.optimizer, self.resumed.optimizer),
            ("scaler", self.scaler, self.resumed.scaler),
        ):
            try:
                target.load_state_dict(saved)
            except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
                raise damaged(path, where, one_line(err, 160)) from None
        for i, (ref, group) in enumerate(zip(fresh, self.optimizer.param_groups, strict=True)):
            odd = _odd_setting(ref, group)  # torch loads a group's settings as they are
            if odd is not None:
                raise damaged(path, f"optimizer.param_groups.{i}", odd)
            # a moment missing, of another shape or no tensor would only fail inside the
            # first step; a parameter without moments (it never had a gradient) starts afresh
            need = _moments(type(self.optimizer), ref)
            for p in group["params"]:
                moments = self.optimizer.state.get(p, {})
                lacks = sorted(need - moments.keys()) if moments else []
                if lacks:
                    raise damaged(
                        path, "optimizer", f"a parameter of group {i} lacks its {lacks[0]}"
                    )
                for name, value in moments.items():
                    # a moment is a tensor (SGD's unused momentum buffer: None); only a
                    # step count may be a plain number (older torch saved it so)
                    number = name == "step" and isinstance(value, (int, float))
                    if not (isinstance(value, torch.Tensor) or value is None or number):
                        raise damaged(path, "optimizer", f"its {name} is not a tensor")
                    if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                        raise damaged(
                            path,
                            "optimizer",
                            f"its {name} of shape {tuple(value.shape)} is for no parameter "
                            f"of shape {tuple(p.shape)}",
                        )

    def checkpoint(self, partial: EpochSums | None = None) -> dict[str, Any]:
        """This state as the document :class:`~nctune.training.checkpoint.Checkpoint`
        describes (``partial``: the sums of the epoch under way, for a mid-epoch stop)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "step": self.step,
            "phase": self.applied.phase,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(self.device),
            "history": [asdict(h) for h in self.history],
            "best_acc": self.best.acc,
            "best_epoch": self.best.epoch,
            "best_state": self.best.state,
            "bad_epochs": self.best.bad_epochs,
            "partial": partial.to_dict() if partial is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "clock": self.clock.to_dict(),
        }

    def update(
        self, params: list[nn.Parameter], grad_clip: float | None, run_dir: Path | None, lr: float
    ) -> None:
        """The optimizer step on the gradient summed so far (clipped to ``grad_clip``),
        then the weights' EMA.

        Raises:
            TrainingError: the step overflows float32 (diverged, see :meth:`diverged`).
        """
        if grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        try:
            self.scaler.step(self.optimizer)
        except RuntimeError as err:  # lr · update beyond float32 (lr=1e300)
            if "overflow" not in str(err):
                raise
            raise self.diverged(run_dir, f"the step with lr {lr:g} overflows") from None
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)

    def save(self, run_dir: Path | None, partial: EpochSums | None = None) -> None:
        """Write ``run_dir/checkpoint.pt`` atomically (rank 0 alone: every rank holds the
        same state); nothing without a ``run_dir``."""
        if run_dir is not None and dist.is_main():
            save_checkpoint(run_dir / CHECKPOINT, self.checkpoint(partial))

    def end_epoch(self, stats: EpochStats, run_dir: Path | None) -> None:
        """Record a finished epoch, keep it if it is the best, and checkpoint the boundary."""
        self.history.append(stats)
        kept = self.ema.module if self.ema is not None else self.model  # EMA: the averaged
        self.best.consider(stats.val_accuracy, stats.epoch, kept)
        self.epoch, self.step, self.resumed = stats.epoch, 0, None
        self.save(run_dir)

    def check_finite(self, run_dir: Path | None) -> None:
        """Raise :meth:`diverged` when any tensor of the model's state dict holds NaN/Inf.

        Parameters and buffers alike: the last step's update can break the weights after a
        still-finite loss, and a huge step can send a BatchNorm ``running_var`` to ``inf``
        while the training loss (batch statistics) stays finite — the model then answers
        one class for every input. Called at the end of every epoch's steps, before the
        kept epoch is captured and before every checkpoint, so neither is ever non-finite.
        """
        bad = non_finite_tensor(self.model.state_dict())
        if bad is not None:
            what = f"tensor {bad} is not finite"
            raise self.diverged(run_dir, what, step=max(self.step - 1, 0))

    def diverged(self, run_dir: Path | None, what: str, step: int | None = None) -> TrainingError:
        """The one-line error for a run whose loss or weights stopped being finite at step
        ``step`` (default: the step under way) of the current epoch."""
        kept = ""
        if run_dir is not None and (run_dir / CHECKPOINT).is_file():
            kept = (
                f"; the last good checkpoint (epoch {len(self.history)}) is kept in "
                f"{run_dir / CHECKPOINT}"
            )
        step = self.step if step is None else step
        return TrainingError(
            f"train: diverged at epoch {self.epoch + 1}, step {step + 1}: {what}; "
            f"lower train.lr or enable train.grad_clip{kept}"
        )

    def finish(self, *, interrupted: bool, has_val: bool, seconds: float) -> TrainResult:
        """The result; unless ``interrupted``, the model gets the kept epoch's weights.

        Args:
            interrupted: a stop request ended the run (the weights stay those of the moment
                it stopped).
            has_val: the run had a validation set (else no best accuracy is reported).
            seconds: the call's wall time.
        """
        if not interrupted and self.best.state is not None:
            self.model.load_state_dict(self.best.state)
        if not self.cache.used and not self.cache.reason:  # no phase started: say why
            self.cache = CacheInfo(False, reason="no epoch was left to train after the resume")
        return TrainResult(
            self.history,
            self.best.epoch,
            self.best.acc if has_val else None,
            self.stopped_early,
            interrupted,
            seconds,
            self.cache,
            self.clock,
        )
