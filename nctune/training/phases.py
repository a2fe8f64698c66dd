"""A run's phases (lp-ft probes, then tunes everything) and the guard that puts torch's
process-wide determinism switches back after :func:`~nctune.training.train.fit`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nctune.training.strategies import STRATEGY_REGISTRY, AppliedStrategy


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one optimizer: ``[start, end)``, counted from 0 over all."""

    name: str
    start: int
    end: int
    lr_scale: float


def run_phases(
    applied: AppliedStrategy, epochs: int, probe_epochs: int | None, full_lr_scale: float
) -> list[Phase]:
    """The run's phases. A probe-first strategy (lp-ft) probes, then tunes everything gently."""
    if not STRATEGY_REGISTRY.get(applied.strategy).probe_first:
        return [Phase("main", 0, epochs, 1.0)]
    probe = probe_epochs or max(1, epochs // 2)
    if probe >= epochs:
        return [Phase("probe", 0, epochs, 1.0)]
    return [Phase("probe", 0, probe, 1.0), Phase("full", probe, epochs, full_lr_scale)]


def restores_torch_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Undo ``fit``'s process-wide determinism switches when it returns (or raises): a
    library call must not leave the user's own training code deterministic-and-slower."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
        )
        try:
            return fn(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            torch.backends.cudnn.benchmark = saved[2]

    return wrapper
