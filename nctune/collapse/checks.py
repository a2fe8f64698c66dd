"""What a batch fed to :class:`~nctune.collapse.CollapseStats` must be, checked before it
touches the sums (a refused batch leaves the state exactly as it was)."""

from __future__ import annotations

import torch

from nctune.errors import CollapseError, one_line


def as_tensor(value: object, what: str) -> torch.Tensor:
    """A tensor as is; numpy arrays and other array-likes converted (no copy when possible).

    Raises:
        CollapseError: ``value`` is not numeric (named by ``what``).
    """
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CollapseError(
            f"{what} must be a tensor or a numeric array-like, got {type(value).__name__} "
            f"({one_line(str(err), 80)})"
        ) from None


def check_batch(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, dim: int | None, where: str
) -> None:
    """Refuse a batch that is not ``(B, D)`` finite features with ``(B,)`` labels in ``[0, K)``.

    Args:
        features, labels: the batch (tensors).
        num_classes: K declared.
        dim: D of the earlier batches (None for the first).
        where: how messages name the batch (``batch 3``).

    Raises:
        CollapseError: a shape, label dtype or range, a changed width, or NaN/Inf.
    """
    if features.ndim != 2:
        raise CollapseError(f"{where}: features must be (B, D), got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise CollapseError(
            f"{where}: labels must be (B,) with B={features.shape[0]}, "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise CollapseError(f"{where}: labels must be integers, got {labels.dtype}")
    if dim is not None and features.shape[1] != dim:
        raise CollapseError(f"{where}: feature width changed from {dim} to {features.shape[1]}")
    if not torch.isfinite(features).all():
        raise CollapseError(f"{where}: features contain NaN or Inf")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise CollapseError(
            f"{where}: label {bad} is outside [0, {num_classes}) (num_classes={num_classes})"
        )
