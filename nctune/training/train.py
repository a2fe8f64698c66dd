"""The training loop: readable top to bottom (nanoGPT-style), with the why in comments.

One call, :func:`fit`, trains an :class:`~nctune.training.strategies.AppliedStrategy`:

* AdamW or SGD, linear warm-up then cosine decay, per step;
* autocast + gradient scaling on CUDA, plain float32 on CPU/MPS;
* per epoch: training loss and accuracy, validation accuracy, and NC1 of the features
  the head sees, accumulated from the training pass itself (no second pass);
* a checkpoint after every epoch, written atomically; a stop request (SIGINT/SIGTERM
  in the CLI) finishes the current step and saves a mid-epoch checkpoint; ``resume``
  continues from either and ends with the same numbers as an uninterrupted run;
* the frozen prefix computed once and cached when the data sees no augmentation;
* the kit (:mod:`~nctune.training.kit`): gradient accumulation, class weights, mixup/cutmix
  and random erasing, EMA of the weights, layer-wise lr decay, balanced sampling, bf16
  autocast on CPU — each off by default, and then the step is exactly the plain one.

Where a run stands lives in :class:`~nctune.training.state.TrainState` (saved, restored,
finished); who watches it is one :class:`~nctune.training.callbacks.Callback`.
"""

from __future__ import annotations

import math
import time
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
from nctune.taps import amp_dtype
from nctune.training import kit
from nctune.training.batches import ImageBatches, Step, try_cache
from nctune.training.callbacks import Callback, CallbackList
from nctune.training.checkpoint import CHECKPOINT, load_checkpoint, set_rng_state
from nctune.training.clock import SessionClock
from nctune.training.evaluation import EpochStats, evaluate, safe_nc1
from nctune.training.optim import lr_at, make_optimizer, no_weight_decay_ids
from nctune.training.phases import Phase, restores_torch_flags, run_phases
from nctune.training.prefix_cache import CacheInfo
from nctune.training.state import EpochSums, TrainResult, TrainState
from nctune.training.strategies import AppliedStrategy

__all__ = ["EpochStats", "TrainResult", "TrainState", "evaluate", "fit", "safe_nc1"]


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
    batch_kit: kit.BatchKit | None = None
    class_weight: torch.Tensor | None = None
    sample_weights: torch.Tensor | None = None

    @property
    def amp(self) -> bool:
        return bool(self.cfg.amp) and self.device.type == "cuda"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.batch_size)

    @property
    def updates_per_epoch(self) -> int:
        """Optimizer steps an epoch: one per ``train.accumulate_steps`` batches."""
        return math.ceil(self.steps_per_epoch / self.cfg.accumulate_steps)

    def stop_requested(self) -> bool:
        """A stop request on any rank (every rank polls at the same points)."""
        return dist.any_rank(self.callbacks.should_stop)


@dataclass
class _PhaseRun:
    """A phase, set up: its parameters, schedule, batch sources and DDP wrapper."""

    phase: Phase
    params: list[nn.Parameter]
    base_lr: float
    total_steps: int
    warmup: int
    source: Any
    val_source: Any
    ddp: nn.Module | None
    caches: list = field(default_factory=list)


@restores_torch_flags
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
    random_erase: float = 0.0,
    balanced_sampler: bool = False,
    clock: SessionClock | None = None,
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
        random_erase: ``data.random_erase``, applied to each training batch (timm).
        balanced_sampler: ``data.balanced_sampler``: draw samples with weights
            1/(class size) (``train_set.targets``), with replacement, from the epoch's seed.
        clock: the run's clock, started by the caller (None: from this call); a resumed
            run continues the time and sessions its checkpoint recorded.

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
    clock = clock or SessionClock()
    clock.fit_start = start
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
        **kit.run_extras(cfg, train_set, num_classes, random_erase, balanced_sampler),
    )
    caches: list = []
    try:
        state = _setup(applied, run, resume, clock)
        run.callbacks.on_fit_start(state)
        for phase in run_phases(applied, cfg.epochs, probe_epochs, full_lr_scale):
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


def _setup(applied: AppliedStrategy, run: _Run, resume: bool, clock: SessionClock) -> TrainState:
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
    fp16 = run.amp and cfg.amp != "bf16" and amp_dtype() == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    state = TrainState(applied, model, device, scaler, clock=clock)
    state.cache = CacheInfo(
        False, reason="train.cache_prefix is off" if cfg.cache_prefix == "off" else ""
    )
    if run.sources is not None:  # the caller's cache, even when a resume has nothing to train
        state.cache = run.sources[2]
    ckpt = load_checkpoint(run.run_dir) if (resume and run.run_dir) else None
    if ckpt is not None:
        state.restore(
            ckpt, run.run_dir / CHECKPOINT, epochs=cfg.epochs, steps_per_epoch=run.steps_per_epoch
        )
    state.ema = kit.make_ema(model, cfg.ema_decay if cfg.ema else None, ckpt and ckpt.ema)
    return state


def _start_phase(run: _Run, state: TrainState, phase: Phase) -> _PhaseRun:
    """A fresh optimizer (the checkpoint's, when it was saved in this phase), the schedule,
    the batch sources (the frozen prefix cached when possible) and, under torchrun, DDP."""
    cfg = run.cfg
    if phase.name == "full" and state.applied.phase != "full":
        state.applied.start_full_phase()
    base_lr = cfg.lr * phase.lr_scale
    params = state.applied.parameters()
    scales = kit.layer_scales(state.model, run.block_names, cfg.layer_decay)
    state.optimizer = make_optimizer(
        params, cfg, base_lr, no_weight_decay_ids(state.model), lr_scales=scales
    )
    state.restore_optimizer(phase.name)

    # The frozen prefix is the same every epoch when nothing random touches the input,
    # so compute it once: later epochs then cost only the trainable suffix.
    source = ImageBatches(run.train_set, run.batch_size, run.device, run.seed, run.num_workers)
    val_shard = dist.shard_dataset(run.val_set) if run.val_set is not None else None
    val_source = None if val_shard is None else ImageBatches(val_shard, run.batch_size, run.device)
    caches = []
    if cfg.cache_prefix != "off" and run.augment:
        state.cache = CacheInfo(False, reason="data.augment is on: the prefix differs every epoch")
    elif cfg.cache_prefix != "off" and run.batch_kit is not None:  # None unless it changes batches
        state.cache = CacheInfo(False, reason=kit.NO_CACHE)
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
    source.weights = run.sample_weights  # data.balanced_sampler (None: a permutation)
    ups = run.updates_per_epoch  # the schedule counts optimizer steps
    return _PhaseRun(
        phase,
        params,
        base_lr,
        # Each phase warms up: lp-ft's full phase starts from a trained head but from
        # untouched backbone statistics, and a cold start at full rate would undo the probe.
        total_steps=(phase.end - phase.start) * ups,
        warmup=round(cfg.warmup_epochs * ups),
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
        with kit.weights_of(state.model, state.ema):  # EMA: validate the averaged weights
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
            # a stop waits for the accumulated group's update (gradients are not saved)
            if (
                state.step % run.cfg.accumulate_steps == 0
                and run.stop_requested()
                and state.step < spe
            ):
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
    """One batch on ``(x, y)``, booked into ``sums``: its gradient added, and an optimizer
    step when it ends a group of ``train.accumulate_steps`` batches (or the epoch).

    Returns:
        ``(its learning rate, its loss)``.
    """
    cfg, optimizer, k = run.cfg, state.optimizer, run.cfg.accumulate_steps
    update = (state.epoch - ph.phase.start) * run.updates_per_epoch + state.step // k
    lr = lr_at(update, ph.total_steps, ph.warmup, cfg, ph.base_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # train.layer_decay's factor
    y = torch.as_tensor(y).to(run.device, non_blocking=True)
    # this batch's share of its group's samples: k batches of b weigh as one batch of k·b
    first, n = state.step // k * k * run.batch_size, len(run.train_set)
    count = min(run.batch_size, n - state.step * run.batch_size)
    share = count / (min(n, first + k * run.batch_size) - first)
    soft = None
    if run.batch_kit is not None:  # erasing, mixup/cutmix (None when both are off)
        x, soft = run.batch_kit(torch.as_tensor(x).to(run.device), y)
    plain = soft is None and run.class_weight is None
    with kit.step_autocast(run.device, cfg.amp):
        logits, feats = ph.source.forward(state.model, x) if ph.ddp is None else ph.ddp(x)
        if plain:  # the plain loss; under torchrun this rank's sum (stand-ins ignored)
            red = "mean" if ph.ddp is None else "sum"
            ce = F.cross_entropy(
                logits.float(), y, label_smoothing=cfg.label_smoothing, reduction=red
            )
        else:
            ce = kit.kit_loss(logits, y, soft, run.class_weight, cfg.label_smoothing)
            ce = ce / count if ph.ddp is None else ce
        # DDP averages over W ranks: Σ_rank ce·W/B / W = the batch mean
        loss = ce if ph.ddp is None else ce * (run.world / count)
    # Under torchrun: before DDP's gradient all-reduce, agree that no rank failed fetching
    # its batch or in its forward pass (a corrupt image, out of memory); a failed rank
    # sends its error here instead of hanging.
    dist.check()
    if state.step % k == 0:
        optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss if k == 1 else loss * share).backward()
    if (state.step + 1) % k == 0 or state.step + 1 == run.steps_per_epoch:
        state.update(ph.params, run.cfg.grad_clip, run.run_dir, lr)  # then the EMA
    # Book-keeping from this same forward pass: no extra pass for NC1.
    value = float(ce.detach())
    if not math.isfinite(value):  # diverged: stop before anything is saved
        raise state.diverged(run.run_dir, f"the loss is {value}")
    sums.add(logits, feats, y, value, distributed=ph.ddp is not None)
    return lr, value
