"""Where training batches come from: images through the whole model, or the prefix cache.

Both sources serve the same batches in the same order (:class:`~nctune.optim.EpochSampler`),
so a run gives the same numbers with the cache on or off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nctune.optim import EpochSampler
from nctune.prefix_cache import CacheInfo, PrefixCache, find_cut, remove_stale_caches
from nctune.taps import to_device


class ImageBatches:
    """Image batches through the whole model (no cache); ``epoch=None`` means in order."""

    def __init__(
        self, data, batch_size: int, device: torch.device, seed: int = 0, num_workers: int = 0
    ) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device
        self.seed, self.num_workers = seed, num_workers

    def batches(
        self, epoch: int | None = None, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(self.data, Dataset):  # a user's DataLoader or any iterable of batches
            yield from self.data
            return
        sampler = (
            None
            if epoch is None
            else EpochSampler(len(self.data), self.seed, epoch, start_batch * self.batch_size)
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

    def attached(self):
        return contextlib.nullcontext()

    def forward(self, model: nn.Module, x: torch.Tensor):
        return model(to_device(x, self.device), return_features=True)


class CachedBatches:
    """The same batches as :class:`ImageBatches`, served from the prefix cache (suffix only)."""

    def __init__(
        self,
        cache: PrefixCache,
        tuned: nn.Module,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.cache, self.tuned, self.batch_size, self.device, self.seed = (
            cache,
            tuned,
            batch_size,
            device,
            seed,
        )

    def batches(
        self, epoch: int | None = None, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.cache)
        order = torch.arange(n) if epoch is None else EpochSampler(n, self.seed, epoch).order()
        for i in range(start_batch * self.batch_size, n, self.batch_size):
            yield self.cache.batch(order[i : i + self.batch_size])

    def attached(self):
        return self.cache.attached(self.tuned)

    def forward(self, model: nn.Module, x: torch.Tensor):
        return self.cache.forward(model, self.tuned, x.to(self.device, non_blocking=True))

    def close(self) -> None:
        self.cache.close()


def try_cache(
    tuned, block_names, train_set, val_set, cfg, batch_size, seed, device, run_dir, progress, amp
):
    """(cached train source, cached val source, info); the sources are None when refused."""
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
    )
    if progress:
        progress("caching frozen prefix", 0, None)
    remove_stale_caches(run_dir)
    cache, info = PrefixCache.build(
        tuned, cut, DataLoader(train_set, batch_size=batch_size, shuffle=False), **kw
    )
    if cache is None:
        return None, None, info
    val = None
    if val_set is not None:
        vcache, _ = PrefixCache.build(
            tuned, cut, DataLoader(val_set, batch_size=batch_size, shuffle=False), **kw
        )
        val = CachedBatches(vcache, tuned, batch_size, device) if vcache is not None else None
    return CachedBatches(cache, tuned, batch_size, device, seed), val, info
