"""Where training batches come from: images through the whole model, or the prefix cache.

Both sources serve the same batches in the same order (:class:`~nctune.training.optim.EpochSampler`),
so a run gives the same numbers with the cache on or off. Under ``torchrun`` each process
serves its part of every global batch: the samples of its shard (index mod world size), the
ones its prefix cache holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nctune import distributed as dist
from nctune.errors import Interrupted
from nctune.taps import to_device
from nctune.training.callbacks import Callback, CallbackList
from nctune.training.optim import EpochSampler
from nctune.training.prefix_cache import CacheInfo, PrefixCache, find_cut, remove_stale_caches


class ImageBatches:
    """Image batches through the whole model (no cache); ``epoch=None`` means in order."""

    def __init__(
        self, data, batch_size: int, device: torch.device, seed: int = 0, num_workers: int = 0
    ) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device
        self.seed, self.num_workers = seed, num_workers
        self.weights: torch.Tensor | None = None  # data.balanced_sampler's draw weights

    def batches(
        self, epoch: int | None = None, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(self.data, Dataset):  # a user's DataLoader or any iterable of batches
            yield from self.data
            return
        if epoch is not None and dist.is_distributed():
            yield from self._rank_batches(epoch, start_batch)
            return
        sampler = (
            None
            if epoch is None
            else EpochSampler(
                len(self.data), self.seed, epoch, start_batch * self.batch_size, self.weights
            )
        )
        # The loader gets its own generator: creating its iterator would otherwise draw a
        # worker seed from the global RNG, shifting every later dropout mask of a resumed
        # run by one draw; seeded from (seed, epoch), worker seeds repeat on resume too.
        yield from DataLoader(
            self.data,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=sampler.generator() if sampler is not None else None,
        )

    def _rank_batches(self, epoch: int, start_batch: int):
        """This rank's part of each global batch (see :func:`_rank_part`)."""
        n = len(self.data)
        parts = [
            _rank_part(idx, n, local=False)
            for idx in _global_batches(n, self.batch_size, self.seed, epoch, self.weights)[
                start_batch:
            ]
        ]
        loader = DataLoader(
            self.data,
            batch_sampler=[p.tolist() for p, _ in parts],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=EpochSampler(n, self.seed, epoch).generator(),
        )
        for (x, y), (_, real) in zip(loader, parts, strict=True):
            yield x, _ignore_after(torch.as_tensor(y), real)

    def attached(self):
        return contextlib.nullcontext()

    def forward(self, model: nn.Module, x: torch.Tensor):
        return model(to_device(x, self.device), return_features=True)


#: Label of a stand-in sample: a rank whose part of a global batch is empty still runs a
#: step (DDP needs every rank in every gradient all-reduce), and a part of one sample is
#: padded to two (BatchNorm in training mode cannot normalise a single 1×1 map); the loss,
#: the accuracy and the tracked statistics ignore it.
IGNORE = -100


def _ignore_after(y: torch.Tensor, real: int) -> torch.Tensor:
    if real < y.numel():
        y = y.clone()
        y[real:] = IGNORE
    return y


def _global_batches(
    n: int, batch_size: int, seed: int, epoch: int, weights: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The epoch's global batches: consecutive slices of the ``(seed, epoch)`` permutation
    (or weighted draws), the very batches a one-process run with this batch size trains on."""
    order = EpochSampler(n, seed, epoch, weights=weights).order()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _rank_part(idx: torch.Tensor, n: int, local: bool) -> tuple[torch.Tensor, int]:
    """(indices, how many are real) of this rank's samples of global batch ``idx``.

    A sample belongs to rank ``i mod W`` — the rank whose shard (:func:`~nctune.distributed.
    shard`) holds it, and so whose prefix cache has it; ``local`` gives its index within
    that shard (``i // W``). A part of fewer than two samples is completed with stand-ins
    (labelled :data:`IGNORE`) from the rank's own shard.
    """
    world, rank = dist.world_size(), dist.rank()
    mine = idx[idx % world == rank]
    real = mine.numel()
    if real < 2:
        own = torch.arange(rank, min(n, rank + 2 * world), world)
        mine = torch.cat([mine, own[: 2 - real]])
    return (mine // world if local else mine), real


class Step(nn.Module):
    """The model behind one source's forward: what DDP wraps, so the cached path (which
    may call only the head) still runs inside DDP's forward."""

    def __init__(self, model: nn.Module, source) -> None:
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, x: torch.Tensor):
        return self.source.forward(self.model, x)


class CachedBatches:
    """The same batches as :class:`ImageBatches`, served from the prefix cache (suffix only)."""

    def __init__(
        self,
        cache: PrefixCache,
        tuned: nn.Module,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        n_global: int | None = None,
    ) -> None:
        self.cache, self.tuned, self.batch_size, self.device, self.seed = (
            cache,
            tuned,
            batch_size,
            device,
            seed,
        )
        self.n_global = n_global  # under torchrun: the whole split (the cache holds a shard)
        self.weights: torch.Tensor | None = None  # data.balanced_sampler's draw weights

    def batches(
        self, epoch: int | None = None, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.cache)
        if epoch is not None and dist.is_distributed():
            n = self.n_global
            batches = _global_batches(n, self.batch_size, self.seed, epoch, self.weights)
            for idx in batches[start_batch:]:
                mine, real = _rank_part(idx, n, local=True)
                x, y = self.cache.batch(mine)
                yield x, _ignore_after(y, real)
            return
        order = (
            torch.arange(n)
            if epoch is None
            else EpochSampler(n, self.seed, epoch, weights=self.weights).order()
        )
        for i in range(start_batch * self.batch_size, n, self.batch_size):
            yield self.cache.batch(order[i : i + self.batch_size])

    def attached(self):
        return self.cache.attached(self.tuned)

    def forward(self, model: nn.Module, x: torch.Tensor):
        return self.cache.forward(model, self.tuned, x.to(self.device, non_blocking=True))

    def close(self) -> None:
        self.cache.close()


class _Labelled(Callback):
    """The validation cache's pass: the same stop requests, its progress labelled ``(val)``."""

    def __init__(self, callbacks: Callback) -> None:
        self.callbacks = callbacks

    def on_progress(self, phase: str, done: int, total: int | None, info: str = "") -> None:
        self.callbacks.on_progress(f"{phase} (val)", done, total)

    def should_stop(self) -> bool:
        return self.callbacks.should_stop()


def try_cache(
    tuned: nn.Module,
    block_names: list[str],
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    cfg,
    batch_size: int,
    seed: int,
    device: torch.device,
    amp: bool,
    run_dir: Path | None = None,
    shared_dir: Path | None = None,
    callbacks: Callback | None = None,
) -> tuple[CachedBatches | None, CachedBatches | None, CacheInfo]:
    """The frozen-prefix batch sources of a run's training and validation sets.

    Args:
        tuned: the :class:`~nctune.training.strategies.TunedModel`.
        block_names: the backbone's blocks, shallow → deep (where the prefix may be cut).
        train_set: the whole training set (under torchrun each rank caches its shard).
        val_set: this rank's validation shard, or None.
        cfg: the recipe's ``train`` section (``cache_prefix`` and its size limits).
        batch_size, seed: as in training (the cached batches are the same batches).
        device, amp: where and how the prefix runs (as in training).
        run_dir: the run folder, where a disk cache goes (None: the temporary folder).
        shared_dir: a folder where the caches persist for later runs (a search's trials).
        callbacks: the caching passes' progress and stop requests.

    Returns:
        ``(cached train source, cached val source, info)``; the sources are None when
        refused, ``info`` says why.
    """
    callbacks = CallbackList.of(callbacks)
    cut = find_cut(tuned, block_names)
    if cut is None:
        return (
            None,
            None,
            CacheInfo(
                False, reason="a parameter before the first block trains (nothing frozen to cache)"
            ),
        )
    kw = dict(
        device=device,
        max_memory_mb=cfg.cache_max_mb,
        max_disk_mb=cfg.cache_disk_max_mb,
        prefer=cfg.cache_prefix,
        disk_dir=run_dir,
        amp=amp,
        shared_dir=shared_dir,
    )
    if dist.is_main():  # another rank's fresh cache is not stale
        remove_stale_caches(run_dir)
    dist.check()
    n_global = len(train_set)
    train_set = dist.shard_dataset(train_set)  # under torchrun each rank caches its shard
    cache, info = PrefixCache.build(
        tuned,
        cut,
        DataLoader(train_set, batch_size=batch_size, shuffle=False),
        callbacks=callbacks,
        **kw,
    )
    if cache is None:
        return None, None, info
    val = None
    if val_set is not None:
        try:
            vcache, _ = PrefixCache.build(
                tuned,
                cut,
                DataLoader(val_set, batch_size=batch_size, shuffle=False),
                callbacks=_Labelled(callbacks),
                **kw,
            )
        except Interrupted:
            cache.close()  # the train cache must not outlive an interrupted build
            raise
        val = CachedBatches(vcache, tuned, batch_size, device) if vcache is not None else None
    return CachedBatches(cache, tuned, batch_size, device, seed, n_global), val, info
