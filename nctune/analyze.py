"""One streaming pass over the downstream data → a layer-wise :class:`CollapseProfile`.

recipe ──► backbone + loaders ──► LayerTaps (pooled (B, D) per block)
       ──► CollapseStats per block ──► CollapseProfile (+ NCC accuracy on val)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nctune.backbones import Backbone, create_backbone
from nctune.backbones.blocks import resolve_layers
from nctune.collapse import (
    DEFAULT_MAX_FULL_DIM,
    CollapseStats,
    ncc_predict,
)
from nctune.data import DataSplits, build_data, make_loader, subsample
from nctune.distributed import all_reduce_sum, reduce_stats, shard_dataset
from nctune.errors import ConfigError, Interrupted
from nctune.profile import PRE_LOGITS, CollapseProfile, LayerCollapse
from nctune.selection import Selection, select_layers
from nctune.taps import (
    LayerTaps,
    TapSpec,
    TokenPool,
    autocast,
    eval_mode,
    resolve_device,
    to_device,
)

if TYPE_CHECKING:
    from nctune.config import Recipe


#: ``progress(phase, batches_done, batches_total_or_None)``: the CLI draws a bar from it.
ProgressFn = Callable[[str, int, int | None], None]

#: ``features(phase, layer, pooled (B, D), labels (B,))`` sees every tapped batch of the
#: ``"train"`` and ``"val"`` passes, in loader order (``nctune rank`` keeps a subsample).
FeatureFn = Callable[[str, str, torch.Tensor, torch.Tensor], None]

#: Pooled features wait in a buffer of about this many bytes (all layers together) before
#: they go into the statistics: a few larger float64 GEMMs between forward passes cost about
#: a third less than one per batch inside the hooks (the forward's and the statistics'
#: working sets stop evicting each other), and on CUDA the statistics' checks synchronise
#: once per flush, not once per layer and batch. Bounded, so memory still does not grow
#: with the number of samples.
FLUSH_BYTES = 8 << 20


class _Buffer:
    """Pooled features per layer, flushed into their CollapseStats in chunks."""

    def __init__(self, stats: dict[str, CollapseStats], limit: int | None = None) -> None:
        self.stats = stats
        self.limit = FLUSH_BYTES if limit is None else limit
        self.feats: dict[str, list[torch.Tensor]] = {name: [] for name in stats}
        self.labels: list[torch.Tensor] = []
        self.nbytes = 0

    def add(self, name: str, feats: torch.Tensor) -> None:
        self.feats[name].append(feats)
        self.nbytes += feats.numel() * feats.element_size()

    def end_batch(self, labels: torch.Tensor) -> None:
        self.labels.append(labels.clone())  # a loader may refill the same label tensor
        if self.nbytes >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.labels:
            return
        y = self.labels[0] if len(self.labels) == 1 else torch.cat(self.labels)
        for name, chunks in self.feats.items():
            if chunks:
                x = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
                chunks.clear()
                self.stats[name].update(x, y)
        self.labels.clear()
        self.nbytes = 0


def _tap_specs(
    model: Backbone | nn.Module, layers: list[str] | None, pre_logits: bool
) -> tuple[nn.Module, list[TapSpec], int]:
    """(module to run, taps, prefix tokens) for a Backbone or a plain module."""
    if isinstance(model, Backbone):
        names = model.resolve_layers(layers)
        layouts = {b.name: b.layout for b in model.blocks()}
        specs = [TapSpec(n, n, layouts.get(n, "auto")) for n in names]
        if pre_logits:
            specs.append(TapSpec(PRE_LOGITS, model.classifier_name, "NC", on_input=True))
        return model.model, specs, model.num_prefix_tokens
    names = resolve_layers(model, layers)
    # timm ViTs say num_prefix_tokens; torchvision's ViT has a class_token (as Backbone reads it)
    token = getattr(model, "cls_token", getattr(model, "class_token", None))
    prefix = int(getattr(model, "num_prefix_tokens", int(isinstance(token, torch.Tensor))))
    return model, [TapSpec(n, n, "auto") for n in names], prefix


class _NccScores:
    """A sink for the validation pass: nearest-class-centre hits per layer against the
    training class means; :meth:`accuracy` sums the shards' counts under torchrun."""

    def __init__(self, metrics: dict[str, Any], first: str, labels: list[torch.Tensor]) -> None:
        self.metrics, self.first, self.labels = metrics, first, labels
        self.correct: dict[str, Any] = dict.fromkeys(metrics, 0)
        self.seen = 0

    def __call__(self, name: str, feats: torch.Tensor) -> None:
        m, y = self.metrics[name], self.labels[0]
        pred = ncc_predict(feats, m.class_means, m.classes)
        # a tensor sum: no host sync per layer and batch on CUDA
        self.correct[name] += (pred == y.to(pred.device)).sum()
        if name == self.first:
            self.seen += int(y.numel())

    def accuracy(self) -> dict[str, float | None] | None:
        """Layer → accuracy on the validation samples of every process; None without any."""
        *hits, total = all_reduce_sum(*(int(c) for c in self.correct.values()), self.seen)
        if not total:
            return None
        return {name: hit / total for name, hit in zip(self.correct, hits, strict=True)}


def _num_classes(loader: Iterable, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    classes = getattr(getattr(loader, "dataset", None), "classes", None)
    if classes is None:
        raise ConfigError("analyze: pass num_classes= (the loader's dataset has no .classes)")
    return len(classes)


def analyze(
    model: Backbone | nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: list[str] | None = None,
    *,
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    num_classes: int | None = None,
    token_pool: TokenPool = "cls",
    include_pre_logits: bool = True,
    max_full_dim: int = DEFAULT_MAX_FULL_DIM,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    features: FeatureFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CollapseProfile:
    """Measure layer-wise neural collapse in one streaming pass over ``loader``.

    Each tapped layer's output is pooled to ``(B, D)`` and added to that layer's
    :class:`~nctune.collapse.CollapseStats` (in chunks of about :data:`FLUSH_BYTES`); no
    feature matrix is kept, memory is O(Σ_layers D² + KD) whatever the number of samples.
    The forward pass stops after the deepest tapped layer. With
    ``val_loader``, a second pass gives each layer's nearest-class-centre accuracy
    against the training class means. Layers wider than ``max_full_dim`` need one more
    pass over ``loader`` (the bounded-memory two-pass statistics).

    Under ``torch.distributed`` each process passes its own shard of the data (every sample
    in exactly one shard); the sums are added across processes after each pass
    (:func:`~nctune.collapse.all_reduce_stats`), so every process returns the profile of
    the union — the single-process numbers up to float64 rounding.

    Args:
        model: a :class:`~nctune.backbones.Backbone` or any ``nn.Module`` (its blocks are
            discovered with :func:`~nctune.backbones.list_blocks`). Run in eval mode under
            ``torch.inference_mode``; modes are restored afterwards.
        loader: iterable of ``(images, labels)`` training batches.
        layers: module paths or glob patterns to tap; default every block.
        val_loader: held-out batches for NCC accuracy.
        num_classes: K; default ``len(loader.dataset.classes)``.
        token_pool: ``"cls"`` or ``"mean"`` pooling for token maps.
        include_pre_logits: also tap the classifier's input (Backbone only).
        max_full_dim: widths above this use two-pass statistics.
        device: where to run; default the model's own device.
        progress: optional ``progress(phase, done, total)`` callback.
        features: optional :data:`FeatureFn` handed each layer's pooled batch of the
            first training pass and of the validation pass (copy what you keep).
        should_stop: polled after every batch; when it returns True the pass ends with
            :class:`~nctune.errors.Interrupted` (nothing is returned or kept).

    Returns:
        The profile, shallow → deep (``pre_logits`` last when tapped).

    Raises:
        Interrupted: ``should_stop`` asked to stop.
    """
    module, specs, prefix = _tap_specs(model, layers, include_pre_logits)
    return profile_taps(
        module,
        specs,
        loader,
        val_loader=val_loader,
        num_classes=_num_classes(loader, num_classes),
        prefix_tokens=prefix,
        token_pool=token_pool,
        max_full_dim=max_full_dim,
        device=device,
        progress=progress,
        features=features,
        should_stop=should_stop,
        backbone=getattr(model, "spec", None),
    )


def profile_taps(
    module: nn.Module,
    specs: list[TapSpec],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    prefix_tokens: int = 1,
    token_pool: TokenPool = "cls",
    max_full_dim: int = DEFAULT_MAX_FULL_DIM,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    features: FeatureFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    backbone: str | None = None,
) -> CollapseProfile:
    """:func:`analyze`'s pass over explicit taps: the one profiling code path.

    ``analyze`` (and so ``nctune analyze``, ``rank``, ``sweep``, ``tune`` and
    ``finetune``'s profile before training) and ``finetune``'s re-measurement after
    training (the tuned blocks and the head's input, from the prefix cache where there is
    one) all stream their features through here.

    Args:
        module: what runs: ``module(x)`` for every batch ``x`` of ``loader``.
        specs: the taps, shallow → deep; the forward stops after the deepest.
        loader, val_loader, num_classes, token_pool, max_full_dim, device, progress,
            features, should_stop: as in :func:`analyze`.
        prefix_tokens: class/register tokens at the front of token maps.
        backbone: the spec recorded in the profile.

    Returns:
        The profile of the tapped layers, in ``specs`` order.
    """
    start = time.perf_counter()
    k = num_classes
    prefix = prefix_tokens
    if device is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    module.to(device)
    stats = {s.name: CollapseStats(k, max_full_dim=max_full_dim) for s in specs}
    labels: list[torch.Tensor] = []  # the current batch's labels, read by the sink

    def run(phase: str, data: Iterable, taps: list[TapSpec], sink, buffer=None) -> None:
        total = len(data) if hasattr(data, "__len__") else None
        if progress:
            progress(phase, 0, total)
        if features is not None and phase in ("train", "val"):
            inner = sink

            def sink(name: str, feats: torch.Tensor) -> None:
                inner(name, feats)
                features(phase, name, feats, labels[0])

        with LayerTaps(module, taps, sink, token_pool=token_pool, prefix_tokens=prefix) as hooks:
            for i, (x, y) in enumerate(data):
                labels[:] = [torch.as_tensor(y).to(device)]
                with autocast(device):
                    hooks.forward(to_device(x, device))
                if buffer is not None:
                    buffer.end_batch(labels[0])
                if progress:
                    progress(phase, i + 1, total)
                if should_stop is not None and should_stop():
                    raise Interrupted(f"stopped during the {phase} pass of the collapse profile")
        if buffer is not None:
            buffer.flush()

    with eval_mode(module), torch.inference_mode():
        buffer = _Buffer(stats)
        run("train", loader, specs, buffer.add, buffer)
        for s in specs:  # the shards' sums → the union's (a no-op in one process)
            reduce_stats(stats[s.name])
        two_pass = [s for s in specs if stats[s.name].needs_another_pass]
        if two_pass:
            for s in two_pass:
                stats[s.name].next_pass()
            run("train (pass 2)", loader, two_pass, buffer.add, buffer)
            for s in two_pass:
                reduce_stats(stats[s.name])
        metrics = {name: st.compute() for name, st in stats.items()}
        ncc: dict[str, float | None] = dict.fromkeys(metrics)
        if val_loader is not None:
            scores = _NccScores(metrics, specs[0].name, labels)
            run("val", val_loader, specs, scores)
            ncc = scores.accuracy() or ncc
    layer_list = [
        LayerCollapse(
            i, s.name, metrics[s.name].dim, metrics[s.name], ncc[s.name], s.name != PRE_LOGITS
        )
        for i, s in enumerate(specs)
    ]
    first = metrics[specs[0].name]
    return CollapseProfile(
        layers=layer_list,
        num_samples=first.num_samples,
        num_classes=first.num_classes,
        seconds=time.perf_counter() - start,
        backbone=backbone,
    )


@dataclass
class Analysis:
    """What ``nctune analyze`` produces: the profile plus the context it was measured in."""

    profile: CollapseProfile
    recommendation: Selection
    backbone: Backbone = field(repr=False)
    data: DataSplits = field(repr=False)
    recipe: Recipe = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``analysis.json`` document (DESIGN §4)."""
        out = self.profile.to_dict()
        out["recommendation"] = self.recommendation.to_dict()
        return out


def profile_recipe(
    backbone: Any,
    splits: DataSplits,
    recipe: Recipe,
    device: torch.device,
    progress: ProgressFn | None = None,
    features: FeatureFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CollapseProfile:
    """The collapse profile every nctune command measures for a recipe.

    ``nctune analyze``, ``finetune``'s block selection and ``sweep`` all call this, so one
    recipe always yields one profile and one recommended block.

    Args:
        backbone: the recipe's :class:`~nctune.backbones.Backbone`.
        splits: its data built **without** augmentation (random augmentation would blur
            what is measured).
        recipe: supplies ``analysis.*`` (layers, token pooling, the two-pass width, the
            sample cap), the batch size, workers and the seed.
        device: where the backbone runs.
        progress: ``progress(phase, done, total)`` callback.
        features: see :func:`analyze`; the training batches are those of
            :func:`profiled_train` in order.
        should_stop: polled between batches (see :func:`analyze`).

    Returns:
        The profile: the training split, capped at ``analysis.max_samples`` by a seeded,
        stratified draw (a uniform one can miss a small class), and NCC accuracy on the
        validation split only — choosing a block on the test split would leak it into
        every accuracy reported later.
    """

    def loader(dataset):
        return make_loader(dataset, recipe.data, train=False, seed=recipe.seed, device=device)

    train = profiled_train(splits, recipe)
    # under torchrun each rank streams its own shard; analyze adds the shards' sums
    profile = analyze(
        backbone,
        loader(shard_dataset(train)),
        recipe.analysis.layers,
        val_loader=loader(shard_dataset(splits.val)) if splits.val is not None else None,
        num_classes=splits.num_classes,
        token_pool=recipe.analysis.token_pool,
        max_full_dim=recipe.analysis.max_full_dim,
        device=device,
        progress=progress,
        features=features,
        should_stop=should_stop,
    )
    profile.dataset = splits.source
    return profile


def profiled_train(splits: DataSplits, recipe: Recipe) -> Any:
    """The training samples :func:`profile_recipe` streams, in its order.

    Args:
        splits: the recipe's data.
        recipe: supplies ``analysis.max_samples`` and the seed.

    Returns:
        ``splits.train`` capped at ``analysis.max_samples`` (seeded, stratified).
    """
    return subsample(splits.train, recipe.analysis.max_samples, seed=recipe.seed)


def analyze_recipe(recipe: Recipe, progress: ProgressFn | None = None) -> Analysis:
    """Recipe → backbone, data, profile and a layer recommendation (what the CLI runs).

    Args:
        recipe: a validated recipe.
        progress: ``progress(phase, done, total)`` callback.

    Returns:
        The :class:`Analysis` (profile, recommendation, backbone, data, recipe).
    """
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    backbone = create_backbone(recipe.backbone)
    data_cfg = recipe.data.model_copy(update={"augment": False})
    splits = build_data(data_cfg, backbone.input_config, seed=recipe.seed)
    profile = profile_recipe(backbone, splits, recipe, device, progress)
    rule, params = recipe.strategy.selection_rule()
    return Analysis(profile, select_layers(profile, rule, **params), backbone, splits, recipe)
