"""The optimiser side of training: per-epoch sample order, learning-rate schedule, weight decay."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Sampler

if TYPE_CHECKING:
    from nctune.config import TrainConfig


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from ``(seed, epoch)`` alone, optionally from an offset.

    Deriving the order from the epoch number (not from a generator's running state)
    is what lets a run resumed mid-epoch see exactly the batches it would have seen.

    Args:
        n: dataset size.
        seed: the run's seed.
        epoch: the epoch (from 0) whose permutation to draw.
        start: how many indices of the permutation to skip (already-trained samples).
        weights: per-sample draw weights (``data.balanced_sampler``): the epoch's order is
            then ``n`` draws with replacement (``WeightedRandomSampler``'s rule,
            ``torch.multinomial``) from the same ``(seed, epoch)`` generator.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        start: int = 0,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.weights = weights

    def generator(self) -> torch.Generator:
        """A generator seeded from ``(seed, epoch)`` alone.

        Returns:
            A CPU generator seeded with ``seed · 100003 + epoch``.
        """
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def order(self) -> torch.Tensor:
        """This epoch's permutation of ``range(n)`` (before the offset).

        Returns:
            An int64 tensor of the ``n`` indices (drawn with replacement under ``weights``).
        """
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, True, generator=self.generator())
        return torch.randperm(self.n, generator=self.generator())

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig, base_lr: float) -> float:
    """Learning rate at optimizer step ``step``: linear warm-up, then cosine decay.

    With η = ``base_lr``, s = ``step``, W = ``warmup``, N = ``total`` and the floor
    η_min = ``cfg.min_lr_ratio`` · η:

    - warm-up (s < W):  η(s) = η · (s + 1) / W
    - ``cfg.schedule == "constant"``, or N ≤ W:  η(s) = η
    - cosine:  p = min(1, (s − W) / max(1, N − W)),
      η(s) = η_min + ½ · (η − η_min) · (1 + cos(π · p))

    The warm-up rises linearly to η, reaching it at s = W − 1, so large early updates
    to a freshly initialised head do not wreck the pretrained features; the cosine
    then anneals from η (at s = W) to η_min (at s ≥ N).

    Args:
        step: the optimizer step within the phase, from 0.
        total: N, the phase's number of steps.
        warmup: W, warm-up steps (0: none).
        cfg: the ``train`` section (``schedule``, ``min_lr_ratio``).
        base_lr: η, the peak learning rate.

    Returns:
        The learning rate for this step.
    """
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if cfg.schedule == "constant" or total <= warmup:
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.min_lr_ratio * base_lr
    return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def no_weight_decay_ids(model: nn.Module) -> set[int]:
    """``id()`` of the parameters a model asks to keep out of weight decay.

    timm models name them in ``no_weight_decay()`` (class/register tokens, position
    embeddings): shrinking those toward zero only hurts. Every submodule is asked, so the
    names resolve inside an nctune or PEFT wrapper too.

    Args:
        model: any module, possibly wrapping timm models.

    Returns:
        The ids of those parameters.
    """
    ids: set[int] = set()
    for module in model.modules():
        names = getattr(module, "no_weight_decay", None)
        if not callable(names):
            continue
        try:
            skip = set(names())
        except TypeError:  # an attribute or method of another meaning
            continue
        ids.update(id(p) for n, p in module.named_parameters() if n in skip)
    return ids


def make_optimizer(
    params: list[nn.Parameter],
    cfg: TrainConfig,
    lr: float,
    no_decay: set[int] | frozenset[int] = frozenset(),
    lr_scales: dict[int, float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD, with weight decay on weight matrices and kernels only.

    Parameters with ``ndim ≥ 2`` (weight matrices, conv kernels) get ``cfg.weight_decay``;
    1-D ones (biases, norm scales and shifts) and those in ``no_decay`` (tokens and position
    embeddings, see :func:`no_weight_decay_ids`) get none. SGD uses ``cfg.momentum``,
    Nesterov when the momentum is positive.

    Args:
        params: the trainable parameters.
        cfg: the ``train`` section (``optimizer``, ``weight_decay``, ``momentum``).
        lr: the initial learning rate (:func:`fit` sets it every step from :func:`lr_at`).
        no_decay: ``id()`` of further parameters to keep out of weight decay.
        lr_scales: ``{id(p): factor}`` (``train.layer_decay``, see
            :func:`~nctune.training.kit.layer_scales`): the groups are then split by factor
            too, each with its ``lr_scale`` (the loop sets ``lr · lr_scale``).

    Returns:
        The optimizer, with the decayed group first and the undecayed one second (with
        ``lr_scales``: those two per factor, shallowest first, empty groups left out).
    """
    decayed = [p for p in params if p.ndim >= 2 and id(p) not in no_decay]
    kept = [p for p in params if p.ndim < 2 or id(p) in no_decay]
    groups = [
        {"params": decayed, "weight_decay": cfg.weight_decay},
        {"params": kept, "weight_decay": 0.0},
    ]
    if lr_scales:
        groups = [
            {"params": ps, "weight_decay": g["weight_decay"], "lr_scale": f}
            for f in sorted({lr_scales.get(id(p), 1.0) for p in params})
            for g in groups
            if (ps := [p for p in g["params"] if lr_scales.get(id(p), 1.0) == f])
        ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)
