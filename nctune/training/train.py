"""The training loop: readable top to bottom (nanoGPT-style), with the why in comments.

One call, :func:`fit`, trains an :class:`~nctune.training.strategies.AppliedStrategy`:

* AdamW or SGD, linear warm-up then cosine decay, per step;
* autocast + gradient scaling on CUDA, plain float32 on CPU/MPS;
* per epoch: training loss and accuracy, validation accuracy, and NC1 of the features
  the head sees, accumulated from the training pass itself (no second pass);
* a checkpoint after every epoch, written atomically; a stop request (SIGINT/SIGTERM
  in the CLI) finishes the current step and saves a mid-epoch checkpoint; ``resume``
  continues from either and ends with the same numbers as an uninterrupted run;
* the frozen prefix computed once and cached when the data sees no augmentation.

Where a run stands lives in :class:`~nctune.training.state.TrainState` (saved, restored,
finished); who watches it is one :class:`~nctune.training.callbacks.Callback`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nctune import distributed as dist
from nctune.config import TrainConfig
from nctune.errors import ConfigError
from nctune.taps import amp_dtype, autocast
from nctune.training.batches import IGNORE, ImageBatches, Step, try_cache
from nctune.training.callbacks import Callback, CallbackList
from nctune.training.checkpoint import CHECKPOINT, load_checkpoint, set_rng_state
from nctune.training.evaluation import EpochStats, evaluate, safe_nc1
from nctune.training.optim import lr_at, make_optimizer, no_weight_decay_ids
from nctune.training.prefix_cache import CacheInfo
from nctune.training.state import EpochSums, TrainResult, TrainState
from nctune.training.strategies import STRATEGY_REGISTRY, AppliedStrategy

__all__ = ["EpochStats", "TrainResult", "TrainState", "evaluate", "fit", "safe_nc1"]


@dataclass(frozen=True)
class _Phase:
    """A stretch of epochs with one optimizer: ``[start, end)``, counted from 0 over all."""

    name: str
    start: int
    end: int
    lr_scale: float


def _phases(
    applied: AppliedStrategy, epochs: int, probe_epochs: int | None, full_lr_scale: float
) -> list[_Phase]:
    """The run's phases. A probe-first strategy (lp-ft) probes, then tunes everything gently."""
    if not STRATEGY_REGISTRY.get(applied.strategy).probe_first:
        return [_Phase("main", 0, epochs, 1.0)]
    probe = probe_epochs or max(1, epochs // 2)
    if probe >= epochs:
        return [_Phase("probe", 0, epochs, 1.0)]
    return [_Phase("probe", 0, probe, 1.0), _Phase("full", probe, epochs, full_lr_scale)]


@dataclass(frozen=True)
class _Run:
    """What stays fixed for the whole call: the recipe's train section, data and options."""

    cfg: TrainConfig
    train_set: Dataset
    val_set: Dataset | None
    num_classes: int
    batch_size: int
    block_names: list[str]
    num_workers: int
    seed: int
    device: torch.device
    augment: bool
    run_dir: Path | None
    shared_cache_dir: Path | None
    callbacks: CallbackList
    sources: tuple | None = None
    world: int = field(default_factory=dist.world_size)

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.batch_size)

    def stop_requested(self) -> bool:
        """A stop request on any rank (every rank polls at the same points)."""
        return dist.any_rank(self.callbacks.should_stop)


@dataclass
class _PhaseRun:
    """A phase, set up: its parameters, schedule, batch sources and DDP wrapper."""

    phase: _Phase
    params: list[nn.Parameter]
    base_lr: float
    total_steps: int
    warmup: int
    source: Any
    val_source: Any
    ddp: nn.Module | None
    caches: list = field(default_factory=list)


def _restores_torch_flags(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Undo ``fit``'s process-wide determinism switches when it returns (or raises): a
    library call must not leave the user's own training code deterministic-and-slower."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> TrainResult:
        saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
        )
        try:
            return fn(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            torch.backends.cudnn.benchmark = saved[2]

    return wrapper


@_restores_torch_flags
def fit(
    applied: AppliedStrategy,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: TrainConfig,
    *,
    num_classes: int,
    batch_size: int,
    block_names: list[str],
    num_workers: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    augment: bool = False,
    run_dir: str | Path | None = None,
    resume: bool = False,
    probe_epochs: int | None = None,
    full_lr_scale: float = 0.1,
    callbacks: Callback | list[Callback] | None = None,
    shared_cache_dir: str | Path | None = None,
    sources: tuple | None = None,
) -> TrainResult:
    """Train ``applied.model`` on ``train_set``; keep the weights of the best validation epoch.

    Seeds torch with ``seed`` first. Determinism switches (``cfg.deterministic``) are
    restored to their previous values when the call returns or raises.

    Args:
        applied: the strategy's model (from :func:`~nctune.training.strategies.apply_strategy`).
        train_set, val_set: datasets of ``(image, label)``; ``val_set`` may be None, in which
            case the last epoch is kept.
        cfg: the ``train`` section of the recipe.
        num_classes: K.
        batch_size: per-step batch size — the *global* batch: under ``torch.distributed``
            each step trains on the same batch as one process would, split among the
            processes (each takes the samples of its shard), with gradients averaged by
            DDP and the loss weighted so the step's gradient is the global batch mean. The
            learning rate is never rescaled.
        block_names: the backbone's blocks, shallow → deep (where the prefix may be cut).
        num_workers: DataLoader workers for the uncached path.
        seed: seeds initial state, order and dropout.
        device: where to train.
        augment: whether ``train_set`` applies random augmentation (disables the cache).
        run_dir: where checkpoints go (None: no checkpoints).
        resume: continue from ``run_dir``'s checkpoint (a fresh start when there is none).
        probe_epochs, full_lr_scale: the phases of a probe-first strategy (lp-ft).
        callbacks: one :class:`~nctune.training.callbacks.Callback` or a list. Its
            ``should_stop`` is polled after every step and after every epoch; when it
            returns True the loop saves a checkpoint when ``run_dir`` is set (mid-epoch
            when steps remain, else the epoch's own) and returns with ``interrupted=True``,
            without restoring the best epoch's weights. ``on_epoch_end(history)`` comes
            after every finished epoch and its checkpoint (metric loggers, progress
            displays and a search's pruning hang there); whatever a hook raises (e.g. a
            prune signal) ends the run and propagates, the caches closed first.
            ``on_progress`` follows every pass; ``teardown`` comes last, also on errors.
        shared_cache_dir: keep the frozen-prefix cache in this folder, keyed by its
            content, so later runs on the same prefix and data read it instead of
            recomputing it (see :meth:`~nctune.training.prefix_cache.PrefixCache.build`).
        sources: the first phase's ``(cached train, cached val, info)`` from
            :func:`~nctune.training.batches.try_cache`, built by the caller (who measures
            from the same cache before and after training, and closes it); None: ``fit``
            caches the prefix itself.

    Returns:
        The per-epoch history and how the run ended.

    Under ``torch.distributed`` (see docs/scaling.md): DistributedDataParallel over the
    trainable parameters only; the prefix cache holds this process's shard; losses,
    accuracies and the tracked NC1 are summed over the processes, so every process returns
    the same history; rank 0 alone writes checkpoints, which hold nothing that depends on
    the number of processes (a run resumes on any number).

    Raises:
        ArtifactError: the checkpoint to resume from is unreadable or of another format,
            or a checkpoint cannot be written.
        ConfigError: ``cfg.sync_batchnorm`` under torch.distributed off CUDA.
        TrainingError: the loss or a weight became NaN/Inf, or an update overflowed
            (diverged: the last good checkpoint is kept, nothing non-finite is saved).
    """
    start = time.perf_counter()
    run = _Run(
        cfg=cfg,
        train_set=train_set,
        val_set=val_set,
        num_classes=num_classes,
        batch_size=batch_size,
        block_names=block_names,
        num_workers=num_workers,
        seed=seed,
        device=torch.device(device),
        augment=augment,
        run_dir=Path(run_dir) if run_dir is not None else None,
        shared_cache_dir=Path(shared_cache_dir) if shared_cache_dir is not None else None,
        callbacks=CallbackList.of(callbacks),
        sources=sources,
    )
    caches: list = []
    try:
        state = _setup(applied, run, resume)
        run.callbacks.on_fit_start(state)
        for phase in _phases(applied, cfg.epochs, probe_epochs, full_lr_scale):
            if state.epoch >= phase.end:  # finished before the resumed checkpoint
                continue
            ph = None  # the last phase's DDP wrapper lets go of its gradient hooks first
            ph = _start_phase(run, state, phase)
            caches += ph.caches
            for epoch in range(max(state.epoch, phase.start), phase.end):
                if not _epoch(run, state, ph, epoch):  # a stop request
                    return state.finish(
                        interrupted=True, has_val=val_set is not None, seconds=_since(start)
                    )
                if state.stopped_early:
                    break
            for c in ph.caches:  # the next phase (lp-ft) trains the prefix too: no cache
                c.close()
            if state.stopped_early:
                break
        return state.finish(interrupted=False, has_val=val_set is not None, seconds=_since(start))
    finally:
        for c in caches:  # a disk cache must not outlive the run (closing is idempotent)
            c.close()
        run.callbacks.teardown()


def _since(start: float) -> float:
    return time.perf_counter() - start


def _setup(applied: AppliedStrategy, run: _Run, resume: bool) -> TrainState:
    """Seed, set the determinism switches, place the model, and restore a checkpoint."""
    cfg, device = run.cfg, run.device
    torch.manual_seed(run.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    model = applied.model
    model.to(device)
    if run.world > 1 and cfg.sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError(
                "train.sync_batchnorm: SyncBatchNorm runs on CUDA only; set it false on CPU"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the root
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    # float16 autocast needs loss scaling against underflow; bfloat16 does not.
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp and amp_dtype() == torch.float16)
    state = TrainState(applied, model, device, scaler)
    state.cache = CacheInfo(
        False, reason="train.cache_prefix is off" if cfg.cache_prefix == "off" else ""
    )
    ckpt = load_checkpoint(run.run_dir) if (resume and run.run_dir) else None
    if ckpt is not None:
        state.restore(
            ckpt, run.run_dir / CHECKPOINT, epochs=cfg.epochs, steps_per_epoch=run.steps_per_epoch
        )
    return state


def _start_phase(run: _Run, state: TrainState, phase: _Phase) -> _PhaseRun:
    """A fresh optimizer (the checkpoint's, when it was saved in this phase), the schedule,
    the batch sources (the frozen prefix cached when possible) and, under torchrun, DDP."""
    cfg, spe = run.cfg, run.steps_per_epoch
    if phase.name == "full" and state.applied.phase != "full":
        state.applied.start_full_phase()
    base_lr = cfg.lr * phase.lr_scale
    params = state.applied.parameters()
    state.optimizer = make_optimizer(params, cfg, base_lr, no_weight_decay_ids(state.model))
    state.restore_optimizer(phase.name)

    # The frozen prefix is the same every epoch when nothing random touches the input,
    # so compute it once: later epochs then cost only the trainable suffix.
    source = ImageBatches(run.train_set, run.batch_size, run.device, run.seed, run.num_workers)
    val_shard = dist.shard_dataset(run.val_set) if run.val_set is not None else None
    val_source = None if val_shard is None else ImageBatches(val_shard, run.batch_size, run.device)
    caches = []
    if cfg.cache_prefix != "off" and run.augment:
        state.cache = CacheInfo(False, reason="data.augment is on: the prefix differs every epoch")
    elif run.sources is not None and phase.start == 0:  # the caller's, closed by the caller
        cached, cached_val, state.cache = run.sources
        source, val_source = cached or source, cached_val or val_source
    elif cfg.cache_prefix != "off":
        cached, cached_val, state.cache = try_cache(
            state.applied.tuned,
            run.block_names,
            run.train_set,
            val_shard,
            cfg=cfg,
            batch_size=run.batch_size,
            seed=run.seed,
            device=run.device,
            amp=run.amp,
            run_dir=run.run_dir,
            shared_dir=run.shared_cache_dir,
            callbacks=run.callbacks,
        )
        source, val_source = cached or source, cached_val or val_source
        caches = [c for c in (cached, cached_val) if c is not None]
    # Under torchrun: DDP over the trainable parameters, around a module that runs this
    # phase's source's forward (cached or not), so every step's gradients are averaged.
    ddp = dist.wrap_ddp(Step(state.model, source), run.device) if run.world > 1 else None
    return _PhaseRun(
        phase,
        params,
        base_lr,
        # Each phase warms up: lp-ft's full phase starts from a trained head but from
        # untouched backbone statistics, and a cold start at full rate would undo the probe.
        total_steps=(phase.end - phase.start) * spe,
        warmup=round(cfg.warmup_epochs * spe),
        source=source,
        val_source=val_source,
        ddp=ddp,
        caches=caches,
    )


def _epoch(run: _Run, state: TrainState, ph: _PhaseRun, epoch: int) -> bool:
    """Train epoch ``epoch``, validate, keep the best, checkpoint, and tell the callbacks.

    Returns:
        False when a stop request ends the run here (its checkpoint saved).
    """
    t0 = time.perf_counter()
    sums, lr, stopped = _train_epoch(run, state, ph, epoch)
    if stopped:  # a stop request mid-epoch: save exactly where we are
        state.save(run.run_dir, partial=sums)
        return False
    label = f"epoch {epoch + 1}/{run.cfg.epochs}"
    val_acc = None
    if ph.val_source is not None:  # polls no stop request: ranks must agree, once per epoch
        val_acc = evaluate(
            state.model,
            ph.val_source,
            run.device,
            amp=run.amp,
            callbacks=run.callbacks,
            phase=f"{label} validation",
            stoppable=False,
        )[0]
    seen = max(sums.seen, 1)
    stats = EpochStats(
        epoch + 1,
        ph.phase.name,
        sums.loss_sum / seen,
        sums.correct / seen,
        val_acc,
        safe_nc1(sums.stats),
        lr,
        time.perf_counter() - t0,
    )
    state.end_epoch(stats, run.run_dir)  # history, best epoch, checkpoint
    run.callbacks.on_epoch_end(state.history)
    if run.stop_requested() and epoch + 1 < run.cfg.epochs:
        return False
    patience = run.cfg.early_stopping
    if patience and run.val_set is not None and state.best.bad_epochs >= patience:
        state.stopped_early = True
    return True


def _train_epoch(
    run: _Run, state: TrainState, ph: _PhaseRun, epoch: int
) -> tuple[EpochSums, float, bool]:
    """The epoch's training steps, from ``state.step`` on (a resumed epoch continues).

    Returns:
        ``(the epoch's sums, the last step's learning rate, stopped by a request)``.
    """
    state.epoch, resumed = epoch, state.resumed
    # a resumed mid-epoch run continues the epoch's global sums (rank 0 holds them once)
    partial = resumed.partial if resumed and state.step and dist.is_main() else None
    sums = EpochSums.start(run.num_classes, run.cfg.track_collapse, partial)
    if resumed is not None:
        set_rng_state(resumed.rng, run.device)
    state.model.train()
    label, spe = f"epoch {epoch + 1}/{run.cfg.epochs}", run.steps_per_epoch
    run.callbacks.on_epoch_start(state)
    run.callbacks.on_progress(label, state.step, spe)
    lr, stopped = float("nan"), False
    with ph.source.attached():
        for x, y in ph.source.batches(epoch, state.step):
            lr, loss = _step(run, state, ph, x, y, sums)
            state.step += 1
            run.callbacks.on_batch_end(state, loss)
            info = f"loss {sums.loss_sum / sums.seen:.3f} acc {sums.correct / sums.seen:.1%}"
            run.callbacks.on_progress(label, state.step, spe, info)
            if run.stop_requested() and state.step < spe:
                stopped = True
                break
    if run.world > 1:
        sums.all_reduce()
        dist.broadcast_buffers(state.model)  # BatchNorm running statistics: rank 0's
    state.check_finite(run.run_dir)  # never save NaN weights
    return sums, lr, stopped


def _step(
    run: _Run, state: TrainState, ph: _PhaseRun, x: Any, y: Any, sums: EpochSums
) -> tuple[float, float]:
    """One optimisation step on batch ``(x, y)``, booked into ``sums``.

    Returns:
        ``(its learning rate, its loss)``.
    """
    cfg, optimizer, scaler = run.cfg, state.optimizer, state.scaler
    global_step = (state.epoch - ph.phase.start) * run.steps_per_epoch + state.step
    lr = lr_at(global_step, ph.total_steps, ph.warmup, cfg, ph.base_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    y = torch.as_tensor(y).to(run.device, non_blocking=True)
    with autocast(run.device, run.amp):
        if ph.ddp is None:
            logits, feats = ph.source.forward(state.model, x)
            loss = ce = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        else:
            logits, feats = ph.ddp(x)
            ce = F.cross_entropy(
                logits.float(),
                y,
                label_smoothing=cfg.label_smoothing,
                reduction="sum",
                ignore_index=IGNORE,
            )
            # DDP averages over W ranks: Σ_rank ce·W/B / W = the batch mean
            count = min(run.batch_size, len(run.train_set) - state.step * run.batch_size)
            loss = ce * (run.world / count)
    # Under torchrun: before DDP's gradient all-reduce, agree that no rank failed fetching
    # its batch or in its forward pass (a corrupt image, out of memory); a failed rank
    # sends its error here instead of hanging.
    dist.check()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        torch.nn.utils.clip_grad_norm_(ph.params, cfg.grad_clip)
    try:
        scaler.step(optimizer)
    except RuntimeError as err:  # lr · update beyond float32 (lr=1e300)
        if "overflow" not in str(err):
            raise
        raise state.diverged(run.run_dir, f"the step with lr {lr:g} overflows") from None
    scaler.update()
    # Book-keeping from this same forward pass: no extra pass for NC1.
    value = float(ce.detach())
    if not math.isfinite(value):  # diverged: stop before anything is saved
        raise state.diverged(run.run_dir, f"the loss is {value}")
    sums.add(logits, feats, y, value, distributed=ph.ddp is not None)
    return lr, value
