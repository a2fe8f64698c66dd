"""Training checkpoints: what a resumable state holds, written atomically, read back checked."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nctune.collapse import CollapseStats
from nctune.errors import ArtifactError, one_line
from nctune.runs._io import atomic_write_bytes
from nctune.runs.artifacts import non_finite_tensor
from nctune.training.evaluation import EpochStats

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: RngState, device: torch.device) -> None:
    """Put back the generators :func:`rng_state` saved (CUDA's only on a CUDA device).

    Raises:
        ArtifactError: a generator refuses its saved state (:func:`load_checkpoint` has
            checked the CPU one; CUDA's can only be tried on a CUDA device).
    """
    try:
        torch.set_rng_state(state.torch)
        if state.cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state.cuda, device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise damaged(CHECKPOINT, "rng", one_line(err, 120)) from None


def damaged(path: Path | str, where: str, what: str) -> ArtifactError:
    """The one line for a checkpoint that cannot be resumed: the file, the field, why."""
    return ArtifactError(f"{path}: damaged checkpoint ({where}: {what}); start a new run")


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically; never a non-finite tensor.

    Raises:
        ArtifactError: a tensor of ``obj['model']`` or ``obj['best_state']`` (parameters
            and buffers alike) holds NaN or Inf — nothing is written; the training loop
            stops before this (diverged), so this is the last guard — or the file cannot
            be written.
    """
    for part in ("model", "best_state", "ema"):
        bad = non_finite_tensor(obj.get(part) or {})
        if bad is not None:
            raise ArtifactError(f"{path}: not saved: {part}.{bad} is not finite (NaN or Inf)")
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class _Strict(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", allow_inf_nan=True)


class PartialEpoch(_Strict):
    """The running sums of an epoch a stop request cut short (resumed exactly)."""

    loss_sum: float
    correct: int = Field(ge=0)
    seen: int = Field(ge=0)
    stats: dict[str, Any] | None


class RngState(_Strict):
    """The random generators' states at the checkpoint (``cuda`` on a CUDA run only)."""

    torch: torch.Tensor
    cuda: torch.Tensor | None = None


class ClockState(_Strict):
    """The run's time up to the checkpoint, over its sessions
    (:class:`~nctune.training.clock.SessionClock`)."""

    sessions: int = Field(ge=1)
    total_seconds: float = Field(ge=0)
    cpu_seconds: float = Field(ge=0)
    train_seconds: float = Field(ge=0)


class Checkpoint(_Strict):
    """What a checkpoint holds, typed: :meth:`~nctune.training.state.TrainState.save` writes
    it, :func:`load_checkpoint` reads it back checked, and
    :meth:`~nctune.training.state.TrainState.restore` reads its fields.

    Attributes:
        epoch, step: where training continues: epochs finished, then steps done in the next
            one (non-zero only for a mid-epoch stop, with ``partial`` its sums).
        phase: the strategy's phase when saved (lp-ft: ``'probe'`` or ``'full'``).
        model, optimizer, scaler, rng: the states to restore.
        history: the finished epochs (:class:`~nctune.training.evaluation.EpochStats` fields).
        best_acc, best_epoch, best_state, bad_epochs: the kept epoch so far and the epochs
            since it (early stopping).
        ema: the averaged weights with ``train.ema`` (None without; absent in older files).
        clock: the run's time and sessions up to the save (None in older files).
    """

    format: Literal[1]
    epoch: int = Field(ge=0)
    step: int = Field(ge=0)
    phase: Literal["main", "probe", "full"]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: RngState
    history: list[EpochStats]
    best_acc: float | None
    best_epoch: int = Field(ge=-1)
    best_state: dict[str, torch.Tensor] | None
    bad_epochs: int = Field(ge=0)
    partial: PartialEpoch | None
    ema: dict[str, torch.Tensor] | None = None
    clock: ClockState | None = None


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``run_dir``, or None when there is none.

    Validated against :class:`Checkpoint` (every key the training loop reads, with
    its type), so a truncated, damaged or hand-edited file fails here as one line naming
    the field, not as a ``KeyError`` in the middle of a run. ``nctune finetune --resume``
    calls it before building the backbone and data and before the slow profiling pass.

    Args:
        run_dir: the run folder holding ``checkpoint.pt``.

    Returns:
        The checkpoint's typed fields (loaded with ``weights_only=True``, on CPU), or None.

    Raises:
        ArtifactError: the file cannot be read, has another checkpoint format, lacks a
            field (or holds one of the wrong type), or holds what no run saves: a NaN/Inf
            tensor (``model``, ``best_state``, optimizer state), ``best_state`` of other
            keys or shapes than ``model``, a history that is not one record per finished
            epoch, a kept epoch or ``best_acc`` the history does not show, an optimizer
            state without its layout, a CPU generator state torch refuses, or a mid-epoch
            ``step`` without its ``partial`` sums (or the reverse). One line naming the
            field; what needs the run's model and recipe is checked by
            :meth:`~nctune.training.state.TrainState.restore`.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(
            f"{path}: unreadable checkpoint ({err.__class__.__name__}); start a new run"
        ) from None
    if not isinstance(ckpt, dict):
        raise ArtifactError(
            f"{path}: not an nctune checkpoint (a {type(ckpt).__name__}); start a new run"
        )
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(
            f"{path}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}"
        )
    try:
        checked = Checkpoint.model_validate(ckpt)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise damaged(path, where, first["msg"].lower()) from None
    problem = _inconsistency(checked)
    if problem is not None:
        raise damaged(path, *problem)
    return checked


def _inconsistency(ckpt: Checkpoint) -> tuple[str, str] | None:
    """The first field (and why) that no run of nctune could have saved, or None.

    Types are pydantic's; this checks what they cannot: every tensor finite, the kept
    epoch's weights of the model's very shapes, the history one record per finished epoch,
    the kept epoch and its accuracy those of the history, the optimizer's layout, the CPU
    generator's state, and mid-epoch sums exactly when a mid-epoch position.
    """
    for part in ("model", "best_state", "ema"):
        bad = non_finite_tensor(getattr(ckpt, part) or {})
        if bad is not None:
            return f"{part}.{bad}", "not finite (NaN or Inf)"
    return (
        _best_state(ckpt)
        or _best_state(ckpt, "ema")
        or _history(ckpt)
        or _best(ckpt)
        or _optimizer(ckpt.optimizer)
        or _rng(ckpt.rng)
        or _partial(ckpt)
    )


def _best_state(ckpt: Checkpoint, part: str = "best_state") -> tuple[str, str] | None:
    """``part`` (the kept epoch's or the EMA's weights) has the model's keys and shapes."""
    weights = getattr(ckpt, part)
    if weights is None:
        return None
    for key, value in ckpt.model.items():
        kept = weights.get(key)
        if kept is None:
            return part, f"lacks {key}, which the model has"
        if kept.shape != value.shape:
            return f"{part}.{key}", f"shape {tuple(kept.shape)} is not {tuple(value.shape)}"
    extra = sorted(weights.keys() - ckpt.model.keys())
    return (part, f"holds {extra[0]}, which the model lacks") if extra else None


def _history(ckpt: Checkpoint) -> tuple[str, str] | None:
    if len(ckpt.history) != ckpt.epoch:
        n = len(ckpt.history)
        return "history", f"{n} finished epoch{'s' * (n != 1)}, but epoch is {ckpt.epoch}"
    for i, record in enumerate(ckpt.history):
        if record.epoch != i + 1:
            return f"history.{i}.epoch", f"{record.epoch} where {i + 1} belongs"
    return None


def _best(ckpt: Checkpoint) -> tuple[str, str] | None:
    """The kept epoch: none before the first epoch ends, else one of the history's."""
    if ckpt.best_acc is not None and not math.isfinite(ckpt.best_acc):
        return "best_acc", f"{ckpt.best_acc} is not finite"
    if ckpt.epoch == 0:
        if ckpt.best_epoch != -1 or ckpt.best_state is not None or ckpt.best_acc is not None:
            return "best_epoch", f"{ckpt.best_epoch} kept before any epoch finished"
        return None
    if not 1 <= ckpt.best_epoch <= ckpt.epoch:
        return "best_epoch", f"{ckpt.best_epoch} is not one of the epochs 1..{ckpt.epoch}"
    if ckpt.best_state is None:
        return "best_state", f"missing, with epoch {ckpt.best_epoch} kept"
    recorded = ckpt.history[ckpt.best_epoch - 1].val_accuracy
    if ckpt.best_acc != recorded:  # the same float, written from the same number
        return (
            "best_acc",
            f"{ckpt.best_acc} is not the kept epoch's history.{ckpt.best_epoch - 1}."
            f"val_accuracy {recorded}",
        )
    if ckpt.bad_epochs > ckpt.epoch - ckpt.best_epoch:
        return "bad_epochs", f"{ckpt.bad_epochs} since epoch {ckpt.best_epoch} of {ckpt.epoch}"
    return None


def _optimizer(opt: dict[str, Any]) -> tuple[str, str] | None:
    """What ``Optimizer.load_state_dict`` reads: ``state`` per parameter id, ``param_groups``
    each with its ``params`` ids (shapes are checked against the model on restore)."""
    state, groups = opt.get("state"), opt.get("param_groups")
    if not isinstance(state, dict) or not isinstance(groups, list) or not groups:
        return "optimizer", "not an optimizer state (state and param_groups)"
    ids: set[int] = set()
    for i, group in enumerate(groups):
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(params, list) or not all(type(p) is int for p in params):
            return f"optimizer.param_groups.{i}", "no list of parameter ids"
        ids.update(params)
    for key, slot in state.items():
        if key not in ids or not isinstance(slot, dict):
            return f"optimizer.state.{key}", "belongs to no parameter group"
        bad = non_finite_tensor({k: v for k, v in slot.items() if isinstance(v, torch.Tensor)})
        if bad is not None:
            return f"optimizer.state.{key}.{bad}", "not finite (NaN or Inf)"
    return None


def _rng(rng: RngState) -> tuple[str, str] | None:
    """The CPU generator's state, tried (and the current one put back)."""
    current = torch.get_rng_state()
    try:
        torch.set_rng_state(rng.torch)
    except (RuntimeError, TypeError, ValueError) as err:
        return "rng.torch", one_line(err, 120)
    finally:
        torch.set_rng_state(current)
    if rng.cuda is not None and (rng.cuda.dtype != torch.uint8 or rng.cuda.ndim != 1):
        return "rng.cuda", f"a {rng.cuda.dtype} tensor of shape {tuple(rng.cuda.shape)}"
    return None


def _partial(ckpt: Checkpoint) -> tuple[str, str] | None:
    """Mid-epoch sums exactly when the position is mid-epoch (a stop request saves both)."""
    if (ckpt.step > 0) != (ckpt.partial is not None):
        return "step", (
            f"{ckpt.step} steps into an epoch without its partial sums"
            if ckpt.step
            else "0 (an epoch boundary) with a partial epoch's sums"
        )
    part = ckpt.partial
    if part is None:
        return None
    if not math.isfinite(part.loss_sum):
        return "partial.loss_sum", f"{part.loss_sum} is not finite"
    if part.stats is not None:
        try:
            CollapseStats(part.stats["num_classes"]).load_state_dict(part.stats)
        except Exception as err:  # whatever the damage, it is the file's
            return "partial.stats", one_line(err, 120)
    return None
