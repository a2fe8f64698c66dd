"""A measured estimate of what a recipe costs on this machine (``nctune init`` prints it).

A few batches of the real training images are timed at the recipe's side on its device,
with random weights (the time does not depend on them), and scaled to one ``analyze``
and one training epoch. It is an estimate: the real run's loading, caching and strategy
differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nctune.config import Recipe

__all__ = ["TIMED_BATCHES", "TIMING_BATCH", "Cost", "measure_cost"]

#: Images per timed batch (at most ``data.batch_size``), and timed batches per pass.
TIMING_BATCH = 16
TIMED_BATCHES = 2


@dataclass
class Cost:
    """A measured estimate of what the recipe costs on this machine (an estimate: timed
    on a few batches, with random weights; the real run's loading and caching differ).

    Attributes:
        device: where it was timed (``'cpu'``, ``'cuda:0'``).
        image_size: the side it was timed at.
        forward_s: seconds per image, forward pass (inference mode, decoding included).
        train_s: seconds per image, forward + backward of the whole network.
        analyze_images: images ``analyze`` passes (profiled training images + validation).
        analyze_seconds: ``forward_s · analyze_images``.
        epoch_images: training images per epoch.
        epoch_seconds: ``train_s · epoch_images + forward_s · validation images`` — full
            fine-tuning; a strategy that trains a cached head or one block is faster.
    """

    device: str
    image_size: int
    forward_s: float
    train_s: float
    analyze_images: int
    analyze_seconds: float
    epoch_images: int
    epoch_seconds: float


def _timed(step: Any, batches: list[Any], device: Any) -> float:
    """Seconds per image of ``step(x, y)`` over ``batches`` (the first one is a warm-up)."""
    import torch

    step(*batches[0])
    if device.type == "cuda":  # the warm-up's queued work is not the timed batches'
        torch.cuda.synchronize(device)
    timed = batches[1:] or batches  # one batch in all: time it again after the warm-up
    images, start = 0, time.perf_counter()
    for x, y in timed:
        step(x, y)
        images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / max(images, 1)


def measure_cost(backbone: Any, splits: Any, recipe: Recipe, device: Any) -> Cost | None:
    """Time a few batches of the real training images at the recipe's side on ``device``
    and scale them to one ``analyze`` and one training epoch (an estimate).

    Batches of ``min(data.batch_size, TIMING_BATCH)`` images, decoded in this process, are
    timed after one warm-up batch: a forward pass (what ``analyze`` does per image) and a
    forward + backward pass through the whole network (full fine-tuning, the upper bound
    of the strategies; bf16/fp16 autocast as ``train.amp`` gives on CUDA).

    Args:
        backbone: the recipe's backbone (random weights do as well as trained ones).
        splits: the recipe's data splits.
        recipe: the recipe (batch size, ``analysis.max_samples``, ``train.amp``).
        device: where to time.

    Returns:
        The :class:`Cost`, or None when the timing itself fails (e.g. out of memory).
    """
    import torch
    from torch.utils.data import Subset

    from nctune.data import make_loader
    from nctune.errors import NctuneError

    train, val = splits.train, splits.val
    per_batch = max(1, min(recipe.data.batch_size, TIMING_BATCH, len(train)))
    # whole batches only: a last batch of one image would trip BatchNorm in training mode
    take = per_batch * max(1, min(TIMED_BATCHES + 1, len(train) // per_batch))
    cfg = recipe.data.model_copy(update={"batch_size": per_batch, "num_workers": 0})
    loader = make_loader(Subset(train, range(take)), cfg, train=False, device=device)
    model = backbone.model.to(device)
    amp = device.type == "cuda" and recipe.train.amp

    def forward(x: Any, y: Any) -> None:
        with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
            model(x.to(device))

    def train_step(x: Any, y: Any) -> None:
        with torch.autocast(device.type, enabled=amp):
            loss = model(x.to(device)).float().logsumexp(dim=1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        batches = list(loader)
        model.eval()
        forward_s = _timed(forward, batches, device)
        model.train()
        train_s = _timed(train_step, batches, device)
    # out of memory, a device error, an image that does not decode (analyze names it): the
    # estimate is a courtesy, the recipe is written without it
    except (RuntimeError, ValueError, MemoryError, OSError, NctuneError):
        return None
    finally:
        model.eval()
    held_out = len(val) if val is not None else 0
    cap = recipe.analysis.max_samples
    profiled = min(len(train), cap) if cap else len(train)
    return Cost(
        device=str(device),
        image_size=int(splits.image_size),
        forward_s=forward_s,
        train_s=train_s,
        analyze_images=profiled + held_out,
        analyze_seconds=forward_s * (profiled + held_out),
        epoch_images=len(train),
        epoch_seconds=train_s * len(train) + forward_s * held_out,
    )
