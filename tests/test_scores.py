"""Transferability scores against independent computations and hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from nctune.scores import hscore, knn_accuracy, logme, stratified_indices


def _toy(n: int = 40, d: int = 5, seed: int = 0, sep: float = 1.5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    f = rng.normal(size=(n, d)) + sep * y[:, None] * np.linspace(1, 0.2, d)
    return f, y


def _evidence_reference(f: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mean over classes of max_{α,β} log N(t; 0, β⁻¹ I + α⁻¹ F Fᵀ) / n.

    The marginal likelihood of the same Bayesian linear model, written as the Gaussian it
    is (no closed-form evidence, no SVD, no fixed point), maximised numerically.
    """
    n = len(f)
    total = 0.0
    for c in range(k):
        t = (y == c).astype(float)

        def neg(p, t=t):
            alpha, beta = np.exp(p)
            cov = np.eye(n) / beta + f @ f.T / alpha
            return -multivariate_normal(np.zeros(n), cov).logpdf(t)

        best = min(
            (
                minimize(
                    neg,
                    x0,
                    method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 4000},
                )
                for x0 in ([0.0, 0.0], [2.0, 1.0], [-2.0, 2.0])
            ),
            key=lambda r: r.fun,
        )
        total += -best.fun / n
    return total / k


@pytest.mark.parametrize("n,d", [(40, 5), (12, 20)])  # n > D and D > n (the rank-deficient A)
def test_logme_matches_numerical_evidence_maximisation(n, d):
    f, y = _toy(n, d)
    ours = logme(f, y)
    ref = _evidence_reference(f, y, 2)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_logme_prefers_separable_features_and_accepts_tensors():
    f_good, y = _toy(sep=3.0)
    f_bad, _ = _toy(sep=0.0)
    assert logme(f_good, y) > logme(f_bad, y)
    assert logme(torch.tensor(f_good, dtype=torch.float32), torch.tensor(y)) == pytest.approx(
        logme(f_good.astype(np.float32), y), rel=1e-9
    )


def test_logme_survives_features_that_explain_nothing():
    f = np.zeros((10, 3))
    y = np.arange(10) % 2
    # the evidence of a zero-weight model: t ~ N(0, β⁻¹ I) at β = n / ‖t‖² (= 2 here)
    expected = 0.5 * np.log(2.0) - 0.5 * np.log(2 * np.pi) - 0.5
    assert logme(f, y) == pytest.approx(expected, abs=1e-6)


def test_hscore_hand_computed_1d():
    # f = 0,1,2,3 with classes {0,1},{2,3}: var f = 5/4, class means .5,2.5 → var g = 1
    f = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert hscore(f, [0, 0, 1, 1]) == pytest.approx(1 / 1.25)


def test_hscore_pinv_ignores_a_duplicated_column():
    f = np.array([[0.0], [1.0], [2.0], [3.0]])
    dup = np.hstack([f, f])  # singular covariance: the pseudo-inverse sees one direction
    assert hscore(dup, [0, 0, 1, 1]) == pytest.approx(0.8)


def test_hscore_bounds():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(3, 4)) * 5
    y = np.repeat(np.arange(3), 10)
    collapsed = means[y]
    assert hscore(collapsed, y) == pytest.approx(2.0)  # K − 1 when fully collapsed
    assert hscore(rng.normal(size=(30, 4)), y) < 1.0


def test_knn_hand_computed():
    # references on the unit circle at 0°, 10°, 90°, 100°, 180° (classes 0,0,1,1,1)
    ang = np.deg2rad([0, 10, 90, 100, 180])
    ref = np.stack([np.cos(ang), np.sin(ang)], 1) * np.array([[1], [3], [2], [1], [5]])
    ref_y = [0, 0, 1, 1, 1]
    q = np.array([[1.0, 0.05], [0.1, 1.0], [-1.0, 0.0]])
    # k=1: nearest are 0°, 90°, 180° → 0, 1, 1
    assert knn_accuracy(ref, ref_y, q, [0, 1, 1], k=1) == 1.0
    # k=3 for q0 (angle ~3°): 0°, 10°, 90° → two votes class 0 → 0 (correct)
    # for q2 (180°): 180°, 100°, 90° → class 1; so labels [0,1,0] score 2/3
    assert knn_accuracy(ref, ref_y, q, [0, 1, 0], k=3) == pytest.approx(2 / 3)


def test_knn_tie_goes_to_the_nearest_class_and_scale_does_not_matter():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    q = np.array([[1.0, 0.2], [0.2, 1.0]])
    # k=2: one vote each; the nearer neighbour decides
    assert knn_accuracy(ref, [0, 1], q, [0, 1], k=2) == 1.0
    assert knn_accuracy(ref * 100, [0, 1], q * 0.01, [0, 1], k=2) == 1.0
    assert knn_accuracy(ref, [0, 1], q, [0, 1], k=10) == 1.0  # k > n: all vote


def test_stratified_indices_proportional_seeded_and_keeps_rare_classes():
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = stratified_indices(y, 20, seed=3)
    counts = np.bincount(y[idx], minlength=3)
    assert counts.sum() == 20 and counts[2] == 1 and counts[0] > counts[1] >= 1
    assert np.array_equal(idx, stratified_indices(y, 20, seed=3))
    assert not np.array_equal(idx, stratified_indices(y, 20, seed=4))
    assert np.array_equal(stratified_indices(y, 500), np.arange(100))
    assert len(np.unique(idx)) == 20 and np.all(np.diff(idx) > 0)
