"""The training kit around one step: loss weighting, mixup/cutmix, random erasing, EMA of
the weights, layer-wise learning-rate decay, balanced sampling and autocast on CPU.

Every piece is off by default and then leaves the step exactly as it was (the same loss
call, the same optimizer groups, the same sample order). timm does the work where it has
it (``Mixup``, ``RandomErasing``, ``ModelEmaV3``); their random draws (Python's and
NumPy's generators) are seeded from torch's, which a checkpoint saves, so a resumed run
mixes and erases exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nctune.data.transforms import torch_seeded
from nctune.errors import ConfigError
from nctune.taps import autocast
from nctune.training.batches import IGNORE

#: Why the prefix cache is off when a batch changes before its forward pass.
NO_CACHE = (
    "data.random_erase or train.mixup/cutmix is on: the prefix of a changed batch differs "
    "every step"
)


def run_extras(
    cfg: Any, train_set: Any, num_classes: int, random_erase: float, balanced: bool
) -> dict[str, Any]:
    """The kit's parts of a training run, from the recipe (:class:`~nctune.training.train.fit`).

    Returns:
        ``batch_kit`` (None when nothing changes a batch), ``class_weight`` (the K
        inverse-frequency weights with ``train.class_weights: auto``, else None) and
        ``sample_weights`` (the draw weights with ``data.balanced_sampler``, else None).
    """
    batch = BatchKit(num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing, random_erase)
    needs_labels = cfg.class_weights == "auto" or balanced
    targets = getattr(train_set, "targets", None) if needs_labels else None
    if needs_labels and targets is None:
        raise ConfigError(
            "train.class_weights / data.balanced_sampler: the training set has no labels "
            "(.targets) to count; turn them off"
        )
    return {
        "batch_kit": batch if batch.active else None,
        "class_weight": inverse_frequency(targets, num_classes)
        if cfg.class_weights == "auto"
        else None,
        "sample_weights": balanced_weights(targets) if balanced else None,
    }


def step_autocast(device: torch.device, amp: bool | str):
    """The training forward's autocast: ``'bf16'`` runs bfloat16 on CPU and CUDA; ``True``
    is CUDA's mixed precision (:func:`~nctune.taps.autocast`), nothing elsewhere."""
    if amp == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return autocast(device, bool(amp) and device.type == "cuda")


def inverse_frequency(targets: Any, num_classes: int) -> torch.Tensor:
    """``train.class_weights: auto``: w_k = N / (K · n_k) (0 for a class with no sample).

    With these weights Σ_i w_{y_i} = N over the training split, so the weighted loss keeps
    the scale of the unweighted one and every class contributes the same total weight.

    Args:
        targets: the training split's labels (N integers in ``0..K-1``).
        num_classes: K.

    Returns:
        A float32 tensor of K weights.
    """
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    w = torch.where(counts > 0, y.numel() / (num_classes * counts.clamp(min=1)), 0.0)
    return w.to(torch.float32)


def balanced_weights(targets: Any) -> torch.Tensor:
    """``data.balanced_sampler``: each sample's draw weight 1 / n_{y}, so every class is
    drawn equally often in expectation (``torch.utils.data.WeightedRandomSampler``'s rule)."""
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    counts = torch.bincount(y).to(torch.float64)
    return 1.0 / counts[y]


def kit_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    soft: torch.Tensor | None,
    weight: torch.Tensor | None,
    smoothing: float,
) -> torch.Tensor:
    """Σ over the batch's real samples of the (weighted, soft-target) cross-entropy.

    ℓ_i = −Σ_c w_c · t_ic · log softmax(z_i)_c, with t_i the mixed (and smoothed) soft
    target when mixup/cutmix is on, else the hard label (smoothed as
    ``F.cross_entropy(label_smoothing=…)``); w = 1 without class weights. Samples labelled
    as padding (−100, torchrun's stand-ins) count zero. The caller divides by the batch
    size, so with class weights the loss is the batch mean of w_{y_i}·CE_i (not divided by
    Σ w_{y_i}: the inverse-frequency weights average 1 over the split).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    keep = y != IGNORE
    if soft is None:
        k = logits.shape[1]
        soft = F.one_hot(y.clamp(min=0), k).to(logp.dtype)
        soft = soft * (1.0 - smoothing) + smoothing / k
    if weight is not None:
        soft = soft * weight.to(soft.device)
    per_sample = -(soft * logp).sum(dim=1)
    return per_sample[keep].sum()


@dataclass
class BatchKit:
    """What happens to a training batch before its forward pass: timm's random erasing,
    then timm's mixup/cutmix (soft targets, with the recipe's label smoothing folded in).

    Attributes:
        num_classes: K.
        mixup, cutmix: timm's Beta(α, α) parameters (0: off); with both, one per batch.
        label_smoothing: folded into the mixed soft targets.
        random_erase: the probability that a sample gets a random rectangle of noise.
    """

    num_classes: int
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    random_erase: float = 0.0

    def __post_init__(self) -> None:
        self._mixer = self._eraser = None
        if self.mixup > 0 or self.cutmix > 0:
            from timm.data import Mixup

            self._mixer = Mixup(
                mixup_alpha=self.mixup,
                cutmix_alpha=self.cutmix,
                label_smoothing=self.label_smoothing,
                num_classes=self.num_classes,
            )
        if self.random_erase > 0:
            from timm.data.random_erasing import RandomErasing

            self._eraser = RandomErasing(self.random_erase, mode="pixel", device="cpu")

    @property
    def active(self) -> bool:
        """Whether a batch changes (the frozen prefix then differs every step)."""
        return self._mixer is not None or self._eraser is not None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, y)`` → (the changed batch, its soft targets or None without mixing).

        timm mixes a batch with its reverse and needs an even length: an odd batch's last
        sample stays unmixed (its target the smoothed one-hot label).
        """
        if not self.active:
            return x, None
        x = x.clone()
        with torch_seeded():
            if self._eraser is not None:
                self._eraser.device = x.device
                x = self._eraser(x)
            if self._mixer is None:
                return x, None
            yy = y.to(x.device).clamp(min=0)
            k, s = self.num_classes, self.label_smoothing
            soft = F.one_hot(yy, k).float() * (1.0 - s) + s / k
            even = x.shape[0] - x.shape[0] % 2
            if even:
                x[:even], soft[:even] = self._mixer(x[:even], yy[:even])
        return x, soft


def layer_scales(model: nn.Module, block_names: list[str], decay: float | None) -> dict[int, float]:
    """``train.layer_decay``: each parameter's learning-rate factor, by depth.

    With L blocks (``block_names``, shallow → deep), a parameter of block i (1..L) trains
    at ``decay^(L + 1 − i)``; parameters before the first block (the stem) at
    ``decay^(L + 1)``, those between two blocks (a downsampling) at the shallower one's,
    and those after the last (final norm, heads) at 1 — timm's
    ``param_groups_layer_decay`` over nctune's block order. A parameter belongs to the
    deepest block whose module path appears in its name.

    Returns:
        ``{id(parameter): factor}`` ({} when ``decay`` is None).
    """
    if decay is None:
        return {}
    n = len(block_names)
    depth = 0
    scales: dict[int, float] = {}
    for name, p in model.named_parameters():
        dotted = f".{name}."
        hits = [i + 1 for i, b in enumerate(block_names) if f".{b}." in dotted]
        if hits:
            depth = max(hits)
            layer = depth
        else:  # between blocks: the last one's; before any: the stem; after all: the top
            layer = n + 1 if depth == n else depth
        scales[id(p)] = decay ** (n + 1 - layer)
    return scales


def make_ema(model: nn.Module, decay: float | None, saved: dict | None = None) -> Any:
    """timm's ``ModelEmaV3`` of ``model`` (None when ``decay`` is None: EMA off), holding
    ``saved`` (a resumed checkpoint's averaged weights) when given, else ``model``'s.

    After every optimizer step θ_ema ← decay·θ_ema + (1 − decay)·θ (buffers too).
    """
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay)
    if saved:
        ema.module.load_state_dict(saved)
    return ema


@contextlib.contextmanager
def weights_of(model: nn.Module, ema: Any) -> Iterator[None]:
    """Run the block with ``ema``'s averaged weights loaded into ``model`` (nothing without
    EMA), and put the trained weights back after — so validation, whatever its batch source
    (the prefix cache calls the live model), sees the averaged model."""
    if ema is None:
        yield
        return
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        model.load_state_dict(raw)
