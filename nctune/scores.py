"""Transferability scores of frozen features: LogME, H-score, k-NN accuracy (maths only).

These are the baselines ``nctune rank`` puts beside the neural-collapse scores. Each takes
an in-memory feature matrix (a bounded subsample, see :func:`stratified_indices`) and
labels, works in float64 and returns one number where **higher means the features should
transfer better**. NumPy and torch only (floor 1 of the house): no scipy, no sklearn.

Notation: ``F`` is the ``n × D`` feature matrix, ``y`` the labels in ``{0..K−1}``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Every score ``nctune rank`` reports → True when higher predicts better transfer.
#: The NC scores come from the collapse statistics (nctune.collapse), the rest from here.
SCORES: dict[str, bool] = {
    "nc1": False,  # pinv NC1 of the penultimate features, 1/K tr(Σ_W Σ_B⁺) (the paper's)
    "nc1_best": False,  # the lowest NC1 over every tapped block
    "trace_ratio": False,  # tr Σ_W / tr Σ_B of the penultimate features
    "cdnv": False,  # class-distance normalised variance of the penultimate features
    "ncc": True,  # nearest-class-centre accuracy on the validation split
    "logme": True,  # LogME on the subsample
    "hscore": True,  # H-score on the subsample
    "hscore_reg": True,  # H-score with a Ledoit–Wolf shrinkage covariance (never saturates)
    "knn": True,  # k-NN accuracy of the validation subsample against the training one
    "ncti": True,  # NCTI-style composite, min–max normalised across the candidates
    "static_top1": True,  # published ImageNet top-1, else source-task accuracy (no target data)
    "params": True,  # parameter count of the backbone without its classifier (no target data)
}

#: Scores that never look at the target data: the "static" baselines.
STATIC_SCORES = ("static_top1", "params")

#: Relative cut-off of the pseudo-inverse in :func:`hscore`: eigenvalues of cov(f) at or
#: below ``HSCORE_RCOND × λ_max`` count as zero. Features arrive as float32, whose ~1e-7
#: relative precision leaves covariance directions weaker than about 1e-6 of the largest
#: dominated by rounding; inverting them would let noise decide the score.
HSCORE_RCOND = 1e-6

#: Fixed-point iterations of :func:`logme` stop when α and β change by less than this
#: (relative), or after :data:`LOGME_MAX_ITER` rounds.
LOGME_TOL = 1e-6
LOGME_MAX_ITER = 100


def _f64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _labels(y: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} feature rows")
    if y.size and y.min() < 0:
        raise ValueError("labels must be class indices ≥ 0")
    return y


def _check(features: np.ndarray) -> np.ndarray:
    f = _f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (n ≥ 2, D), got shape {tuple(f.shape)}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f


def _class_mean_rows(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """E[f | y]: each row of ``f`` replaced by the mean of its class's rows."""
    _, inverse = np.unique(y, return_inverse=True)
    means = np.zeros((int(inverse.max()) + 1, f.shape[1]))
    np.add.at(means, inverse, f)
    means /= np.bincount(inverse)[:, None]
    return means[inverse]


# ======================================================================= LogME
def _logme_one(
    sigma: np.ndarray, z: np.ndarray, y_sq: float, n: int, d: int, tol: float, max_iter: int
) -> tuple[float, float, float, int]:
    """Evidence maximisation for one target column, in the SVD basis.

    ``sigma`` are the eigenvalues s_i² of FᵀF on the r = min(n, D) singular directions,
    ``z = Uᵀy`` the target's coordinates along them and ``y_sq = ‖y‖²``.

    Returns:
        (log evidence L(α, β), α, β, iterations).
    """
    outside = max(y_sq - float(z @ z), 0.0)  # ‖(I − UUᵀ) y‖²: no weight can fit this part
    if sigma.size == 0:  # F = 0: y ~ N(0, β⁻¹ I), α drops out (its terms cancel)
        beta = n / y_sq
        return 0.5 * n * (math.log(beta) - math.log(2 * math.pi)) - 0.5 * beta * y_sq, 0.0, beta, 0
    alpha, beta = 1.0, 1.0
    tiny = np.finfo(np.float64).tiny
    iters = 0
    for iters in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        t = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / t))
        m_sq = float(np.sum(beta**2 * sigma * z**2 / t**2))
        res = float(np.sum((alpha * z / t) ** 2)) + outside
        new_alpha = gamma / max(m_sq, tiny)
        new_beta = (n - gamma) / max(res, tiny)
        # A target the features barely explain sends α towards +∞ (m → 0); the caps keep
        # the logarithms finite where the evidence has stopped depending on α anyway.
        new_alpha = min(max(new_alpha, 1e-300), 1e300)
        new_beta = min(max(new_beta, 1e-300), 1e300)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    t = alpha + beta * sigma
    m_sq = float(np.sum(beta**2 * sigma * z**2 / t**2))
    res = float(np.sum((alpha * z / t) ** 2)) + outside
    r = sigma.shape[0]
    log_det_a = float(np.sum(np.log(t))) + (d - r) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * res
        - 0.5 * alpha * m_sq
        - 0.5 * log_det_a
    )
    return evidence, alpha, beta, iters


def logme(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    tol: float = LOGME_TOL,
    max_iter: int = LOGME_MAX_ITER,
) -> float:
    """LogME: the maximised log evidence of a Bayesian linear model on the features.

    You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"
    (ICML 2021). For each class k the one-hot column y = 1[labels = k] is modelled as

        w ~ N(0, α⁻¹ I_D),     y | F, w ~ N(F w, β⁻¹ I_n),

    whose evidence p(y | F, α, β) = ∫ p(w | α) p(y | F, w, β) dw has the closed form

        L(α, β) = n/2 log β + D/2 log α − n/2 log 2π
                  − β/2 ‖F m − y‖² − α/2 mᵀm − 1/2 log |A|,
        A = α I + β FᵀF,      m = β A⁻¹ Fᵀ y.

    It is maximised by MacKay's fixed-point iteration, from α = β = 1:

        γ = Σ_i β σ_i / (α + β σ_i),    α ← γ / mᵀm,    β ← (n − γ) / ‖F m − y‖²,

    where σ_i are the eigenvalues of FᵀF. With the thin SVD F = U diag(s) Vᵀ (σ_i = s_i²)
    and z = Uᵀ y every term is a sum over the r ≤ min(n, D) singular directions with
    s_i > max(n, D) · ε · s_max (the numerical rank; the rest are exact zeros of FᵀF whose
    z_i only add to the residual):
    mᵀm = Σ β² σ_i z_i² / (α + β σ_i)², ‖F m − y‖² = Σ (α z_i / (α + β σ_i))² +
    (‖y‖² − ‖z‖²), log |A| = Σ log(α + β σ_i) + (D − r) log α. One SVD serves every class.

    The score is the mean over the classes present of L(α*, β*) / n. Features are used as
    given (no centring or scaling), as in the paper.

    Args:
        features: ``(n, D)`` features.
        labels: ``(n,)`` class indices.
        tol: relative change of α and β that ends the iteration.
        max_iter: iteration cap.

    Returns:
        LogME, higher is better (typically between −1 and 1 for one-hot targets).

    Raises:
        ValueError: features not ``(n ≥ 2, D)`` or not finite, or labels that do not match.
    """
    f = _check(features)
    n, d = f.shape
    y = _labels(labels, n)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > (s[0] if s.size else 0.0) * max(n, d) * np.finfo(np.float64).eps
    u, sigma = u[:, keep], s[keep] ** 2
    classes = np.unique(y)
    total = 0.0
    for c in classes:
        target = (y == c).astype(np.float64)
        z = u.T @ target
        evidence, *_ = _logme_one(sigma, z, float(target @ target), n, d, tol, max_iter)
        total += evidence / n
    return total / len(classes)


# ===================================================================== H-score
def hscore(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    rcond: float = HSCORE_RCOND,
) -> float:
    """H-score: how much of the features' variance the class means explain.

    Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning" (ICIP 2019):

        H(f) = tr( cov(f)⁺ · cov(E[f | y]) ),

    where E[f | y] replaces each sample's features by its class mean, both covariances are
    taken over the n samples (the same normalisation, so it cancels), and ⁺ is the
    Moore–Penrose pseudo-inverse with eigenvalues ≤ ``rcond × λ_max`` treated as zero.
    Computed from the thin SVD of the centred features f = U diag(s) Vᵀ (cov f =
    V diag(s²/n) Vᵀ) as Σ_i ‖g v_i‖² / s_i², which needs no D × D matrix.
    It lies in [0, min(rank, K − 1)]: 0 when the class means coincide, K − 1 when the
    features are fully collapsed onto distinct class means.

    Args:
        features: ``(n, D)`` features.
        labels: ``(n,)`` class indices.
        rcond: relative cut-off of the pseudo-inverse (default :data:`HSCORE_RCOND`).

    Returns:
        H-score, higher is better.

    Raises:
        ValueError: features not ``(n ≥ 2, D)`` or not finite, or labels that do not match.
    """
    f = _check(features)
    n = f.shape[0]
    y = _labels(labels, n)
    f = f - f.mean(axis=0, keepdims=True)
    g = _class_mean_rows(f, y)  # already centred: the class means of centred features average to 0
    # cov(f) = V diag(s²/n) Vᵀ from the thin SVD of the centred features, so
    # tr(cov(f)⁺ cov(g)) = Σ_i ‖g v_i‖² / s_i² over the kept directions: O(n²D), never D×D.
    _, s, vt = np.linalg.svd(f, full_matrices=False)
    keep = s**2 > rcond * (s[0] ** 2 if s.size else 0.0)
    if not keep.any():
        return 0.0
    proj = g @ vt[keep].T
    return float(np.sum(proj**2 / s[keep] ** 2))


# ========================================================== regularised H-score
def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """Ledoit–Wolf's optimal shrinkage α of the sample covariance towards μ I, in [0, 1].

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices"
    (J. Multivariate Anal. 2004). With S = XᵀX/n of the centred ``n × D`` rows x_k and
    μ = tr S / D:

        δ² = ‖S − μ I‖_F² / D,    β̄² = (1 / (n² D)) Σ_k ‖x_k x_kᵀ − S‖_F²,
        α = min(β̄², δ²) / δ²      (0 when δ² = 0).

    Expanded so nothing D × D is formed: ‖S‖_F² = ‖X Xᵀ‖_F² / n², Σ_k ‖x_k x_kᵀ − S‖_F² =
    Σ_k ‖x_k‖⁴ − n ‖S‖_F², ‖S − μ I‖_F² = ‖S‖_F² − D μ² (the same estimator as
    scikit-learn's ``ledoit_wolf_shrinkage``, computed in O(n² D)).

    Args:
        centred: ``(n, D)`` rows with zero column means.

    Returns:
        α.
    """
    n, d = centred.shape
    sq_norms = np.einsum("ij,ij->i", centred, centred)
    mu = float(sq_norms.sum()) / (n * d)
    gram = centred @ centred.T
    s_fro2 = float(np.sum(gram * gram)) / n**2
    beta2 = (float(np.sum(sq_norms**2)) / n - s_fro2) / (n * d)
    delta2 = (s_fro2 - d * mu**2) / d
    if delta2 <= 0:
        return 0.0
    return float(min(max(beta2, 0.0), delta2) / delta2)


def hscore_reg(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    shrinkage: float | None = None,
) -> float:
    """H-score with a shrinkage covariance: informative even when n ≤ D.

    The plain :func:`hscore` inverts cov(f), which with fewer samples than features fits
    the class means exactly and returns K − 1 for every model. Following Ibrahim et al.,
    "Newer is not always better: rethinking transferability metrics, their peculiarities,
    stability and performance" (ECML-PKDD 2022), cov(f) is replaced by its shrinkage
    estimate and the between-class term is scaled alike:

        Σ_α = (1 − α) Σ + α μ I,     μ = tr Σ / D,
        H_α(f) = tr( Σ_α⁻¹ (1 − α) Σ_B ),

    with Σ = cov(f), Σ_B = cov(E[f | y]) (both over the n samples) and α the Ledoit–Wolf
    shrinkage (:func:`ledoit_wolf_shrinkage`) unless ``shrinkage`` fixes it. From the thin
    SVD of the centred features f = U diag(s) Vᵀ, whose row space holds the class means:

        H_α = Σ_i (1 − α) ‖g v_i‖² / n  /  ((1 − α) s_i² / n + α μ).

    At α = 0 (and full rank) it is the plain H-score; it is < K − 1 whenever α > 0.

    Args:
        features: ``(n, D)`` features.
        labels: ``(n,)`` class indices.
        shrinkage: a fixed α in [0, 1]; None estimates it (Ledoit–Wolf).

    Returns:
        The regularised H-score, higher is better.

    Raises:
        ValueError: features not ``(n ≥ 2, D)`` or not finite, labels that do not match,
            or ``shrinkage`` outside [0, 1].
    """
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    f = _check(features)
    n, d = f.shape
    y = _labels(labels, n)
    f = f - f.mean(axis=0, keepdims=True)
    g = _class_mean_rows(f, y)
    alpha = ledoit_wolf_shrinkage(f) if shrinkage is None else float(shrinkage)
    mu = float(np.sum(f * f)) / (n * d)
    if mu == 0.0:  # every feature constant: nothing separates the classes
        return 0.0
    _, s, vt = np.linalg.svd(f, full_matrices=False)
    denom = (1.0 - alpha) * s**2 / n + alpha * mu
    proj = (g @ vt.T) ** 2 / n
    ok = denom > 0  # α = 0 with a rank-deficient f: the pseudo-inverse's convention
    return float((1.0 - alpha) * np.sum(proj[:, ok] / denom[ok]))


# ======================================================================= k-NN
def knn_accuracy(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    query_features: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    *,
    k: int = 10,
    chunk: int = 1024,
) -> float:
    """Accuracy of a k-nearest-neighbour vote under cosine similarity.

    Each query is labelled by the majority class among its ``k`` most cosine-similar
    training samples, ``cos(a, b) = aᵀb / (‖a‖ ‖b‖)`` (a zero vector has similarity 0 to
    everything). A tie between classes goes to the tied class whose member ranks nearest.
    With fewer than ``k`` training samples all of them vote.

    Args:
        train_features: ``(n, D)`` reference features.
        train_labels: ``(n,)`` their classes.
        query_features: ``(m, D)`` held-out features.
        query_labels: ``(m,)`` their classes.
        k: neighbours that vote.
        chunk: queries per similarity block (bounds memory at ``chunk × n``).

    Returns:
        Share of queries whose vote is their own class, in [0, 1].

    Raises:
        ValueError: mismatched shapes, ``k < 1`` or an empty query set.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    ref = _f64(train_features)
    q = _f64(query_features)
    if ref.ndim != 2 or q.ndim != 2 or ref.shape[1] != q.shape[1] or len(ref) == 0:
        raise ValueError(f"feature shapes {ref.shape} and {q.shape} do not match")
    if len(q) == 0:
        raise ValueError("no query samples")
    ref_y = _labels(train_labels, len(ref))
    q_y = _labels(query_labels, len(q))
    num_classes = int(max(ref_y.max(), q_y.max())) + 1

    def unit(x: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    ref, q = unit(ref), unit(q)
    kk = min(k, len(ref))
    correct = 0
    for start in range(0, len(q), chunk):
        sim = q[start : start + chunk] @ ref.T
        # the kk most similar, nearest first (stable, so equal similarities keep index order)
        top = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
        votes = ref_y[top]  # (m, kk)
        rows = np.arange(len(votes))
        counts = np.zeros((len(votes), num_classes), dtype=np.int64)
        first = np.full((len(votes), num_classes), kk, dtype=np.int64)
        for j in range(kk - 1, -1, -1):  # backwards: the nearest occurrence is written last
            np.add.at(counts, (rows, votes[:, j]), 1)
            first[rows, votes[:, j]] = j
        # most votes first; among equal counts the class whose first vote ranks nearest
        pred = np.argmax(counts * (kk + 1) - first, axis=1)
        correct += int((pred == q_y[start : start + chunk]).sum())
    return correct / len(q)


# ================================================================= subsampling
def stratified_indices(
    labels: np.ndarray | torch.Tensor, size: int, *, seed: int = 0
) -> np.ndarray:
    """A seeded, class-stratified sample of at most ``size`` positions.

    Each class present gets a share proportional to its count (largest remainder, ties to
    the lower class index), at least one sample while ``size`` allows, and never more than
    it has; within a class the positions are a seeded permutation's prefix, drawn
    independently of every other class (so adding data to one class does not reshuffle the
    others).

    Args:
        labels: ``(n,)`` class indices.
        size: the cap; ``size ≥ n`` returns every position.
        seed: seed of the per-class draws.

    Returns:
        Sorted int64 positions into ``labels``.

    Raises:
        ValueError: ``size < 1``.
    """
    if size < 1:
        raise ValueError(f"size must be ≥ 1, got {size}")
    y = _labels(labels, len(labels))
    n = len(y)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    alloc = np.zeros(len(classes), dtype=np.int64)
    if size >= len(classes):  # one each first, so a rare class is never dropped
        alloc[:] = 1
    quota = (size - alloc.sum()) * (counts - alloc) / max(int((counts - alloc).sum()), 1)
    alloc += np.floor(quota).astype(np.int64)
    alloc = np.minimum(alloc, counts)
    order = np.lexsort((np.arange(len(classes)), -(quota - np.floor(quota))))
    rest = size - int(alloc.sum())
    while rest > 0:
        for i in order:
            if rest and alloc[i] < counts[i]:
                alloc[i] += 1
                rest -= 1
    picked = [
        np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(y == c))[: int(a)]
        for c, a in zip(classes, alloc, strict=True)
        if a > 0
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)
