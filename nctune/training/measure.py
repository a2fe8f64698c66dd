"""Collapse after training at the cost of what changed: one pass, the changed layers only.

A fine-tuned model's report compares every block's NC1 before and after training, and
the NC1 of the features the head sees. Blocks before the first tuned one are frozen:
their features cannot have changed, so their after-training figures are the profile's,
copied and marked as such, and nothing runs them again. Everything else — the tuned
blocks and those after them, the head's input and the training accuracy of the kept
weights — comes from one pass over the training split (and one over the validation
split for NCC accuracy), through :func:`~nctune.analyze.profile_taps`, the same code
path as every profile. Where the run cached its frozen prefix, that pass runs the suffix
only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nctune.analyze import profile_taps
from nctune.distributed import all_reduce_sum
from nctune.profile import PRE_LOGITS, CollapseProfile, LayerCollapse
from nctune.taps import TapSpec
from nctune.training.batches import CachedBatches
from nctune.training.callbacks import Callback, CallbackList
from nctune.training.evaluation import num_batches

#: Names of the two taps on the head: its input (the features the head sees) and its
#: output (logits, for the training accuracy).
HEAD_INPUT = "head input"
LOGITS = "logits"


@dataclass
class AfterTraining:
    """What one pass after training measured.

    Attributes:
        layers: re-measured layers by name (blocks from the first tuned one, and the
            pre-logits features when any block trained).
        nc1: NC1 of the head's input on the training split (None when undefined).
        accuracy: training accuracy of the kept weights, in eval mode.
        cached: whether the pass ran from the prefix cache (suffix only).
    """

    layers: dict[str, LayerCollapse]
    nc1: float | None
    accuracy: float
    cached: bool


class _Runner(nn.Module):
    """``module(x)`` for :func:`profile_taps`: the current source's forward of the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.source: Any = None

    def forward(self, x: torch.Tensor) -> Any:
        return self.source.forward(self.model, x)


class _Pass:
    """A batch source as a loader: its batches in order, its prefix stubs attached while
    they run (a cached train and val source stub the same modules: one at a time)."""

    def __init__(self, source: Any, runner: _Runner) -> None:
        self.source, self.runner = source, runner

    def __len__(self) -> int:
        return num_batches(self.source) or 0

    def __iter__(self):
        self.runner.source = self.source
        with self.source.attached():
            yield from self.source.batches()


def measure_after(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    blocks: list[tuple[str, str]],
    classifier: str | None,
    num_classes: int,
    token_pool: str = "cls",
    prefix_tokens: int = 0,
    device: torch.device | None = None,
    callbacks: Callback | list[Callback] | None = None,
) -> AfterTraining:
    """NC1 of ``blocks``, of the pre-logits features and of the head's input, and the
    training accuracy, in one pass over ``train`` (and NCC accuracy over ``val``).

    Args:
        model: the trained :class:`~nctune.training.heads.TunedModel`.
        train, val: batch sources (:class:`~nctune.training.batches.CachedBatches` of the
            run's prefix cache, or :class:`~nctune.training.batches.ImageBatches` of the
            un-augmented images); ``val`` may be None.
        blocks: ``(name, layout)`` of the backbone blocks to re-measure, shallow → deep;
            with a cached source, none before the cache's cut.
        classifier: the backbone's classifier path (its input is ``pre_logits``), or None
            to skip the pre-logits features.
        num_classes: K.
        token_pool, prefix_tokens: pooling of token maps, as in the profile.
        device: where the model runs.
        callbacks: ``on_progress`` for the passes, ``should_stop`` between batches.

    Returns:
        An :class:`AfterTraining`.
    """
    cb = CallbackList.of(callbacks)
    specs = [TapSpec(name, f"model.backbone.{name}", layout) for name, layout in blocks]
    if classifier is not None:
        specs.append(TapSpec(PRE_LOGITS, f"model.backbone.{classifier}", "NC", on_input=True))
    specs += [
        TapSpec(HEAD_INPUT, "model.head", "NC", on_input=True),
        TapSpec(LOGITS, "model.head", "NC"),
    ]
    runner = _Runner(model)
    counts = [0, 0]  # correct, seen: from the logits tap of the training pass

    def count(phase: str, name: str, feats: torch.Tensor, labels: torch.Tensor) -> None:
        if phase == "train" and name == LOGITS:
            counts[0] += int((feats.argmax(1) == labels).sum())
            counts[1] += int(labels.numel())

    profile: CollapseProfile = profile_taps(
        runner,
        specs,
        _Pass(train, runner),
        num_classes=num_classes,
        val_loader=_Pass(val, runner) if val is not None else None,
        prefix_tokens=prefix_tokens,
        token_pool=token_pool,
        device=device,
        progress=lambda phase, done, total: cb.on_progress(f"after training: {phase}", done, total),
        features=count,
        should_stop=cb.should_stop,
    )
    correct, seen = all_reduce_sum(*counts)  # under torchrun: every rank's shard
    measured = {layer.name: layer for layer in profile.layers}
    head = measured.pop(HEAD_INPUT)
    measured.pop(LOGITS)
    return AfterTraining(
        layers=measured,
        nc1=_finite_nc1(head),
        accuracy=correct / seen if seen else float("nan"),
        cached=isinstance(train, CachedBatches),
    )


def _finite_nc1(layer: LayerCollapse) -> float | None:
    """The layer's NC1, or None where it is undefined (the report's JSON is strict)."""
    return layer.nc1 if math.isfinite(layer.nc1) else None


def changed_blocks(block_names: list[str], tuned_layers: list[str]) -> list[str]:
    """The blocks whose features training can change: the first tuned block and every
    block after it (all of them for ``["*"]``; none when only the head trained).

    Args:
        block_names: the backbone's blocks, shallow → deep.
        tuned_layers: the run's tuned layers (block paths, modules inside blocks, or
            ``["*"]``).

    Returns:
        A suffix of ``block_names``.
    """
    if tuned_layers == ["*"]:
        return list(block_names)

    def inside(block: str, layer: str) -> bool:
        return layer == block or layer.startswith(block + ".") or block.startswith(layer + ".")

    hit = [i for i, b in enumerate(block_names) if any(inside(b, t) for t in tuned_layers)]
    return list(block_names[min(hit) :]) if hit else []


def layers_before_after(
    before: CollapseProfile, after: AfterTraining | None, tuned_layers: list[str]
) -> list[dict[str, Any]]:
    """``report.json``'s ``layers``: per profiled layer, NC1 and NCC accuracy before and
    after training; a layer training could not change keeps its profile figures
    (``remeasured: false``).

    Args:
        before: the profile before training.
        after: the pass after training (None: nothing re-measured).
        tuned_layers: the run's tuned layers.

    Returns:
        One dict per layer of ``before``.
    """
    out = []
    for b in before.layers:
        a = after.layers.get(b.name) if after is not None else None
        out.append(
            {
                "name": b.name,
                "dim": b.dim,
                "nc1_before": b.nc1,
                "nc1_after": (a or b).nc1,
                "ncc_before": b.ncc_accuracy,
                "ncc_after": (a or b).ncc_accuracy,
                "tuned": b.name in tuned_layers or tuned_layers == ["*"],
                "remeasured": a is not None,
            }
        )
    return out
