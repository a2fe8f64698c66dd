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
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nctune import distributed as dist
from nctune.collapse import CollapseStats
from nctune.config import TrainConfig
from nctune.errors import (
    ArtifactError,
    CollapseError,
    ConfigError,
    Interrupted,
    TrainingError,
    one_line,
)
from nctune.taps import amp_dtype, autocast
from nctune.training.batches import IGNORE, CachedBatches, ImageBatches, Step, try_cache
from nctune.training.checkpoint import (
    CHECKPOINT,
    checkpoint_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from nctune.training.optim import lr_at, make_optimizer, no_weight_decay_ids
from nctune.training.prefix_cache import CacheInfo
from nctune.training.strategies import AppliedStrategy

#: ``progress(phase, done, total, info)`` — the CLI draws it; the library never prints.
ProgressFn = Callable[..., None]


@dataclass
class EpochStats:
    """One epoch of training.

    Attributes:
        epoch: the epoch number, counted from 1 over all phases.
        phase: ``'main'``, or lp-ft's ``'probe'`` / ``'full'``.
        loss: mean training cross-entropy (label smoothing included) over the epoch.
        accuracy: training top-1 accuracy, from the training forward passes.
        val_accuracy: validation top-1 accuracy after the epoch (None without a val set).
        nc1: NC1 of the head's input over the epoch's training passes (None when not
            tracked or undefined).
        lr: the learning rate of the epoch's last step.
        seconds: wall time of the epoch, validation included.
    """

    epoch: int
    phase: str
    loss: float
    accuracy: float
    val_accuracy: float | None
    nc1: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        history: one :class:`EpochStats` per finished epoch (resumed runs included).
        best_epoch: the kept epoch (from 1): the best validation accuracy (the earliest
            on ties), or the last epoch without a val set; -1 when no epoch finished.
        best_val_accuracy: that epoch's validation accuracy (None without a val set).
        stopped_early: early stopping ended the run.
        interrupted: a stop request ended the run; the model then holds the weights of
            the moment it stopped, not the best epoch's.
        seconds: wall time of this call.
        cache: whether the frozen-prefix cache was used, and why not.
    """

    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float | None
    stopped_early: bool
    interrupted: bool
    seconds: float
    cache: CacheInfo = field(default_factory=lambda: CacheInfo(False, reason="not attempted"))

    def history_dicts(self) -> list[dict[str, Any]]:
        """The history as plain dicts (``report.json``'s ``history``).

        Returns:
            One dict of :class:`EpochStats` fields per epoch.
        """
        return [asdict(h) for h in self.history]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    device: torch.device,
    num_classes: int | None = None,
    amp: bool = True,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressFn | None = None,
    phase: str = "evaluate",
) -> tuple[float, CollapseStats | None]:
    """Top-1 accuracy of ``model`` in eval mode, and (with ``num_classes``) the statistics of
    the features its head sees.

    Args:
        model: a :class:`~nctune.training.strategies.TunedModel` (or PEFT wrapper of one).
        data: a DataLoader / iterable of ``(images, labels)``, or a batch source of the trainer.
        device: where the model runs.
        num_classes: K for the head-input :class:`~nctune.collapse.CollapseStats`.
        amp: autocast on CUDA (as in training; a cached source must match its cache).
        should_stop: polled after every batch; True raises :class:`~nctune.errors.Interrupted`.
        progress, phase: ``progress(phase, done, total)`` after every batch.

    Returns:
        ``(accuracy, statistics or None)``; the accuracy is NaN when ``data`` is empty.
        The model's train/eval mode is restored. Under ``torch.distributed`` ``data`` is this
        process's shard: counts and statistics are summed over the processes, so every
        process returns the union's accuracy and statistics.
    """
    source = data if hasattr(data, "attached") else ImageBatches(data, 0, device)
    was = model.training
    model.eval()
    stats = CollapseStats(num_classes) if num_classes else None
    correct = seen = 0
    total = _num_batches(source)
    if progress:
        progress(phase, 0, total)
    try:
        with source.attached():
            for i, (x, y) in enumerate(source.batches()):
                y = torch.as_tensor(y).to(device)
                with autocast(device, amp):
                    logits, feats = source.forward(model, x)
                correct += int((logits.argmax(1) == y).sum())
                seen += int(y.numel())
                if stats is not None:
                    stats.update(feats.float(), y)
                if progress:
                    progress(phase, i + 1, total)
                if should_stop is not None and should_stop():
                    raise Interrupted("stopped during an evaluation pass")
    finally:
        model.train(was)
    correct, seen = dist.all_reduce_sum(correct, seen)
    return (correct / seen if seen else float("nan")), dist.reduce_stats(stats)


def _num_batches(source) -> int | None:
    """How many batches ``source.batches()`` yields, when that is known (for progress)."""
    if isinstance(source, CachedBatches):
        return math.ceil(len(source.cache) / source.batch_size)
    data = source.data
    if isinstance(data, Dataset) and source.batch_size:
        return math.ceil(len(data) / source.batch_size)
    return len(data) if hasattr(data, "__len__") and not isinstance(data, Dataset) else None


def _phases(
    applied: AppliedStrategy, epochs: int, probe_epochs: int | None, full_lr_scale: float
) -> list[tuple[str, int, float]]:
    """(name, epochs, lr factor) per phase. lp-ft probes first, then tunes everything gently."""
    if applied.strategy != "lp-ft":
        return [("main", epochs, 1.0)]
    probe = probe_epochs or max(1, epochs // 2)
    if probe >= epochs:
        return [("probe", epochs, 1.0)]
    return [("probe", probe, 1.0), ("full", epochs - probe, full_lr_scale)]


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
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressFn | None = None,
    on_epoch_end: Callable[[list[EpochStats]], None] | None = None,
    shared_cache_dir: str | Path | None = None,
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
        probe_epochs, full_lr_scale: lp-ft phases.
        should_stop: polled after every step and after every epoch; when it returns True
            the loop saves a checkpoint when ``run_dir`` is set (mid-epoch when steps
            remain, else the epoch's own) and returns with ``interrupted=True``, without
            restoring the best epoch's weights.
        progress: ``progress(phase, done, total, info=...)`` callback.
        on_epoch_end: called with the history (resumed epochs included) after every
            finished epoch and its checkpoint; metric loggers, progress displays and a
            search's pruning hang here. Whatever it raises (e.g. a prune signal) ends the
            run and propagates, the caches closed first.
        shared_cache_dir: keep the frozen-prefix cache in this folder, keyed by its
            content, so later runs on the same prefix and data read it instead of
            recomputing it (see :meth:`~nctune.training.prefix_cache.PrefixCache.build`).

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
    start_time = time.perf_counter()
    device = torch.device(device)
    model, tuned = applied.model, applied.tuned
    run_dir = Path(run_dir) if run_dir is not None else None
    torch.manual_seed(seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    model.to(device)
    world = dist.world_size()
    if world > 1 and cfg.sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError(
                "train.sync_batchnorm: SyncBatchNorm runs on CUDA only; set it false on CPU"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the root
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    use_amp = cfg.amp and device.type == "cuda"
    # float16 autocast needs loss scaling against underflow; bfloat16 does not.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype() == torch.float16)

    phases = _phases(applied, cfg.epochs, probe_epochs, full_lr_scale)
    ckpt = load_checkpoint(run_dir) if (resume and run_dir) else None
    history: list[EpochStats] = []
    best = {"acc": None, "epoch": -1, "state": None, "bad": 0}
    epoch0, step0 = 0, 0
    if ckpt is not None:
        epoch0, step0 = ckpt["epoch"], ckpt["step"]
        if ckpt["phase"] == "full" and applied.phase != "full":
            applied.start_full_phase()
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as err:  # weights of another architecture or strategy
            first = one_line(str(err), 160)
            raise ArtifactError(
                f"{run_dir / CHECKPOINT}: its weights do not fit this run's model ({first}); start a new run"
            ) from None
        history = [EpochStats(**h) for h in ckpt["history"]]
        best = {
            "acc": ckpt["best_acc"],
            "epoch": ckpt["best_epoch"],
            "state": ckpt["best_state"],
            "bad": ckpt["bad_epochs"],
        }

    def save(epoch: int, step: int, partial: dict | None) -> None:
        if run_dir is not None and dist.is_main():  # every rank holds the same state
            save_checkpoint(
                run_dir / CHECKPOINT,
                checkpoint_state(
                    epoch, step, applied, model, optimizer, scaler, history, best, device, partial
                ),
            )

    def finish(interrupted: bool) -> TrainResult:
        for c in caches:  # a disk cache must not outlive the run (idempotent)
            c.close()
        best_acc = best["acc"] if val_set is not None else None
        return TrainResult(
            history,
            best["epoch"],
            best_acc,
            stopped_early,
            interrupted,
            time.perf_counter() - start_time,
            cache_info,
        )

    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    epoch, stopped_early, interrupted = epoch0, False, False
    optimizer = None
    caches: list[CachedBatches] = []
    cache_info = CacheInfo(
        False, reason="train.cache_prefix is off" if cfg.cache_prefix == "off" else ""
    )
    phase_start = 0
    for phase_name, phase_epochs, lr_scale in phases:
        phase_end = phase_start + phase_epochs
        if epoch >= phase_end:
            phase_start = phase_end
            continue
        if phase_name == "full" and applied.phase != "full":
            applied.start_full_phase()
        base_lr = cfg.lr * lr_scale
        params = applied.parameters()
        optimizer = make_optimizer(params, cfg, base_lr, no_weight_decay_ids(model))
        total_steps = phase_epochs * steps_per_epoch
        # Each phase warms up: lp-ft's full phase starts from a trained head but from
        # untouched backbone statistics, and a cold start at full rate would undo the probe.
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        if ckpt is not None and ckpt["phase"] == phase_name:
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])

        # The frozen prefix is the same every epoch when nothing random touches the
        # input, so compute it once: later epochs then cost only the trainable suffix.
        source = ImageBatches(train_set, batch_size, device, seed, num_workers)
        val_shard = dist.shard_dataset(val_set) if val_set is not None else None
        val_source = ImageBatches(val_shard, batch_size, device) if val_set is not None else None
        if cfg.cache_prefix != "off":
            if augment:
                cache_info = CacheInfo(
                    False, reason="data.augment is on: the prefix differs every epoch"
                )
            else:
                cached, cached_val, cache_info = try_cache(
                    tuned,
                    block_names,
                    train_set,
                    val_shard,
                    cfg,
                    batch_size,
                    seed,
                    device,
                    run_dir,
                    progress,
                    use_amp,
                    shared_cache_dir,
                    should_stop,
                )
                source = cached or source
                val_source = cached_val or val_source
                caches += [c for c in (cached, cached_val) if c is not None]

        # Under torchrun: DDP over the trainable parameters, around a module that runs this
        # phase's source's forward (cached or not), so every step's gradients are averaged.
        ddp = None  # the last phase's wrapper lets go of its gradient hooks first
        ddp = dist.wrap_ddp(Step(model, source), device) if world > 1 else None
        for epoch in range(
            max(epoch0 if ckpt is not None else phase_start, phase_start), phase_end
        ):
            t0 = time.perf_counter()
            start_batch = step0 if (ckpt is not None and epoch == epoch0) else 0
            loss_sum, correct, seen = 0.0, 0, 0
            stats = CollapseStats(num_classes) if cfg.track_collapse else None
            if start_batch and ckpt is not None and dist.is_main():  # global sums: once
                loss_sum, correct, seen = (
                    ckpt["partial"]["loss_sum"],
                    ckpt["partial"]["correct"],
                    ckpt["partial"]["seen"],
                )
                if stats is not None and ckpt["partial"]["stats"] is not None:
                    stats.load_state_dict(ckpt["partial"]["stats"])
            if ckpt is not None and epoch == epoch0:
                set_rng_state(ckpt["rng"], device)
            model.train()
            if progress:
                progress(f"epoch {epoch + 1}/{cfg.epochs}", start_batch, steps_per_epoch)
            step = start_batch
            with source.attached():
                for x, y in source.batches(epoch, start_batch):
                    global_step = (epoch - phase_start) * steps_per_epoch + step
                    lr = lr_at(global_step, total_steps, warmup, cfg, base_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    y = torch.as_tensor(y).to(device, non_blocking=True)
                    with autocast(device, use_amp):
                        if ddp is None:
                            logits, feats = source.forward(model, x)
                            loss = F.cross_entropy(
                                logits.float(), y, label_smoothing=cfg.label_smoothing
                            )
                        else:
                            logits, feats = ddp(x)
                            ce = F.cross_entropy(
                                logits.float(),
                                y,
                                label_smoothing=cfg.label_smoothing,
                                reduction="sum",
                                ignore_index=IGNORE,
                            )
                            # DDP averages over W ranks: Σ_rank ce·W/B / W = the batch mean
                            count = min(batch_size, len(train_set) - step * batch_size)
                            loss = ce * (world / count)
                    # Under torchrun: before DDP's gradient all-reduce, agree that no rank
                    # failed fetching its batch or in its forward pass (a corrupt image, out
                    # of memory); a failed rank sends its error here instead of hanging.
                    dist.check()
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    try:
                        scaler.step(optimizer)
                    except RuntimeError as err:  # lr · update beyond float32 (lr=1e300)
                        if "overflow" not in str(err):
                            raise
                        raise _diverged(
                            epoch, step, f"the step with lr {lr:g} overflows", run_dir, history
                        ) from None
                    scaler.update()
                    # Book-keeping from this same forward pass: no extra pass for NC1.
                    value = float((ce if ddp is not None else loss).detach())
                    if not math.isfinite(value):  # diverged: stop before anything is saved
                        raise _diverged(epoch, step, f"the loss is {value}", run_dir, history)
                    if ddp is not None:  # this rank's samples, without stand-ins
                        keep = y != IGNORE
                        b = int(keep.sum())
                        loss_sum += value
                        logits, feats, y = logits[keep], feats[keep], y[keep]
                    else:
                        b = y.numel()
                        loss_sum += value * b
                    correct += int((logits.detach().argmax(1) == y).sum())
                    seen += b
                    if stats is not None and b:
                        stats.update(feats.detach().float(), y)
                    step += 1
                    if progress:
                        progress(
                            f"epoch {epoch + 1}/{cfg.epochs}",
                            step,
                            steps_per_epoch,
                            info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.1%}",
                        )
                    if dist.any_rank(should_stop) and step < steps_per_epoch:
                        interrupted = True
                        break
            if world > 1:  # the shards' sums → the global ones, on every rank
                loss_sum, correct, seen = dist.all_reduce_sum(loss_sum, correct, seen)
                correct, seen = int(correct), int(seen)
                stats = dist.reduce_stats(stats)
                dist.broadcast_buffers(model)  # BatchNorm running statistics: rank 0's
            _check_finite_weights(model, epoch, step, run_dir, history)  # never save NaN weights
            if interrupted:  # a stop request mid-epoch: save exactly where we are
                partial = {
                    "loss_sum": loss_sum,
                    "correct": correct,
                    "seen": seen,
                    "stats": stats.state_dict() if stats else None,
                }
                save(epoch, step, partial)
                return finish(interrupted=True)

            val_acc = (
                evaluate(
                    model,
                    val_source,
                    device,
                    amp=use_amp,
                    progress=progress,
                    phase=f"epoch {epoch + 1}/{cfg.epochs} validation",
                )[0]
                if val_source is not None
                else None
            )
            history.append(
                EpochStats(
                    epoch + 1,
                    phase_name,
                    loss_sum / max(seen, 1),
                    correct / max(seen, 1),
                    val_acc,
                    safe_nc1(stats),
                    lr,
                    time.perf_counter() - t0,
                )
            )

            # Keep the best validation epoch; without validation, the last one.
            if val_acc is None or best["acc"] is None or val_acc > best["acc"]:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = {"acc": val_acc, "epoch": epoch + 1, "state": state, "bad": 0}
            else:
                best["bad"] += 1
            ckpt, step0 = None, 0
            save(epoch + 1, 0, None)
            if on_epoch_end is not None:
                try:
                    on_epoch_end(history)
                except BaseException:
                    finish(interrupted=True)  # closes the caches
                    raise
            if dist.any_rank(should_stop) and epoch + 1 < cfg.epochs:
                return finish(interrupted=True)
            if cfg.early_stopping and val_set is not None and best["bad"] >= cfg.early_stopping:
                stopped_early = True
                break
        for c in caches:  # the next phase (lp-ft) trains the prefix too: no cache
            c.close()
        if stopped_early:
            break
        phase_start = phase_end
        epoch = phase_end

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return finish(interrupted=False)


def _diverged(epoch: int, step: int, what: str, run_dir: Path | None, history) -> TrainingError:
    """The one-line error for a run whose loss or weights stopped being finite."""
    kept = ""
    if run_dir is not None and (run_dir / CHECKPOINT).is_file():
        kept = (
            f"; the last good checkpoint (epoch {len(history)}) is kept in {run_dir / CHECKPOINT}"
        )
    return TrainingError(
        f"train: diverged at epoch {epoch + 1}, step {step + 1}: {what}; "
        f"lower train.lr or enable train.grad_clip{kept}"
    )


def _check_finite_weights(
    model: nn.Module, epoch: int, step: int, run_dir: Path | None, history
) -> None:
    """Raise :class:`TrainingError` when a parameter holds NaN/Inf (the last step's update
    can break the weights after a still-finite loss), so they are never saved."""
    for name, p in model.named_parameters():
        if p.requires_grad and not bool(torch.isfinite(p.detach()).all()):
            raise _diverged(
                epoch, max(step - 1, 0), f"weight {name} is not finite", run_dir, history
            )


def safe_nc1(stats: CollapseStats | None) -> float | None:
    """NC1 of ``stats``, or None when it is undefined (no samples, one class present).

    Args:
        stats: accumulated collapse statistics, or None (not tracked).

    Returns:
        The NC1 value, or None; the statistics' warnings are silenced.
    """
    if stats is None or stats.num_samples == 0:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return stats.compute().nc1
    except CollapseError:
        return None
