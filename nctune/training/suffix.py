"""The tuned suffix, run and trained for a bounded number of optimizer steps.

The levers of ``auto`` (the collapse probe, the learning-rate range test, the linear-probe
warm start) all do two things with a :class:`~nctune.training.strategies.TunedModel`: one
evaluation pass over a batch source (accuracy, loss, head-input statistics, optionally the
head-input features themselves), and a few optimizer steps. Both live here, on the batch
sources of :mod:`nctune.training.batches` (:class:`~nctune.training.batches.CachedBatches`
serves the frozen prefix's cached output, :class:`~nctune.training.batches.ImageBatches`
runs the whole model), so each lever runs the same code whether the prefix is cached or
not. A source is anything with ``batches(epoch)``, ``attached()`` and
``forward(model, x) -> (logits, head input)``.

The optimizer is the training loop's (:func:`~nctune.training.optim.make_optimizer`:
AdamW, weight decay on matrices and kernels only) with the loop's global-norm gradient
clip, so a learning rate found here means the same thing in :func:`~nctune.training.train.fit`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nctune.collapse import CollapseStats
from nctune.taps import amp_dtype, autocast
from nctune.training.batches import ImageBatches
from nctune.training.evaluation import safe_nc1
from nctune.training.optim import make_optimizer, no_weight_decay_ids


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global RNGs seeded, then give the caller's RNG states back.

    A lever's random draws (a fresh head, dropout, a source's own shuffling) then repeat
    for a seed, and the run around it sees the same random numbers as without it.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def dataset_of(data: Any) -> Dataset:
    """The dataset behind ``data``: a ``Dataset`` itself, or a ``DataLoader``'s ``.dataset``.

    Raises:
        TypeError: ``data`` is neither.
    """
    if isinstance(data, DataLoader):
        return data.dataset
    if isinstance(data, Dataset):
        return data
    raise TypeError(f"expected a Dataset or a DataLoader of (image, label), got {type(data)!r}")


def as_source(data: Any, batch_size: int, device: torch.device, seed: int = 0) -> Any:
    """A batch source for ``data``: a source as it is, else images through the whole model.

    Args:
        data: a batch source (has ``attached``), a ``Dataset`` or a ``DataLoader``.
        batch_size: samples per batch for a ``Dataset``.
        device: where the model runs.
        seed: seeds the per-epoch sample order of a ``Dataset``.

    Returns:
        ``data``, or an :class:`~nctune.training.batches.ImageBatches` over it.
    """
    if hasattr(data, "attached") and hasattr(data, "forward"):
        return data
    return ImageBatches(data, batch_size, device, seed)


@dataclass
class PassResult:
    """One evaluation pass of a model over a source (eval mode, no gradients).

    Attributes:
        accuracy: top-1 accuracy (NaN on an empty source).
        loss: mean cross-entropy of the logits (NaN on an empty source).
        nc1: NC1 of the head input, :math:`\\tfrac1K\\operatorname{tr}(\\Sigma_W\\Sigma_B^+)`
            (NaN when undefined, e.g. a class is missing or every class mean coincides).
        num_samples: samples seen.
        features: the head inputs ``(N, D)`` on CPU in float32, when kept.
        labels: their labels ``(N,)``, when kept.
    """

    accuracy: float
    loss: float
    nc1: float
    num_samples: int
    features: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def _nc1(stats: CollapseStats | None) -> float:
    """:func:`~nctune.training.evaluation.safe_nc1`, NaN where undefined (callers rank by it)."""
    value = safe_nc1(stats)
    return value if value is not None and math.isfinite(value) else math.nan


def measure(
    model: nn.Module,
    source: Any,
    num_classes: int,
    *,
    device: torch.device | None = None,
    amp: bool = True,
    keep_features: bool = False,
) -> PassResult:
    """Accuracy, loss and head-input NC1 of ``model`` over ``source``, in one pass.

    The model runs in eval mode without gradients; its train/eval mode is restored.

    Args:
        model: a :class:`~nctune.training.strategies.TunedModel`.
        source: a batch source (see the module docstring).
        num_classes: K for the :class:`~nctune.collapse.CollapseStats` of the head input.
        device: where the model runs (default: where its parameters are).
        amp: autocast on CUDA, as in training (a cached source must match its cache).
        keep_features: also return the head inputs and labels (CPU, float32).

    Returns:
        A :class:`PassResult`.
    """
    device = device or model_device(model)
    stats: CollapseStats | None = CollapseStats(num_classes)
    correct = seen = 0
    loss_sum = 0.0
    kept_x: list[torch.Tensor] = []
    kept_y: list[torch.Tensor] = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), source.attached():
            for x, y in source.batches():
                y = torch.as_tensor(y).to(device)
                with autocast(device, amp):
                    logits, feats = source.forward(model, x)
                feats = feats.float()
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                seen += int(y.numel())
                if stats is not None and bool(torch.isfinite(feats).all()):
                    stats.update(feats, y)
                else:  # a diverged model: its NC1 is undefined, not an error
                    stats = None
                if keep_features:
                    kept_x.append(feats.cpu())
                    kept_y.append(y.cpu())
    finally:
        model.train(was)
    nan = math.nan
    return PassResult(
        accuracy=correct / seen if seen else nan,
        loss=loss_sum / seen if seen else nan,
        nc1=_nc1(stats) if seen else nan,
        num_samples=seen,
        features=torch.cat(kept_x) if keep_features and kept_x else None,
        labels=torch.cat(kept_y) if keep_features and kept_y else None,
    )


def _endless(source: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches epoch after epoch (each epoch in the source's seeded order)."""
    for epoch in itertools.count():
        empty = True
        for batch in source.batches(epoch):
            empty = False
            yield batch
        if empty:
            return


def train_steps(
    model: nn.Module,
    source: Any,
    steps: int,
    lr: float,
    *,
    weight_decay: float = 0.01,
    grad_clip: float | None = 1.0,
    device: torch.device | None = None,
    amp: bool = True,
    lr_for_step: Callable[[int], float] | None = None,
    stop: Callable[[int, float], bool] | None = None,
) -> list[float]:
    """At most ``steps`` AdamW steps on ``model``'s trainable parameters.

    One optimizer step per batch; batches run epoch after epoch in the source's order.
    The model is in training mode during the steps (frozen BatchNorm stays in eval mode,
    see :meth:`~nctune.training.strategies.TunedModel.train`); its mode is restored.

    Args:
        model: a :class:`~nctune.training.strategies.TunedModel` whose trainable
            parameters have ``requires_grad``.
        source: a batch source (see the module docstring).
        steps: the most optimizer steps to take.
        lr: the learning rate (the first step's, with ``lr_for_step``).
        weight_decay: decoupled weight decay on matrices and kernels.
        grad_clip: clip the global gradient norm to this (None: off).
        device: where the model runs (default: where its parameters are).
        amp: autocast on CUDA, as in training.
        lr_for_step: ``lr_for_step(step)`` sets the learning rate before each step.
        stop: ``stop(step, loss)`` after each step; True ends the loop (a diverging
            range test).

    Returns:
        The training loss of every batch run. Each finite entry is one optimizer step; a
        non-finite loss ends the loop before its step is taken (the last entry).
    """
    device = device or model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if steps <= 0 or not params:
        return []
    cfg = SimpleNamespace(optimizer="adamw", weight_decay=weight_decay, momentum=0.0)
    optimizer = make_optimizer(params, cfg, lr, no_weight_decay_ids(model))
    # float16 autocast (GPUs without native bfloat16) needs loss scaling, as in fit
    fp16 = amp and device.type == "cuda" and amp_dtype() == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    losses: list[float] = []
    was = model.training
    model.train()
    try:
        with source.attached():
            for step, (x, y) in zip(range(steps), _endless(source), strict=False):
                if lr_for_step is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr_for_step(step)
                y = torch.as_tensor(y).to(device)
                with autocast(device, amp):
                    logits, _ = source.forward(model, x)
                loss = F.cross_entropy(logits.float(), y)
                value = float(loss.detach())
                losses.append(value)
                if not math.isfinite(value):
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip is not None:
                    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if stop is not None and stop(step, value):
                    break
    finally:
        model.train(was)
    return losses


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training can change: trainable parameters and every buffer.

    Buffers include the running statistics of the BatchNorm layers that train.

    Args:
        model: any module.

    Returns:
        ``state_dict`` keys → detached clones.
    """
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`trainable_state` back (in place, no gradient history)."""
    with torch.no_grad():
        current = model.state_dict()
        for k, v in state.items():
            current[k].copy_(v)
