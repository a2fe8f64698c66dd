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


# ------------------------------------------------------- regularised H-score, NCTI, static
def _hscore_reg_reference(f: np.ndarray, y: np.ndarray, alpha: float | None) -> float:
    """Ibrahim et al.'s shrinkage H-score written out with D × D matrices (no SVD trick)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = f - f.mean(axis=0)
    n, d = x.shape
    if alpha is None:
        alpha = ledoit_wolf_shrinkage(x, assume_centered=True)
    cov = x.T @ x / n
    means = {c: x[y == c].mean(axis=0) for c in np.unique(y)}
    g = np.stack([means[c] for c in y])
    cov_b = g.T @ g / n
    shrunk = (1 - alpha) * cov + alpha * np.trace(cov) / d * np.eye(d)
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - alpha) * cov_b)))


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf_shrinkage as sk

    from nctune.scores import ledoit_wolf_shrinkage

    rng = np.random.default_rng(3)
    for n, d in [(50, 5), (20, 60), (30, 30)]:
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        x -= x.mean(axis=0)
        assert ledoit_wolf_shrinkage(x) == pytest.approx(sk(x, assume_centered=True), rel=1e-9)


@pytest.mark.parametrize("n,d", [(60, 8), (30, 30), (20, 64)])  # n > D, n = D, n < D
@pytest.mark.parametrize("alpha", [None, 0.3])
def test_hscore_reg_matches_the_d_by_d_formula(n, d, alpha):
    from nctune.scores import hscore_reg

    rng = np.random.default_rng(n + d)
    y = np.arange(n) % 4
    f = rng.normal(size=(n, d)) + 2.0 * rng.normal(size=(4, d))[y]
    ours = hscore_reg(f, y, shrinkage=alpha)
    assert ours == pytest.approx(_hscore_reg_reference(f, y, alpha), rel=1e-8)


def test_hscore_reg_does_not_saturate_when_n_is_at_most_d():
    from nctune.scores import hscore_reg

    rng = np.random.default_rng(0)
    n, d, k = 40, 100, 5
    y = np.arange(n) % k
    centres = rng.normal(size=(k, d))
    # three feature sets of clearly different class separation, all with n < D
    sets = [rng.normal(size=(n, d)) + sep * centres[y] for sep in (0.2, 1.0, 3.0)]
    plain = [hscore(f, y) for f in sets]
    reg = [hscore_reg(f, y) for f in sets]
    assert plain == pytest.approx([k - 1] * 3, rel=1e-6)  # the plain score: saturated, no order
    assert all(0 < r < k - 1 for r in reg)
    assert reg[0] < reg[1] < reg[2]  # the regularised one orders them by separation


def test_hscore_reg_equals_hscore_without_shrinkage_at_full_rank():
    from nctune.scores import hscore_reg

    f, y = _toy(60, 6)
    assert hscore_reg(f, y, shrinkage=0.0) == pytest.approx(hscore(f, y), rel=1e-9)
    with pytest.raises(ValueError, match="shrinkage"):
        hscore_reg(f, y, shrinkage=1.5)


def test_class_geometry_is_one_for_a_simplex_and_low_for_crowded_means():
    from nctune.rank_scores import class_geometry

    k, d = 4, 6
    etf = np.eye(k) - 1.0 / k  # the centred simplex: K − 1 equal singular values
    etf = np.hstack([etf, np.zeros((k, d - k))])
    y = np.repeat(np.arange(k), 5)
    rng = np.random.default_rng(0)
    assert class_geometry(etf[y] * 3 + 1e-9 * rng.normal(size=(len(y), d)), y) == pytest.approx(
        1.0, abs=1e-6
    )
    crowded = np.outer(np.arange(k), np.ones(d)) + 0.01 * rng.normal(size=(k, d))  # ~ a line
    g = class_geometry(crowded[y], y)
    # independent value: nuclear / (√(K−1) Frobenius) of the centred, unit-scaled means
    m = crowded - crowded.mean(axis=0)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    s = np.linalg.svd(m, compute_uv=False)
    assert g == pytest.approx(s.sum() / (np.sqrt(k - 1) * np.sqrt((s**2).sum())))
    assert g < 0.7


def test_ncti_is_the_mean_of_min_max_normalised_terms():
    from nctune.rank import Candidate
    from nctune.rank_scores import add_ncti

    rows = [
        Candidate("a", "a", True, scores={"ncc": 0.9, "trace_ratio": 1.0}),
        Candidate("b", "b", True, scores={"ncc": 0.5, "trace_ratio": 4.0}),
        Candidate("c", "c", True, scores={"ncc": 0.7, "trace_ratio": 2.0}),
        Candidate("d", "d", True, ok=False),
    ]
    geometry = {"a": 0.6, "b": 0.8, "c": 0.7}
    add_ncti(rows, geometry)
    # independent: each term to [0, 1] (higher better), −log for the trace ratio, mean
    ncc = np.array([0.9, 0.5, 0.7])
    var = -np.log([1.0, 4.0, 2.0])
    geo = np.array([0.6, 0.8, 0.7])
    mm = [(t - t.min()) / (t.max() - t.min()) for t in (ncc, var, geo)]
    expected = np.mean(mm, axis=0)
    assert [r.scores["ncti"] for r in rows[:3]] == pytest.approx(list(expected))
    assert "ncti" not in rows[3].scores


def test_static_scores_read_the_table_and_the_zoo_metadata(tmp_path):
    from safetensors.torch import save_file

    from nctune.backbones import create_backbone
    from nctune.rank_scores import IMAGENET_TOP1, static_scores

    b = create_backbone("timm:test_resnet", pretrained=False, num_classes=3)
    path = tmp_path / "m.safetensors"
    save_file(
        b.state_dict_for_save(), str(path), metadata={**b.metadata(), "source_accuracy": "0.8"}
    )
    body = sum(p.numel() for p in b.model.parameters()) - sum(
        p.numel() for p in b.classifier.parameters()
    )
    assert static_scores(f"file:{path}", True, b) == {"static_top1": 80.0, "params": body}
    assert static_scores("timm:test_resnet", True, b)["static_top1"] is None
    assert static_scores("timm:test_resnet", False, b)["static_top1"] == 0.0
    assert (
        IMAGENET_TOP1["packaged:efficientnet_lite2"] > IMAGENET_TOP1["packaged:efficientnet_lite0"]
    )
    assert create_backbone(f"file:{path}").num_classes == 3  # the extra metadata still loads
