"""A common offset far above the spread (issue 20, item 20): the shift c keeps the sums exact,
so the metrics must equal the naive computation on the centred data, not read "degenerate"."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from nctune.collapse import CollapseStats, CollapseWarning
from tests.collapse.reference import reference_metrics

K, D, N = 3, 6, 60
METRICS = ("nc1", "trace_ratio", "cdnv", "within_trace", "between_trace")


def _data(offset: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    centres = torch.randn(K, D, generator=g, dtype=torch.float64)
    x = centres[y] + torch.randn(N, D, generator=g, dtype=torch.float64)  # spread ~1
    return x + offset, y


@pytest.mark.parametrize("mode", ["full", "two_pass"])
@pytest.mark.parametrize("batch", [N, 7])
@pytest.mark.parametrize("offset", [1e5, 1e6, 1e9])
def test_float64_features_with_a_large_offset_equal_the_centred_reference(mode, batch, offset):
    x, y = _data(offset)
    centred = (x - x.mean(dim=0)).numpy()
    want = reference_metrics(centred, y.numpy())
    stats = CollapseStats(K, mode=mode)
    for _ in range(2 if mode == "two_pass" else 1):
        for i in range(0, N, batch):
            stats.update(x[i : i + batch], y[i : i + batch])
        if stats.needs_another_pass:
            stats.next_pass()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)  # nothing degenerate here
        got = stats.compute()
    for name in METRICS:
        assert getattr(got, name) == pytest.approx(want[name], rel=1e-6), name


def test_merged_states_with_an_offset_equal_the_centred_reference():
    x, y = _data(1e6)
    want = reference_metrics((x - x.mean(dim=0)).numpy(), y.numpy())
    a = CollapseStats(K).update(x[:20], y[:20])
    b = CollapseStats(K).update(x[20:], y[20:])
    got = a.merge(b).compute()
    assert got.nc1 == pytest.approx(want["nc1"], rel=1e-6)


def test_a_float64_state_survives_its_state_dict():
    x, y = _data(1e6)
    stats = CollapseStats(K).update(x, y)
    back = CollapseStats(K)
    back.load_state_dict(stats.state_dict())
    assert back.compute().nc1 == pytest.approx(stats.compute().nc1, rel=1e-12)


def test_float32_features_at_their_precision_still_count_as_identical():
    # the same offset/spread ratio in float32 is below what float32 features resolve
    # through a network: identical images stay "every feature is the same"
    x = torch.full((6, 8), 3.0) + 1e-7 * torch.randn(6, 8)
    with pytest.warns(CollapseWarning, match="every feature is the same"):
        assert math.isnan(CollapseStats(3).update(x, torch.arange(6) % 3).compute().nc1)


def test_a_float32_batch_makes_the_whole_state_float32_precise():
    # mixing a float32 batch into float64 ones: the coarser precision decides
    x = np.full((6, 8), 3.0) + 1e-9 * np.random.default_rng(0).normal(size=(6, 8))
    y = torch.arange(6) % 3
    stats = CollapseStats(3).update(torch.from_numpy(x).float(), y)
    stats.update(torch.from_numpy(x), y)
    with pytest.warns(CollapseWarning, match="every feature is the same"):
        assert math.isnan(stats.compute().nc1)
