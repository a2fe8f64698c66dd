"""A learning-rate range test for the tuned suffix (Smith, "Cyclical Learning Rates for
Training Neural Networks", WACV 2017; the "LR finder" of fastai).

One fixed default learning rate cannot suit every block, head width and dataset. The
range test trains the suffix for a few dozen steps while the learning rate grows
exponentially from ``lr_min`` to ``lr_max``, smooths the loss curve, and takes a tenth
of the learning rate at which the smoothed loss is lowest: the largest rate that still
clearly descends, with a margin against the instability just past the minimum. On the
frozen-prefix cache the test costs a few dozen suffix steps and no image pass.

The model's weights (trainable parameters and buffers) and the caller's random state
are restored afterwards; the test is deterministic for a seed.

Wiring, before :func:`~nctune.training.train.fit`::

    found = lr_range_test(applied.tuned, train_source, steps=60)
    lr = found.lr
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nctune.training.suffix import model_device, restore, seeded, train_steps, trainable_state

#: The learning rates a range test may return, whatever its curve: below 1e-5 AdamW barely
#: moves a block in a short run; above 0.1 it is unstable on pretrained weights.
SANE_LR = (1e-5, 1e-1)


@dataclass
class LRRangeResult:
    """The range test's curve and its pick.

    Attributes:
        lr: the chosen learning rate.
        lrs: the learning rate of every step with a finite loss.
        losses: the training loss of those steps.
        smoothed: the bias-corrected exponential moving average of ``losses``.
        lr_min_loss: where ``smoothed`` is lowest.
        lr_steepest: where ``smoothed`` falls fastest per unit of :math:`\\log \\eta`
            before its minimum (None with fewer than three steps before it); reported, not
            used.
        steps: optimizer steps taken (≤ the steps asked for: the test stops when the loss
            diverges; a step whose loss is not finite is not taken).
        diverged: the test stopped early on a diverging loss.
        seconds: wall time.
        why: one sentence on the pick.
    """

    lr: float
    lrs: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)
    smoothed: list[float] = field(repr=False)
    lr_min_loss: float
    lr_steepest: float | None
    steps: int
    diverged: bool
    seconds: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        """The report's entry: the pick, the reasons and the curve."""
        return {
            "lr": self.lr,
            "lr_min_loss": self.lr_min_loss,
            "lr_steepest": self.lr_steepest,
            "steps": self.steps,
            "diverged": self.diverged,
            "seconds": round(self.seconds, 3),
            "why": self.why,
            "curve": {"lr": self.lrs, "loss": self.losses, "smoothed": self.smoothed},
        }


def _smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction: :math:`s_i = a_i / (1 - \\beta^{i+1})`."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def _steepest(lrs: list[float], smoothed: list[float], upto: int) -> float | None:
    """The learning rate where the smoothed loss falls fastest in :math:`\\log \\eta`."""
    if upto < 2:
        return None
    slopes = [
        (smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(upto)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def lr_range_test(
    model: nn.Module,
    source: Any,
    *,
    steps: int = 60,
    lr_min: float = 1e-5,
    lr_max: float = 1.0,
    beta: float = 0.8,
    diverge: float = 4.0,
    bounds: tuple[float, float] = SANE_LR,
    weight_decay: float = 0.01,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: torch.device | None = None,
    amp: bool = True,
) -> LRRangeResult:
    """Pick a learning rate for ``model``'s trainable parameters by a short range test.

    Step :math:`i` of :math:`n` trains at
    :math:`\\eta_i = \\eta_{min} (\\eta_{max}/\\eta_{min})^{i/(n-1)}`. The losses are
    smoothed (:math:`a_i = \\beta a_{i-1} + (1-\\beta)\\ell_i`, :math:`s_i = a_i/(1-\\beta^{i+1})`);
    the test stops once :math:`s_i > \\text{diverge} \\cdot \\min_{j \\le i} s_j` or a loss is
    not finite. The pick is :math:`\\eta^* = \\eta_{\\arg\\min s} / 10`, clipped to ``bounds``
    and to ``[lr_min, lr_max]``.

    Args:
        model: a :class:`~nctune.training.strategies.TunedModel` with its trainable
            parameters set (the strategy applied; the head warm-started or not, as it will
            be trained). Restored afterwards.
        source: a batch source over the training data (a cached one costs no image pass).
        steps: optimizer steps at most (the test's whole cost; ≥ 2).
        lr_min, lr_max: the sweep's ends, ``0 < lr_min < lr_max``.
        beta: smoothing of the loss curve, in ``[0, 1)``.
        diverge: stop when the smoothed loss exceeds this multiple of its minimum.
        bounds: the range the pick is clipped to (default :data:`SANE_LR`).
        weight_decay, grad_clip: as in training (:func:`~nctune.training.suffix.train_steps`).
        seed: seeds the random draws (dropout, a shuffled source).
        device: where the model runs (default: where its parameters are).
        amp: autocast on CUDA, as in training.

    Returns:
        An :class:`LRRangeResult`.

    Raises:
        ValueError: ``steps < 2``, ``lr_min``/``lr_max`` out of order or not positive,
            ``beta`` outside ``[0, 1)``, or the source gives no batch.
    """
    if steps < 2 or not 0 < lr_min < lr_max or not 0 <= beta < 1:
        raise ValueError("lr_range_test needs steps >= 2, 0 < lr_min < lr_max and 0 <= beta < 1")
    start = time.perf_counter()
    device = device or model_device(model)
    ratio = lr_max / lr_min
    lrs = [lr_min * ratio ** (i / (steps - 1)) for i in range(steps)]
    losses: list[float] = []

    def stop(step: int, loss: float) -> bool:
        losses.append(loss)
        smoothed = _smooth(losses, beta)
        return smoothed[-1] > diverge * min(smoothed)

    saved = trainable_state(model)
    try:
        with seeded(seed):
            taken = train_steps(
                model,
                source,
                steps,
                lrs[0],
                weight_decay=weight_decay,
                grad_clip=grad_clip,
                device=device,
                amp=amp,
                lr_for_step=lrs.__getitem__,
                stop=stop,
            )
    finally:
        restore(model, saved)
    if not taken:
        raise ValueError("lr_range_test: the training source gave no batch")
    finite = [x for x in taken if math.isfinite(x)]  # a non-finite loss ends the sweep
    diverged = len(taken) < steps or len(finite) < len(taken)
    smoothed = _smooth(finite, beta)
    best = min(range(len(smoothed)), key=smoothed.__getitem__) if smoothed else 0
    lr_best = lrs[best]
    low, high = max(bounds[0], lr_min), min(bounds[1], lr_max)
    if low > high:  # bounds outside the sweep: the sweep's own ends are the only limits
        low, high = lr_min, lr_max
    chosen = min(max(lr_best / 10, low), high)
    clipped = " after clipping" if not math.isclose(chosen, lr_best / 10) else ""
    why = (
        f"the smoothed loss is lowest at lr {lr_best:.2g} (step {best + 1} of {len(taken)}"
        f"{', then diverges' if diverged else ''}); a tenth of it, {chosen:.2g}{clipped}, "
        "leaves a margin below the unstable rates"
    )
    return LRRangeResult(
        lr=chosen,
        lrs=lrs[: len(finite)],
        losses=finite,
        smoothed=smoothed,
        lr_min_loss=lr_best,
        lr_steepest=_steepest(lrs, smoothed, best),
        steps=len(finite),
        diverged=diverged,
        seconds=time.perf_counter() - start,
        why=why,
    )
