"""Degenerate input to the collapse statistics: defined values or CollapseError, never a crash."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nctune.collapse import CollapseError, CollapseStats, CollapseWarning, trace_ratio

Y = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("mode", ["full", "two_pass"])
def test_constant_features_are_nan_with_a_warning_not_a_zero_division(mode):
    stats = CollapseStats(3, mode=mode).update(torch.ones(6, 4), Y)
    if stats.needs_another_pass:
        stats.next_pass()
        stats.update(torch.ones(6, 4), Y)
    with pytest.warns(CollapseWarning, match="class means coincide.*NaN"):
        m = stats.compute()
    assert math.isnan(m.nc1) and math.isnan(m.trace_ratio) and math.isnan(m.cdnv)
    assert m.within_trace == 0.0 and m.between_trace == 0.0


def test_identical_class_means_with_spread_are_inf():
    # every class has mean 0 but its samples spread: no separation at all, not "collapsed"
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [-1.0, 0.0], [-2.0, -1.0], [0.0, -3.0]])
    with pytest.warns(CollapseWarning, match="are inf"):
        m = CollapseStats(3).update(x + 100.0, Y).compute()
    assert m.nc1 == math.inf and m.trace_ratio == math.inf and m.cdnv == math.inf


def test_float32_noise_between_identical_images_counts_as_coinciding():
    x = torch.full((6, 8), 3.0) + 1e-7 * torch.randn(6, 8)  # what batching noise looks like
    with pytest.warns(CollapseWarning, match="every feature is the same"):
        assert math.isnan(CollapseStats(3).update(x, Y).compute().nc1)


def test_the_public_functions_do_not_raise_zero_division():
    with pytest.warns(CollapseWarning):
        assert math.isnan(trace_ratio(torch.zeros(6, 4), Y))


def test_numpy_array_likes_are_accepted_and_give_the_tensor_result():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), np.arange(12) % 3
    got = CollapseStats(3).update(x, y).compute()
    want = CollapseStats(3).update(torch.from_numpy(x), torch.from_numpy(y)).compute()
    assert got.nc1 == pytest.approx(want.nc1, rel=1e-12)
    as_lists = CollapseStats(3).update(x.tolist(), y.tolist()).compute()  # float32 tensor
    assert as_lists.nc1 == pytest.approx(want.nc1, rel=1e-5)


@pytest.mark.parametrize(
    "features, labels, match",
    [
        ("not features", Y, "features must be a tensor or a numeric array-like, got str"),
        ([[1.0, 2.0], [3.0]], Y, "features must be a tensor"),
        (torch.ones(6, 2), object(), "labels must be a tensor or a numeric array-like"),
        (np.ones((6, 2)), np.array([0.5] * 6), "labels must be integers"),
    ],
)
def test_what_cannot_be_converted_is_a_collapse_error(features, labels, match):
    with pytest.raises(CollapseError, match=match):
        CollapseStats(3).update(features, labels)
