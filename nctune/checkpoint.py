"""Training checkpoints: what a resumable state holds, written atomically, read back checked."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nctune._io import atomic_write_bytes
from nctune.errors import ArtifactError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir``, or None when there is none.

    Args:
        run_dir: the run folder holding ``checkpoint.pt``.

    Returns:
        The checkpoint dict (loaded with ``weights_only=True``, on CPU), or None.

    Raises:
        ArtifactError: the file cannot be read, or has another checkpoint format.
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
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(
            f"{path}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}"
        )
    return ckpt


def checkpoint_state(
    epoch, step, applied, model, optimizer, scaler, history, best, device, partial
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "step": step,
        "phase": applied.phase,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(device),
        "history": [asdict(h) for h in history],
        "best_acc": best["acc"],
        "best_epoch": best["epoch"],
        "best_state": best["state"],
        "bad_epochs": best["bad"],
        "partial": partial,
    }
