"""Pure functions: full-matrix conveniences, NC3 and NCC against numpy."""

from __future__ import annotations

import pytest
import torch

from nctune.collapse import (
    CollapseStats,
    cdnv,
    nc1,
    nc2,
    nc2_from_means,
    nc3,
    ncc_accuracy,
    ncc_predict,
    trace_ratio,
)
from tests.collapse.reference import reference_metrics, reference_nc3, reference_ncc
from tests.collapse.test_stats import make_case


def test_full_matrix_functions_match_reference():
    x, y = make_case(20, n=400, d=12, k=5, imbalanced=True)
    ref = reference_metrics(x.double().numpy(), y.numpy())
    assert nc1(x, y) == pytest.approx(ref["nc1"], rel=1e-6)
    assert trace_ratio(x, y) == pytest.approx(ref["trace_ratio"], rel=1e-6)
    assert cdnv(x, y) == pytest.approx(ref["cdnv"], rel=1e-6)
    equinorm, equiangle = nc2(x, y)
    assert equinorm == pytest.approx(ref["nc2_equinorm"], rel=1e-6)
    assert equiangle == pytest.approx(ref["nc2_equiangle"], rel=1e-6)


def test_nc2_of_a_simplex_etf_is_zero():
    k = 6
    etf = torch.eye(k, dtype=torch.float64) - 1.0 / k  # centred simplex, equal norms
    equinorm, equiangle = nc2_from_means(etf, torch.zeros(k, dtype=torch.float64))
    assert equinorm == pytest.approx(0.0, abs=1e-12)
    assert equiangle == pytest.approx(0.0, abs=1e-12)


def test_nc3_matches_reference_and_selects_present_classes():
    x, y = make_case(21, n=300, d=10, k=4)
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    m = CollapseStats(4).update(x, y).compute()
    want = reference_nc3(w.numpy(), x.double().numpy(), y.numpy())
    assert m.nc3(w) == pytest.approx(want, rel=1e-9)
    # A classifier aligned with the centred means has NC3 = 0.
    aligned = (m.class_means - m.global_mean).float() * 3.0
    assert m.nc3(aligned) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="classifier weight"):
        nc3(w[:3], m.class_means, m.global_mean)


def test_ncc_accuracy_matches_reference():
    x, y = make_case(22, n=600, d=8, k=6, spread=1.0)
    train_x, train_y, test_x, test_y = x[:400], y[:400], x[400:], y[400:]
    m = CollapseStats(6).update(train_x, train_y).compute()
    want = reference_ncc(train_x.numpy(), train_y.numpy(), test_x.numpy(), test_y.numpy())
    assert m.ncc_accuracy(test_x, test_y) == pytest.approx(want, abs=1e-12)
    assert 0.2 < want < 1.0  # the case is neither trivial nor hopeless
    direct = ncc_accuracy(test_x, test_y, m.class_means, m.classes)
    assert direct == m.ncc_accuracy(test_x, test_y)


def test_ncc_predict_maps_rows_to_class_labels():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    pred = ncc_predict(torch.tensor([[9.0, 1.0], [1.0, 0.0]]), means, torch.tensor([3, 7]))
    assert pred.tolist() == [7, 3]
    with pytest.raises(ValueError, match="at least one sample"):
        ncc_accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), means)
