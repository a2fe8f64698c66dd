"""Naive float64 numpy reference: the DESIGN §2 formulas on the full feature matrix."""

from __future__ import annotations

import itertools

import numpy as np


def reference_metrics(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric from the full (N, D) matrix, with np.linalg.pinv of Σ_B."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    k = len(classes)
    n = len(h)
    mu_g = h.mean(axis=0)
    means = np.stack([h[y == c].mean(axis=0) for c in classes])
    resid = h - means[np.searchsorted(classes, y)]
    sigma_w = resid.T @ resid / n
    mc = means - mu_g  # K × D
    sigma_b = mc.T @ mc / k
    # Σ_B⁺ with eigenvalues below 1e-10 × the largest treated as zero.
    evals, evecs = np.linalg.eigh(sigma_b)
    keep = evals > 1e-10 * evals.max()
    pinv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    variances = np.array(
        [((h[y == c] - means[i]) ** 2).sum(axis=1).mean() for i, c in enumerate(classes)]
    )
    pairs = list(itertools.combinations(range(k), 2))
    cdnv = np.mean(
        [(variances[i] + variances[j]) / (2 * ((means[i] - means[j]) ** 2).sum()) for i, j in pairs]
    )
    norms = np.linalg.norm(mc, axis=1)
    cos = (mc @ mc.T) / np.outer(norms, norms)
    equiangle = np.mean([abs(cos[i, j] + 1 / (k - 1)) for i, j in pairs])
    return {
        "nc1": float(np.trace(sigma_w @ pinv) / k),
        "trace_ratio": float(np.trace(sigma_w) / np.trace(sigma_b)),
        "cdnv": float(cdnv),
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_equiangle": float(equiangle),
        "within_trace": float(np.trace(sigma_w)),
        "between_trace": float(np.trace(sigma_b)),
    }


def reference_nc3(weight: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    h = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([h[labels == c].mean(axis=0) for c in classes])
    mct = means - h.mean(axis=0)
    w = np.asarray(weight, dtype=np.float64)
    return float(np.linalg.norm(w / np.linalg.norm(w) - mct / np.linalg.norm(mct)))


def reference_ncc(train_x, train_y, test_x, test_y) -> float:
    classes = np.unique(train_y)
    means = np.stack([np.asarray(train_x, np.float64)[train_y == c].mean(axis=0) for c in classes])
    d = ((np.asarray(test_x, np.float64)[:, None, :] - means[None]) ** 2).sum(-1)
    return float((classes[d.argmin(axis=1)] == test_y).mean())
