"""all_reduce_stats over a real 2-process gloo group gives the single-process numbers."""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nctune.collapse import CollapseError, CollapseStats, all_reduce_stats
from tests.collapse.test_stats import make_case

WORLD = 2


def _worker(rank: int, init_file: str, mode: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = make_case(30, n=401, d=12, k=5, imbalanced=True, offset=50.0)
        shard = slice(rank, None, WORLD)  # DistributedSampler-style interleaving
        stats = CollapseStats(5, mode=mode)
        # Each rank sees different data, so each picks a different shift.
        stats.update(x[shard] + 0.0, y[shard])
        all_reduce_stats(stats)
        if stats.needs_another_pass:
            stats.next_pass()
            stats.update(x[shard], y[shard])
            all_reduce_stats(stats)
        m = stats.compute()
        out[rank] = (m.nc1, m.trace_ratio, m.cdnv, m.num_samples)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "two_pass"])
def test_all_reduce_equals_single_process(tmp_path, mode):
    x, y = make_case(30, n=401, d=12, k=5, imbalanced=True, offset=50.0)
    single = CollapseStats(5).update(x, y).compute()
    manager = mp.Manager()
    out = manager.dict()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path / "init"), mode, out), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        nc1, tr, cd, n = out[rank]
        assert n == single.num_samples
        assert nc1 == pytest.approx(single.nc1, rel=1e-9)
        assert tr == pytest.approx(single.trace_ratio, rel=1e-9)
        assert cd == pytest.approx(single.cdnv, rel=1e-9)


def _empty_rank_worker(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        stats = CollapseStats(2)
        if rank == 0:  # rank 1 got no batch
            stats.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
        try:
            all_reduce_stats(stats)
            out[rank] = "no error"
        except CollapseError as err:
            out[rank] = str(err)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_rank_without_data_fails_on_every_rank_not_by_timeout(tmp_path):
    out = mp.Manager().dict()
    start = time.monotonic()
    mp.spawn(_empty_rank_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    assert time.monotonic() - start < 50  # well before the 60 s collective timeout
    assert all("a process has no samples" in out[rank] for rank in range(WORLD)), dict(out)


def test_all_reduce_needs_a_process_group():
    with pytest.raises(CollapseError, match="initialised torch.distributed"):
        all_reduce_stats(CollapseStats(2).update(torch.randn(4, 2), torch.tensor([0, 1, 0, 1])))
