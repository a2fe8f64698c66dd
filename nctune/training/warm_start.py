"""A head warm-started by a linear probe on the frozen features: LP-FT on the tuned suffix.

A fresh, random head sends large, noisy gradients into the tuned block during the first
steps of fine-tuning and distorts the pretrained features before the head is any good
(Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution", ICLR 2022). Fitting the head first, as a linear probe on what it
sees at the start, and only then fine-tuning block and head together avoids that. On the
suffix the probe is cheap: the head's inputs are one pass over the (cached) training data,
and the fit is a full-batch L-BFGS on an ``(N, D)`` matrix, with no image in sight.

Wiring, before :func:`~nctune.training.train.fit`::

    init = warm_start_head(applied.tuned, train_source, num_classes)
    init.load_into(applied.tuned.head)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nctune.training.suffix import measure

#: Default L2 penalty on the standardised weights (per sample, on the mean loss): mild, so the
#: head is good but not over-confident when fine-tuning starts.
DEFAULT_L2 = 1e-3


@dataclass
class HeadInit:
    """A linear head fitted to frozen features.

    Attributes:
        weight: ``(K, D)``, for ``nn.Linear(D, K).weight`` (float32, CPU).
        bias: ``(K,)``.
        loss_before: mean cross-entropy of the head it replaces on the same features
            (NaN when not known).
        loss_after: mean cross-entropy of the fitted head, without the penalty.
        accuracy: training accuracy of the fitted head.
        iterations: L-BFGS iterations used.
        l2: the penalty it was fitted with.
        num_samples: N.
        seconds: wall time of the fit (and of the feature pass, via
            :func:`warm_start_head`).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    loss_before: float
    loss_after: float
    accuracy: float
    iterations: int
    l2: float
    num_samples: int
    seconds: float

    def load_into(self, head: nn.Linear) -> None:
        """Copy the fitted weights into ``head`` (its device and dtype are kept).

        Args:
            head: an ``nn.Linear(D, K)``, e.g. a :class:`~nctune.training.strategies.TunedModel`'s.

        Raises:
            ValueError: the shapes differ.
        """
        if tuple(head.weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"head is {tuple(head.weight.shape)}, the fitted weights {tuple(self.weight.shape)}"
            )
        with torch.no_grad():
            head.weight.copy_(self.weight.to(head.weight))
            if head.bias is not None:
                head.bias.copy_(self.bias.to(head.bias))

    def to_dict(self) -> dict[str, Any]:
        """The report's entry: every field but the tensors."""
        return {
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "accuracy": self.accuracy,
            "iterations": self.iterations,
            "l2": self.l2,
            "num_samples": self.num_samples,
            "seconds": round(self.seconds, 3),
        }


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = DEFAULT_L2,
    max_iter: int = 100,
) -> HeadInit:
    """Multinomial logistic regression on fixed features, by full-batch L-BFGS.

    With :math:`z_i = (h_i - m) / s` the features standardised per dimension (mean
    :math:`m`, standard deviation :math:`s`, for conditioning), it minimises

    .. math::

        \\frac1N \\sum_i -\\log \\operatorname{softmax}(V z_i + c)_{y_i}
        + \\frac{\\lambda}{2} \\lVert V \\rVert_F^2

    from :math:`V = 0, c = 0` (deterministic: no random draw), then folds the
    standardisation back into the head: :math:`W = V \\operatorname{diag}(1/s)`,
    :math:`b = c - W m`, so ``W h + b = V z + c``.

    Args:
        features: ``(N, D)`` head inputs.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: K.
        l2: :math:`\\lambda`, the penalty on the standardised weights.
        max_iter: L-BFGS iterations at most.

    Returns:
        A :class:`HeadInit` (``loss_before`` is NaN: no previous head is known here).

    Raises:
        ValueError: no samples, or features and labels of different lengths.
    """
    if features.ndim != 2 or len(features) == 0 or len(features) != len(labels):
        raise ValueError("fit_linear_head needs (N, D) features and N labels, N > 0")
    start = time.perf_counter()
    h = features.detach().float().cpu()
    y = labels.detach().long().cpu()
    mean = h.mean(0)
    std = h.std(0, unbiased=False).clamp_min(1e-6)
    z = (h - mean) / std
    v = torch.zeros(num_classes, h.shape[1], requires_grad=True)
    c = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [v, c], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ v.T + c, y) + 0.5 * l2 * (v * v).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[v].get("n_iter", 0))
    with torch.no_grad():
        weight = v / std
        bias = c - weight @ mean
        logits = h @ weight.T + bias
        loss_after = float(F.cross_entropy(logits, y))
        accuracy = float((logits.argmax(1) == y).float().mean())
    return HeadInit(
        weight=weight.detach().clone(),
        bias=bias.detach().clone(),
        loss_before=float("nan"),
        loss_after=loss_after,
        accuracy=accuracy,
        iterations=iterations,
        l2=l2,
        num_samples=len(y),
        seconds=time.perf_counter() - start,
    )


def warm_start_head(
    model: nn.Module,
    source: Any,
    num_classes: int,
    *,
    l2: float = DEFAULT_L2,
    max_iter: int = 100,
    device: torch.device | None = None,
    amp: bool = True,
) -> HeadInit:
    """Fit ``model``'s head as a linear probe on what it sees over ``source``.

    One evaluation pass (eval mode, no gradients) collects the head inputs and measures
    the current head's loss; :func:`fit_linear_head` fits the new one. ``model`` is not
    changed: load the result with :meth:`HeadInit.load_into`.

    Args:
        model: a :class:`~nctune.training.strategies.TunedModel`.
        source: a batch source over the training data (a
            :class:`~nctune.training.batches.CachedBatches` costs no image pass).
        num_classes: K.
        l2: the penalty (see :func:`fit_linear_head`).
        max_iter: L-BFGS iterations at most.
        device: where the model runs (default: where its parameters are).
        amp: autocast on CUDA, as in training.

    Returns:
        A :class:`HeadInit` whose ``loss_before`` is the current head's loss.

    Raises:
        ValueError: the source is empty.
    """
    start = time.perf_counter()
    seen = measure(model, source, num_classes, device=device, amp=amp, keep_features=True)
    if seen.features is None:
        raise ValueError("warm_start_head: the training source gave no samples")
    init = fit_linear_head(seen.features, seen.labels, num_classes, l2=l2, max_iter=max_iter)
    init.loss_before = seen.loss
    init.seconds = time.perf_counter() - start
    return init
