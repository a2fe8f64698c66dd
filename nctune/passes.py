"""Every pass a fine-tuning run makes over its data besides the epochs, made once.

:func:`~nctune.finetune.finetune` runs the collapse profile, then training, and measures
around it; what it measures comes from what it already computed wherever it can (issue 19,
"the report for free"):

* a head-only strategy's prefix cache is the profile pass's pre-logits features
  (:class:`HeadInputs`): one pass over the training images gives both;
* any other cache is built once (:func:`prefix_sources`) and read by the NC1 before
  training, every epoch and the pass after training;
* NC1 before training comes from the probe or the profile when they measured it
  (:func:`nc1_before`), else from one pass over the cache;
* after training, one pass re-measures only what training could change
  (:func:`measure_after_training`), from the cache while it is still the model's.

``tests/test_finetune_passes.py`` counts the passes over the training images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from nctune.backbones import Backbone
from nctune.data import DataSplits
from nctune.distributed import shard_dataset, world_size
from nctune.profile import PRE_LOGITS, CollapseProfile, LayerCollapse
from nctune.training.batches import CachedBatches, ImageBatches, try_cache
from nctune.training.callbacks import CallbackList, LambdaCallback
from nctune.training.measure import changed_blocks, layers_before_after, measure_after
from nctune.training.prefix_cache import PrefixCache, find_cut
from nctune.training.strategies import STRATEGY_REGISTRY, AppliedStrategy
from nctune.training.train import evaluate, safe_nc1

if TYPE_CHECKING:
    from nctune.config import Recipe


@dataclass
class RunContext:
    """What the steps of one :func:`finetune` call share."""

    recipe: Recipe
    backbone: Backbone
    splits: DataSplits
    plain: DataSplits
    device: torch.device
    callbacks: CallbackList
    sources: tuple | None = None  # the prefix cache's (train, val, info), when built here


class HeadInputs:
    """The profile pass's pre-logits features of every training and validation sample,
    kept when a head-only strategy trains from them: its prefix cache then costs no pass of
    its own (bounded by ``train.cache_max_mb``; past it, nothing is kept)."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes, self.nbytes = max_mb * 2**20, 0
        self.parts: dict[str, tuple[list, list]] | None = {"train": ([], []), "val": ([], [])}

    def __call__(self, phase: str, name: str, feats: torch.Tensor, labels: torch.Tensor) -> None:
        if name != PRE_LOGITS or self.parts is None or phase not in self.parts:
            return
        self.nbytes += feats.numel() * feats.element_size()
        if self.nbytes > self.max_bytes:
            self.parts = None  # too big to keep in memory: the cache is built as usual
            return
        self.parts[phase][0].append(feats.detach().cpu().clone())
        self.parts[phase][1].append(labels.detach().cpu().clone())

    def sources(self, ctx: RunContext, applied: AppliedStrategy) -> tuple | None:
        """``(train, val, info)`` as :func:`~nctune.training.batches.try_cache` gives them, or
        None when the profile did not see every sample of each split (a capped profile)."""
        splits, bs = ctx.splits, ctx.recipe.data.batch_size
        out = []
        for phase, data in (("train", splits.train), ("val", splits.val)):
            if data is None:
                out.append(None)
                continue
            feats, labels = self.parts[phase] if self.parts is not None else ([], [])
            if sum(len(y) for y in labels) != len(data):
                return None
            cache = PrefixCache.of_head_inputs(
                torch.cat(feats), torch.cat(labels), "the profile pass's pre-logits features"
            )
            out.append(CachedBatches(cache, applied.tuned, bs, ctx.device, ctx.recipe.seed))
        return out[0], out[1], out[0].cache.info


def head_cut(recipe: Recipe) -> bool:
    """Whether the run's (first phase's) cache is the pre-logits features the profile pass
    computes: a head-only or probe-first strategy, one process, no augmentation."""
    spec = STRATEGY_REGISTRY.get(recipe.strategy.name)
    return (
        (spec.head_only or spec.probe_first)
        and recipe.train.cache_prefix != "off"
        and not recipe.data.augment
        and world_size() == 1
    )


def prefix_sources(ctx: RunContext, applied: AppliedStrategy, run_dir, shared) -> tuple | None:
    """The run's frozen-prefix cache, built once here so the passes before training, the
    epochs and the pass after training all read it (None where ``fit`` decides alone:
    caching off, augmented data, or several processes, whose caches are shards)."""
    recipe, device = ctx.recipe, ctx.device
    t = recipe.train
    if t.cache_prefix == "off" or recipe.data.augment or world_size() > 1:
        return None
    return try_cache(
        applied.tuned,
        ctx.backbone.block_names,
        ctx.splits.train,
        ctx.splits.val,
        cfg=t,
        batch_size=recipe.data.batch_size,
        seed=recipe.seed,
        device=device,
        amp=t.amp and device.type == "cuda",
        run_dir=Path(run_dir) if run_dir is not None else None,
        shared_dir=Path(shared) if shared is not None else None,
        callbacks=ctx.callbacks,
    )


def nc1_before(ctx: RunContext, applied, before: CollapseProfile | None, plan) -> float | None:
    """NC1 of the head's input before training, from what was already measured when it can
    be: the probe measured the winner's; without a skip head the head sees the pre-logits
    features the profile measured (on the whole training split). Else one pass — over the
    prefix cache when there is one (the suffix only)."""
    recipe, plain, sources = ctx.recipe, ctx.plain, ctx.sources
    if plan is not None:
        return plan.nc1_before
    pre = _pre_logits(before)
    skip = STRATEGY_REGISTRY.get(recipe.strategy.name).skip
    if not skip and pre is not None and before.num_samples == len(plain.train):
        return pre.nc1 if math.isfinite(pre.nc1) else None
    source = (sources or (None,))[0] or ImageBatches(
        shard_dataset(plain.train), recipe.data.batch_size, ctx.device
    )
    stop = LambdaCallback(should_stop=ctx.callbacks.should_stop)  # no progress display
    _, stats = evaluate(
        applied.model, source, ctx.device, plain.num_classes, recipe.train.amp, callbacks=stop
    )
    return safe_nc1(stats)


def _pre_logits(profile: CollapseProfile | None) -> LayerCollapse | None:
    if profile is None:
        return None
    return next((layer for layer in profile.layers if layer.name == PRE_LOGITS), None)


def measure_after_training(ctx: RunContext, run: Any, applied, before) -> None:
    """The kept model's figures: head-input NC1 and training accuracy, the blocks training
    could change (:func:`~nctune.training.measure.measure_after`, one pass — the suffix
    only from the prefix cache), and the test accuracy."""
    recipe, backbone, plain, sources, device = (
        ctx.recipe,
        ctx.backbone,
        ctx.plain,
        ctx.sources,
        ctx.device,
    )
    t, bs = recipe.train, recipe.data.batch_size
    model = applied.export().eval()
    run.model = model
    profiled = {layer.name for layer in before.layers} if before is not None else set()
    changed = changed_blocks(backbone.block_names, applied.tuned_layers) if t.profile_after else []
    blocks = [
        (b.name, b.layout) for b in backbone.blocks() if b.name in changed and b.name in profiled
    ]
    # The cache holds the input of the first module that trained when it was built; it is
    # still the model's only while that is true (lp-ft's full phase trains the prefix too).
    cached = (
        sources is not None
        and sources[0] is not None
        and model is applied.tuned
        and find_cut(model, backbone.block_names) == sources[0].cache.cut
    )
    if cached:
        train, val = sources[0], sources[1]
    else:
        train = ImageBatches(shard_dataset(plain.train), bs, device)
        val = ImageBatches(shard_dataset(plain.val), bs, device) if plain.val is not None else None
    classifier = backbone.classifier_name if changed and PRE_LOGITS in profiled else None
    after = measure_after(
        model,
        train,
        val if blocks or classifier else None,  # NCC of re-measured layers only
        blocks=blocks,
        classifier=classifier,
        num_classes=plain.num_classes,
        token_pool=recipe.analysis.token_pool,
        prefix_tokens=backbone.num_prefix_tokens,
        device=device,
        callbacks=ctx.callbacks,
    )
    run.nc1_after, run.train_accuracy = after.nc1, after.accuracy
    run.after_cached = after.cached
    test = ctx.splits.test  # a search's trials have none: the best is tested after the search
    if test is not None:
        run.test_accuracy = evaluate(model, _loader(shard_dataset(test), bs), device, amp=t.amp)[0]
    if before is not None and t.profile_after:
        run.layers = layers_before_after(before, after, applied.tuned_layers)
    model.eval()


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)
