"""Batch sources under torchrun: each rank's part of every global batch."""

from __future__ import annotations

import pytest
import torch

from nctune import distributed as dist
from nctune.training import batches
from nctune.training.optim import EpochSampler


@pytest.mark.parametrize("n, batch, world", [(37, 8, 3), (10, 4, 2), (9, 16, 2), (5, 2, 4)])
def test_rank_parts_partition_each_global_batch(monkeypatch, n, batch, world):
    monkeypatch.setattr(dist, "world_size", lambda: world)
    globals_ = batches._global_batches(n, batch, seed=3, epoch=1)
    # the global batches are the one-process batches: slices of the epoch's permutation
    assert torch.equal(torch.cat(globals_), EpochSampler(n, 3, 1).order())
    for idx in globals_:
        seen: list[int] = []
        for rank in range(world):
            monkeypatch.setattr(dist, "rank", lambda r=rank: r)
            mine, real = batches._rank_part(idx, n, local=False)
            local, real_local = batches._rank_part(idx, n, local=True)
            assert real == real_local and len(mine) >= min(2, len(range(rank, n, world)))
            assert all(int(i) % world == rank for i in mine)  # only its own shard's samples
            assert torch.equal(local, mine // world)  # = positions in shard(n) of this rank
            seen += mine[:real].tolist()
        assert sorted(seen) == sorted(idx.tolist())  # every sample once, none twice


def test_stand_ins_are_ignored_labels():
    y = torch.tensor([3, 1, 4])
    assert batches._ignore_after(y, 3) is y
    assert batches._ignore_after(y, 1).tolist() == [3, batches.IGNORE, batches.IGNORE]
    assert y.tolist() == [3, 1, 4]  # the loader's tensor is not changed in place
