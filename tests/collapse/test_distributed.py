"""all_reduce_stats over a real 2-process gloo group gives the single-process numbers."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nctune.collapse import CollapseError, CollapseStats, all_reduce_stats
from tests.collapse.test_stats import make_case

WORLD = 2


def _reduced(rank: int, mode: str) -> list:
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
    return [m.nc1, m.trace_ratio, m.cdnv, m.num_samples]


def _empty_rank(rank: int) -> str:
    stats = CollapseStats(2)
    if rank == 0:  # rank 1 got no batch
        stats.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    try:
        all_reduce_stats(stats)
        return "no error"
    except CollapseError as err:
        return str(err)


def _worker(rank: int, init_file: str, out: str) -> None:
    # One group for every check (each spawned process pays ~3 s importing torch): the
    # reductions first, the rank without data last (its failure ends the group's use).
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result: dict = {mode: _reduced(rank, mode) for mode in ("full", "two_pass")}
        start = time.monotonic()
        result["empty"] = _empty_rank(rank)
        result["empty_seconds"] = time.monotonic() - start
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 gloo processes found (one ``mp.spawn`` for the module's slow tests)."""
    tmp = tmp_path_factory.mktemp("gloo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [json.loads((tmp / f"{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "two_pass"])
def test_all_reduce_equals_single_process(ranks, mode):
    x, y = make_case(30, n=401, d=12, k=5, imbalanced=True, offset=50.0)
    single = CollapseStats(5).update(x, y).compute()
    for rank in range(WORLD):
        nc1, tr, cd, n = ranks[rank][mode]
        assert n == single.num_samples
        assert nc1 == pytest.approx(single.nc1, rel=1e-9)
        assert tr == pytest.approx(single.trace_ratio, rel=1e-9)
        assert cd == pytest.approx(single.cdnv, rel=1e-9)


@pytest.mark.slow
def test_a_rank_without_data_fails_on_every_rank_not_by_timeout(ranks):
    # well before the 60 s collective timeout
    assert all(ranks[rank]["empty_seconds"] < 50 for rank in range(WORLD)), ranks
    assert all("a process has no samples" in ranks[rank]["empty"] for rank in range(WORLD)), ranks


def test_all_reduce_needs_a_process_group():
    with pytest.raises(CollapseError, match="initialised torch.distributed"):
        all_reduce_stats(CollapseStats(2).update(torch.randn(4, 2), torch.tensor([0, 1, 0, 1])))
