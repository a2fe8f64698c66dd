"""Training checkpoints: what a resumable state holds, written atomically, read back checked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nctune.errors import ArtifactError
from nctune.runs._io import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: RngState, device: torch.device) -> None:
    """Put back the generators :func:`rng_state` saved (CUDA's only on a CUDA device)."""
    torch.set_rng_state(state.torch)
    if state.cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda, device)


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class _Strict(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", allow_inf_nan=True)


class _EpochRecord(_Strict):
    epoch: int = Field(ge=1)
    phase: Literal["main", "probe", "full"]
    loss: float
    accuracy: float
    val_accuracy: float | None
    nc1: float | None
    lr: float
    seconds: float


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
    """

    format: Literal[1]
    epoch: int = Field(ge=0)
    step: int = Field(ge=0)
    phase: Literal["main", "probe", "full"]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: RngState
    history: list[_EpochRecord]
    best_acc: float | None
    best_epoch: int = Field(ge=-1)
    best_state: dict[str, torch.Tensor] | None
    bad_epochs: int = Field(ge=0)
    partial: PartialEpoch | None


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
        ArtifactError: the file cannot be read, has another checkpoint format, or lacks a
            field (or holds one of the wrong type).
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
        return Checkpoint.model_validate(ckpt)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(
            f"{path}: damaged checkpoint ({where}: {first['msg'].lower()}); start a new run"
        ) from None
