"""Recipe → collapse profile → layer selection → strategy → training → :class:`RunResult`.

The library half of ``nctune finetune``: it returns a dataclass and writes nothing but
checkpoints (when given a run folder); :meth:`nctune.runs.folder.RunFolder.commit` writes the
report, the weights and the plot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from nctune.analyze import profile_recipe
from nctune.auto import choose_lr, plan_auto, probes
from nctune.backbones import Backbone, create_backbone
from nctune.data import DataSplits, build_data, resolve_input_config
from nctune.data.sources.hf import refuse_streaming
from nctune.distributed import is_main
from nctune.passes import (
    HeadInputs,
    RunContext,
    head_cut,
    measure_after_training,
    nc1_before,
    prefix_sources,
)
from nctune.profile import CollapseProfile
from nctune.taps import resolve_device
from nctune.training.callbacks import Callback, CallbackList
from nctune.training.clock import SessionClock
from nctune.training.loggers import epoch_loggers
from nctune.training.mlflow import check_tracking
from nctune.training.strategies import (
    STRATEGY_REGISTRY,
    AppliedStrategy,
    apply_strategy,
    lora_targets,
)
from nctune.training.train import TrainResult, fit

if TYPE_CHECKING:
    from nctune.config import Recipe


@dataclass
class RunResult:
    """Everything a fine-tuning run measured (``report.json`` is :meth:`to_dict`).

    Attributes:
        strategy: the strategy that trained (``auto`` resolves to ``scl``).
        tuned_layers: backbone blocks whose weights trained (``["*"]``: all).
        trainable_params, total_params: parameter counts (the largest phase for lp-ft).
        val_accuracy: best validation accuracy (None without a validation split).
        test_accuracy: accuracy of the kept weights on the test split (None without one).
        nc1_before, nc1_after: NC1 of the features the head sees, on the training split,
            in eval mode, before and after training.
        wall_seconds: training time (prefix caching, epochs, validation), summed over the
            sessions of a resumed run.
        history: per epoch: loss, accuracy, val_accuracy, nc1 (head input, from the
            training pass), lr, seconds.
        layers: per block: NC1 and NCC accuracy before and after training; blocks before
            the first tuned one keep their profile figures (``remeasured: false``).
        probe: ``auto``'s collapse probe — every probed block's figures, the winner and
            why (None when no probe ran).
        lr_finder: the learning-rate range test that set ``train.lr`` (None: not run).
        after_cached: the after-training pass ran from the prefix cache (suffix only).
        total_seconds, cpu_seconds: the whole run's wall and process CPU time, summed over
            its sessions.
        sessions: how many sessions the run took (1 + the resumes).
    """

    strategy: str
    tuned_layers: list[str]
    trainable_params: int
    total_params: int
    val_accuracy: float | None
    test_accuracy: float | None
    nc1_before: float | None
    nc1_after: float | None
    wall_seconds: float
    history: list[dict[str, Any]]
    selection: dict[str, Any] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    train_accuracy: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    dataset: str | None = None
    classes: list[str] = field(default_factory=list)
    device: str = "cpu"
    total_seconds: float = 0.0
    profile_seconds: float = 0.0
    probe: dict[str, Any] | None = None
    lr_finder: dict[str, Any] | None = None
    after_cached: bool = False
    cpu_seconds: float = 0.0
    sessions: int = 1
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` document (DESIGN §4 keys plus context)."""
        keys = [
            "strategy",
            "tuned_layers",
            "trainable_params",
            "total_params",
            "val_accuracy",
            "test_accuracy",
            "nc1_before",
            "nc1_after",
            "wall_seconds",
            "history",
            "selection",
            "layers",
            "train_accuracy",
            "best_epoch",
            "stopped_early",
            "cache",
            "backbone",
            "dataset",
            "classes",
            "device",
            "total_seconds",
            "profile_seconds",
            "probe",
            "lr_finder",
            "after_cached",
            "cpu_seconds",
            "sessions",
        ]
        out = {k: getattr(self, k) for k in keys}
        out["trainable_percent"] = 100.0 * self.trainable_params / max(1, self.total_params)
        return out


def _profile(
    backbone,
    plain: DataSplits,
    recipe: Recipe,
    device,
    progress,
    phase: str,
    should_stop=None,
    *,
    features=None,
) -> CollapseProfile:
    """:func:`~nctune.analyze.profile_recipe`, its progress labelled with ``phase``."""
    labelled = (lambda p, d, t: progress(f"{phase}: {p}", d, t)) if progress else None
    return profile_recipe(
        backbone, plain, recipe, device, labelled, features=features, should_stop=should_stop
    )


class Prepared(NamedTuple):
    """What :func:`prepare` builds for a recipe (a tuple, so ``a, b, c, d = prepare(r)`` works).

    Attributes:
        backbone: the recipe's :class:`~nctune.backbones.Backbone`.
        splits: the data as training sees it (augmented when the recipe says so).
        plain: the same data without augmentation (profiles, caches, NC1).
        device: where the run computes.
    """

    backbone: Backbone
    splits: DataSplits
    plain: DataSplits
    device: torch.device


def prepare(recipe: Recipe) -> Prepared:
    """Backbone, data (and an un-augmented view of it) and device for a recipe.

    Everything that can fail on bad input fails here, before a run folder exists.
    """
    check_tracking(recipe.train)  # an unreachable train.mlflow is refused before any output
    refuse_streaming(recipe.data)  # training reads in shuffled order: a stream cannot
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    backbone = create_backbone(recipe.backbone)
    splits = build_data(recipe.data, backbone.input_config, seed=recipe.seed)
    plain = splits
    if recipe.data.augment:  # measurements and caches need the un-augmented images
        plain = build_data(
            recipe.data.model_copy(update={"augment": False}),
            backbone.input_config,
            seed=recipe.seed,
        )
    # Names in the strategy must exist before any run folder is created.
    if recipe.strategy.layers:
        backbone.resolve_layers(recipe.strategy.layers, field="strategy.layers")
    if STRATEGY_REGISTRY.get(recipe.strategy.name).adapters and recipe.strategy.lora_targets:
        lora_targets(backbone.model, None, recipe.strategy.lora_targets)
    return Prepared(backbone, splits, plain, device)


def finetune(
    recipe: Recipe,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Callback | list[Callback] | None = None,
    prepared: Prepared | None = None,
    profile: CollapseProfile | None = None,
    shared_cache_dir: str | Path | None = None,
) -> RunResult:
    """Fine-tune the recipe's backbone with its strategy and measure collapse around it.

    Steps: build backbone and data → profile every block's NC1 on the training split (and
    NCC accuracy on validation) → select blocks (``strategy.rule``) when the strategy needs
    them → :func:`~nctune.training.strategies.apply_strategy` → :func:`~nctune.training.train.fit` → keep the
    best validation epoch → test accuracy, NC1 after training, per-block profile after.

    Args:
        recipe: a validated :class:`~nctune.config.Recipe`.
        run_dir: folder for checkpoints (``checkpoint.pt``); None trains without them.
        resume: continue from ``run_dir``'s checkpoint.
        callbacks: one :class:`~nctune.training.callbacks.Callback` or a list (see
            :func:`~nctune.training.train.fit`). ``should_stop`` is polled after each step;
            True saves a checkpoint and returns early with ``interrupted=True``. In the
            passes before training (profile, head NC1, prefix cache) and after it, it
            raises :class:`~nctune.errors.Interrupted` between batches instead; the run
            folder then holds no partial state. ``on_progress`` sees every pass but the
            head-NC1 ones; ``on_epoch_end`` gets the history after every epoch, after
            ``metrics.csv`` (and TensorBoard with ``train.tensorboard``) with a ``run_dir``.
        prepared: the result of :func:`prepare` when the caller already built it.
        profile: the pretrained backbone's profile on this data when the caller already
            measured it (a search measures it once for all its trials).
        shared_cache_dir: the prefix-cache folder a search's trials share (see
            :func:`~nctune.training.train.fit`).

    Returns:
        A :class:`RunResult`; ``result.model`` is the fine-tuned model in eval mode.
    """
    start = time.perf_counter()
    clock = SessionClock(start=start)  # a resumed run continues its checkpoint's time
    cb = CallbackList.of(callbacks)
    backbone, splits, plain, device = prepared or prepare(recipe)
    s, t, k = recipe.strategy, recipe.train, splits.num_classes
    before, head_inputs = profile, None
    t_profile = time.perf_counter()
    if before is None and (s.needs_profile() or t.profile_after):
        head_inputs = HeadInputs(t.cache_max_mb) if head_cut(recipe) else None
        before = _profile(
            backbone,
            plain,
            recipe,
            device,
            cb.on_progress,
            "profile",
            cb.should_stop,
            features=head_inputs,
        )
    profile_seconds = time.perf_counter() - t_profile
    plan = None
    if probes(recipe, before):
        plan = plan_auto(
            recipe,
            backbone,
            plain.train,
            plain.val,
            before,
            num_classes=k,
            device=device,
            run_dir=Path(run_dir) if run_dir is not None else None,
            resume=resume,
        )
    applied = _apply(recipe, backbone, k, before, [plan.block] if plan else None)
    if plan is not None and plan.winner_state is not None:  # continue from the probe
        applied.tuned.load_state_dict(plan.winner_state, strict=False)
    # Saved with the weights: the config the data pipeline resolved (data.image_size may
    # override the backbone's default), so a reloaded model preprocesses like val/test.
    applied.tuned.set_input_config(resolve_input_config(backbone.input_config, recipe.data))
    applied.model.to(device)
    ctx = RunContext(recipe, backbone, splits, plain, device, cb)
    t_cache = time.perf_counter()
    if head_inputs is not None:
        ctx.sources = head_inputs.sources(ctx, applied)
    if ctx.sources is None:
        ctx.sources = prefix_sources(ctx, applied, run_dir, shared_cache_dir)
    sources, cache_seconds = ctx.sources, time.perf_counter() - t_cache
    clock.extra_train = cache_seconds
    try:
        if plan is not None:
            if s.lr_finder and sources is not None and sources[0] is not None:
                choose_lr(plan, applied.model, sources[0], recipe, device)
            if run_dir is not None and is_main():
                plan.save(Path(run_dir))
            if plan.lr is not None:
                t = t.model_copy(update={"lr": plan.lr})
        nc1_first = nc1_before(ctx, applied, before, plan)
        # rank 0 alone writes the run folder's logs (every rank has the same history), and
        # before the caller's hooks see the epoch
        loggers = epoch_loggers(run_dir if is_main() else None, t.tensorboard)
        result = fit(
            applied,
            splits.train,
            splits.val,
            t,
            num_classes=k,
            batch_size=recipe.data.batch_size,
            block_names=backbone.block_names,
            num_workers=recipe.data.num_workers,
            seed=recipe.seed,
            device=device,
            augment=recipe.data.augment,
            run_dir=run_dir,
            resume=resume,
            probe_epochs=s.probe_epochs,
            full_lr_scale=s.full_lr_scale,
            callbacks=CallbackList([*loggers, cb]),
            shared_cache_dir=shared_cache_dir,
            sources=sources,
            random_erase=recipe.data.random_erase,
            balanced_sampler=recipe.data.balanced_sampler,
            clock=clock,
        )
        run = _run_result(applied, result, backbone, splits, device)
        run.nc1_before, run.profile_seconds = nc1_first, profile_seconds
        # training time includes building its cache, and the earlier sessions' training
        run.wall_seconds += cache_seconds + clock.prior_train
        if plan is not None:
            run.probe, run.lr_finder = plan.probe, plan.lr_finder
            run.selection = plan.selection(s.selection_rule()[0])
        if not result.interrupted:
            measure_after_training(ctx, run, applied, before)
    finally:
        for c in (sources or (None, None))[:2]:
            if c is not None:
                c.close()
    run.total_seconds, run.cpu_seconds = clock.total_seconds(), clock.cpu_seconds()
    run.sessions = clock.sessions
    return run


def _apply(
    recipe: Recipe,
    backbone: Backbone,
    num_classes: int,
    profile: CollapseProfile | None,
    layers: list[str] | None = None,
) -> AppliedStrategy:
    """The recipe's strategy on ``backbone``: on ``layers`` (the probe's choice), else the
    recipe's blocks, else those the rule chooses from ``profile``."""
    s = recipe.strategy
    rule, rule_params = s.selection_rule()
    torch.manual_seed(recipe.seed)  # the head's initialisation depends on the seed alone
    return apply_strategy(
        backbone,
        s.name,
        num_classes,
        layers=layers or s.layers,
        profile=profile,
        rule=rule,
        rule_params=rule_params,
        token_pool=recipe.analysis.token_pool,
        head_dropout=s.head_dropout,
        lora_rank=s.lora_rank,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        lora_target_patterns=s.lora_targets,
    )


def _run_result(
    applied: AppliedStrategy, result: TrainResult, backbone: Backbone, splits: DataSplits, device
) -> RunResult:
    """What training decided, as the report's fields (the measurements after it come later)."""
    return RunResult(
        strategy=applied.strategy,
        tuned_layers=applied.tuned_layers,
        trainable_params=applied.trainable_params,
        total_params=applied.total_params,
        val_accuracy=result.best_val_accuracy,
        test_accuracy=None,
        nc1_before=None,
        nc1_after=None,
        wall_seconds=result.seconds,
        history=result.history_dicts(),
        selection=applied.selection.to_dict() if applied.selection else None,
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        interrupted=result.interrupted,
        cache=result.cache.to_dict(),
        backbone=backbone.spec,
        dataset=splits.source,
        classes=list(splits.classes),
        device=str(device),
    )
