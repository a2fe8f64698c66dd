"""The collapse probe: try the rule's best few blocks briefly, continue with the best one.

A selection rule reads the profile of the *pretrained* network; which block gains most
from tuning is only seen by tuning it. The probe trains each candidate block (SCL: the
block plus a skip head) for a few steps on the cached frozen prefix and keeps the one
whose head-input features collapse most on the training data — the lower NC1 after
fine-tuning, the better the test accuracy (Li et al., arXiv 2212.12206; our own layer
sweep: Spearman ρ(NC1 after, accuracy) = −0.86) — or, when the validation split is large
enough to rank them, the one with the best validation accuracy.

Cost: the prefix up to the *shallowest* candidate runs once over the training (and
validation) data; every candidate trains from that cache, the deeper ones running the
frozen blocks in between. The step budget is split evenly across the candidates and
never exceeded.

Wiring into ``finetune`` (``auto``)::

    blocks = rank_blocks(profile, rule, k=3)
    probe = probe_blocks(backbone, blocks, train_set, num_classes, budget_steps=60,
                         lr=cfg.train.lr, val_data=val_set, seed=seed)
    applied = apply_strategy(backbone, "scl", num_classes, layers=[probe.winner])
    applied.tuned.load_state_dict(probe.winner_state, strict=False)  # warm start (optional)
    report["probe"] = probe.to_dict()
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from nctune.training.batches import CachedBatches, ImageBatches
from nctune.training.prefix_cache import CacheInfo, PrefixCache, find_cut
from nctune.training.strategies import apply_strategy
from nctune.training.suffix import (
    dataset_of,
    measure,
    model_device,
    seeded,
    train_steps,
    trainable_state,
)
from nctune.training.warm_start import fit_linear_head

#: A validation split ranks the candidates when it holds at least this many samples per
#: class on average. With n = 20·K samples the standard error of an accuracy p is
#: √(p(1−p)/n) ≤ 1.6 points at K = 10, p = 0.85 — finer than the 2–5-point gaps between
#: blocks the probe exists to catch; below it one image moves the accuracy by more than
#: the gaps it should resolve (the search benchmark ranked 12 trials on 30 images, 3 per
#: class: three tied). Smaller splits rank by the head-input NC1 on the training data.
MIN_VAL_PER_CLASS = 20

#: Steps averaged into a candidate's ``train_loss`` (its last ones).
LOSS_TAIL = 5


def _finite(x: float | None) -> float | None:
    """``x``, or None for NaN/inf (the report's JSON is strict)."""
    return x if x is not None and math.isfinite(x) else None


@dataclass
class ProbeCandidate:
    """One probed block.

    Attributes:
        block: the block's module path.
        rank: its place in the rule's order (0: the rule's own pick).
        steps: optimizer steps it trained.
        seconds: wall time of its training and measurements (the shared cache excluded).
        lr: the learning rate it trained at.
        nc1_before: head-input NC1 on the training data before the probe (None: undefined).
        nc1_after: the same after the probe.
        val_accuracy: validation accuracy after the probe (None without a validation split).
        train_loss: mean training loss of its last steps (up to :data:`LOSS_TAIL`).
    """

    block: str
    rank: int
    steps: int
    seconds: float
    lr: float
    nc1_before: float | None
    nc1_after: float | None
    val_accuracy: float | None
    train_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        """The report's entry for this block."""
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class ProbeResult:
    """What the probe tried, what it chose and why.

    Attributes:
        candidates: every probed block, in the rule's order.
        winner: the chosen block.
        criterion: ``'val_accuracy'`` or ``'nc1_after'``: what decided.
        why: one sentence a report can print.
        budget_steps: the step budget it was given.
        steps: optimizer steps it took, all candidates together (≤ ``budget_steps``).
        seconds: wall time, cache included.
        cache: the frozen-prefix cache's :class:`~nctune.training.prefix_cache.CacheInfo`
            as a dict (``used`` False: the candidates trained on images).
        val_samples: size of the validation split (0 without one).
        seed: the seed it ran with.
        winner_state: the winner's trained block and head (``state_dict`` keys of the
            :class:`~nctune.training.strategies.TunedModel`) to continue from, or None.
    """

    candidates: list[ProbeCandidate]
    winner: str
    criterion: str
    why: str
    budget_steps: int
    steps: int
    seconds: float
    cache: dict[str, Any]
    val_samples: int
    seed: int
    winner_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def candidate(self, block: str) -> ProbeCandidate:
        """The entry of ``block``; KeyError when it was not probed."""
        for c in self.candidates:
            if c.block == block:
                return c
        raise KeyError(block)

    def to_dict(self) -> dict[str, Any]:
        """The ``probe`` entry of ``report.json`` (everything but ``winner_state``)."""
        return {
            "winner": self.winner,
            "criterion": self.criterion,
            "why": self.why,
            "budget_steps": self.budget_steps,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "val_samples": self.val_samples,
            "seed": self.seed,
            "cache": self.cache,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def _scl_model(backbone: Any, block: str, num_classes: int, options: dict) -> nn.Module:
    """A fresh SCL model on a copy of the backbone (the caller's stays untouched)."""
    applied = apply_strategy(copy.deepcopy(backbone), "scl", num_classes, layers=[block], **options)
    return applied.tuned


def _caches(model, block_names, train_ds, val_ds, batch_size, device, amp, max_mb):
    """The frozen prefix of the shallowest candidate, computed once for train and val."""
    cut = find_cut(model, block_names)
    if cut is None:
        return None, None, CacheInfo(False, reason="nothing frozen before the block")
    kw = dict(device=device, max_memory_mb=max_mb, max_disk_mb=0.0, prefer="memory", amp=amp)
    train, info = PrefixCache.build(
        model, cut, DataLoader(train_ds, batch_size=batch_size, shuffle=False), **kw
    )
    val = None
    if train is not None and val_ds is not None and len(val_ds):
        val, _ = PrefixCache.build(
            model, cut, DataLoader(val_ds, batch_size=batch_size, shuffle=False), **kw
        )
    return train, val, info


def _source(cache, data, model, batch_size, device, seed):
    if cache is not None:
        return CachedBatches(cache, model, batch_size, device, seed)
    return ImageBatches(data, batch_size, device, seed)


def _choose(
    candidates: list[ProbeCandidate], val_samples: int, num_classes: int
) -> tuple[ProbeCandidate, str, str]:
    """(winner, criterion, why): validation accuracy when the split can rank, else NC1."""
    nc1 = [c for c in candidates if c.nc1_after is not None]
    scored = [c for c in candidates if c.val_accuracy is not None]
    if val_samples >= MIN_VAL_PER_CLASS * num_classes and scored:
        best = max(c.val_accuracy for c in scored)
        se = max(math.sqrt(best * (1 - best) / val_samples), 1 / val_samples)
        close = [c for c in scored if c.val_accuracy >= best - se]
        by_nc1 = [c for c in close if c.nc1_after is not None]
        if len(close) > 1:
            w = min(by_nc1 or close, key=lambda c: (c.nc1_after or 0.0, c.rank))
            tie = (
                f"reached the lowest head-input NC1 of those ({w.nc1_after:.3g})"
                if by_nc1
                else "comes first in the rule's order"
            )
            why = (
                f"{w.block} is within one standard error ({se:.1%}) of the best validation "
                f"accuracy ({w.val_accuracy:.1%} vs {best:.1%} on {val_samples} samples) and {tie}"
            )
            return w, "val_accuracy", why
        w = close[0]
        others = ", ".join(f"{c.block} {c.val_accuracy:.1%}" for c in scored if c is not w)
        why = (
            f"{w.block} has the best validation accuracy ({w.val_accuracy:.1%} on "
            f"{val_samples} samples{'; ' + others if others else ''})"
        )
        return w, "val_accuracy", why
    if val_samples:
        note = (
            f"; the validation split ({val_samples} samples, {num_classes} classes) is too "
            f"small to rank them (under {MIN_VAL_PER_CLASS} per class)"
        )
    else:
        note = "; there is no validation split"
    if not nc1:
        w = min(candidates, key=lambda c: c.rank)
        return (
            w,
            "nc1_after",
            f"no candidate's head-input NC1 is defined; keeping the rule's pick, {w.block}",
        )
    w = min(nc1, key=lambda c: (c.nc1_after, c.rank))
    others = ", ".join(f"{c.block} {c.nc1_after:.3g}" for c in nc1 if c is not w)
    why = (
        f"{w.block} reached the lowest head-input NC1 on the training data after "
        f"{w.steps} probe steps ({w.nc1_after:.3g}{'; ' + others if others else ''}){note}"
    )
    return w, "nc1_after", why


def _probe_one(
    model, block, rank, sources, num_classes, steps, opts
) -> tuple[ProbeCandidate, dict]:
    """Measure, (warm-start,) train and measure one candidate; its result and trained state."""
    start = time.perf_counter()
    train, val = sources
    device, amp = opts["device"], opts["amp"]
    before = measure(
        model, train, num_classes, device=device, amp=amp, keep_features=opts["warm_start"]
    )
    if opts["warm_start"] and before.features is not None:
        fit_linear_head(before.features, before.labels, num_classes).load_into(model.head)
    losses = train_steps(
        model,
        train,
        steps,
        opts["lr"],
        weight_decay=opts["weight_decay"],
        grad_clip=opts["grad_clip"],
        device=device,
        amp=amp,
    )
    after = measure(model, train, num_classes, device=device, amp=amp)
    val_acc = None
    if val is not None:
        val_acc = measure(model, val, num_classes, device=device, amp=amp).accuracy
    finite = [x for x in losses if math.isfinite(x)]
    tail = finite[-LOSS_TAIL:]
    result = ProbeCandidate(
        block=block,
        rank=rank,
        steps=len(finite),
        seconds=time.perf_counter() - start,
        lr=opts["lr"],
        nc1_before=_finite(before.nc1),
        nc1_after=_finite(after.nc1) if len(finite) == len(losses) else None,
        val_accuracy=_finite(val_acc),
        train_loss=sum(tail) / len(tail) if tail else None,
    )
    prefixes = (f"backbone.{block}.", "head.")
    state = {k: v for k, v in trainable_state(model).items() if k.startswith(prefixes)}
    return result, state


def probe_blocks(
    backbone: Any,
    candidates: Sequence[str],
    train_data: Any,
    num_classes: int,
    *,
    budget_steps: int,
    lr: float = 1e-3,
    val_data: Any = None,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.01,
    grad_clip: float | None = 1.0,
    warm_start: bool = False,
    keep_winner: bool = True,
    token_pool: str = "cls",
    head_dropout: float = 0.0,
    device: torch.device | None = None,
    amp: bool = True,
    cache_max_mb: float = 2048.0,
) -> ProbeResult:
    """Train each candidate block briefly (SCL) and choose the one to continue.

    Each candidate gets :math:`\\lfloor B / k \\rfloor` AdamW steps (budget :math:`B`,
    :math:`k` candidates) on a fresh SCL model built on a deep copy of ``backbone``. Its
    head-input NC1 on the training data, :math:`\\tfrac1K\\operatorname{tr}(\\Sigma_W
    \\Sigma_B^+)`, is measured before and after; its validation accuracy after, when
    ``val_data`` is given. The winner is chosen by validation accuracy when the split
    holds at least :data:`MIN_VAL_PER_CLASS` samples per class (among those within one
    standard error :math:`\\sqrt{p(1-p)/n}` of the best, the lowest NC1 after; then the
    rule's order), else by the lowest NC1 after (ties: the rule's order).

    Each candidate's random draws (its head, dropout) come from ``(seed, block)`` alone,
    inside a forked RNG: the result repeats for a seed and the caller's random state is
    left as it was. ``backbone`` itself is never modified.

    Args:
        backbone: the pretrained :class:`~nctune.backbones.Backbone` (deep-copied per
            candidate).
        candidates: block paths in the rule's order (e.g. from
            :func:`~nctune.selection.rank_blocks`); duplicates are ignored.
        train_data: the training split, un-augmented: a ``Dataset`` or a ``DataLoader`` of
            ``(image, label)`` (its dataset is read in order, ``batch_size`` at a time).
        num_classes: K.
        budget_steps: optimizer steps for the whole probe, split evenly (the remainder
            unused); at least one per candidate.
        lr: the probe's learning rate (constant, no warm-up: the steps are few).
        val_data: the validation split, like ``train_data``, or None.
        batch_size: samples per step and per measurement batch.
        seed: see above.
        weight_decay, grad_clip: as in training.
        warm_start: fit each candidate's head as a linear probe first (from the features
            its NC1-before pass collects: no extra pass).
        keep_winner: keep the winner's trained block and head in ``winner_state``.
        token_pool, head_dropout: as for :func:`~nctune.training.strategies.apply_strategy`.
        device: where the models run (default: where the backbone's parameters are).
        amp: autocast on CUDA, as in training.
        cache_max_mb: the largest prefix cache kept in memory; a bigger or unsafe prefix
            (see :meth:`~nctune.training.prefix_cache.PrefixCache.build`) trains on images.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: no candidate, a candidate that is not a block of the backbone, or a
            budget below one step per candidate.
        TypeError: the data are neither a ``Dataset`` nor a ``DataLoader``.
    """
    start = time.perf_counter()
    order = list(backbone.block_names)
    blocks = list(dict.fromkeys(candidates))
    unknown = [b for b in blocks if b not in order]
    if not blocks or unknown:
        raise ValueError(f"probe_blocks: candidates must be blocks of {backbone.spec}: {unknown}")
    steps_each = budget_steps // len(blocks)
    if steps_each < 1:
        raise ValueError(
            f"probe_blocks: a budget of {budget_steps} steps is below one per candidate ({len(blocks)})"
        )
    train_ds = dataset_of(train_data)
    val_ds = dataset_of(val_data) if val_data is not None else None
    val_n = len(val_ds) if val_ds is not None else 0
    device = device or model_device(backbone.model)
    options = {"token_pool": token_pool, "head_dropout": head_dropout}
    opts = dict(
        device=device,
        amp=amp,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        warm_start=warm_start,
    )
    results: dict[str, ProbeCandidate] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    train_cache = val_cache = info = None
    try:
        # shallowest first: its model computes the one cache every candidate trains from
        for block in sorted(blocks, key=order.index):
            with seeded(seed * 1_000_003 + order.index(block)):
                model = _scl_model(backbone, block, num_classes, options)
                if info is None:
                    train_cache, val_cache, info = _caches(
                        model, order, train_ds, val_ds, batch_size, device, amp, cache_max_mb
                    )
                sources = (
                    _source(train_cache, train_ds, model, batch_size, device, seed),
                    _source(val_cache, val_ds, model, batch_size, device, seed) if val_n else None,
                )
                results[block], state = _probe_one(
                    model, block, blocks.index(block), sources, num_classes, steps_each, opts
                )
            if keep_winner:
                states[block] = state
            del model, sources
    finally:
        for cache in (train_cache, val_cache):
            if cache is not None:
                cache.close()
    ranked = [results[b] for b in blocks]
    winner, criterion, why = _choose(ranked, val_n, num_classes)
    return ProbeResult(
        candidates=ranked,
        winner=winner.block,
        criterion=criterion,
        why=why,
        budget_steps=budget_steps,
        steps=sum(c.steps for c in ranked),
        seconds=time.perf_counter() - start,
        cache=info.to_dict(),
        val_samples=val_n,
        seed=seed,
        winner_state=states.get(winner.block) if keep_winner else None,
    )
