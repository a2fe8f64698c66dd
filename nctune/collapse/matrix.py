"""Metrics of a whole feature matrix at once: ``nc1(features, labels)`` and friends.

Convenience wrappers for features already in memory (tests, notebooks, small sets). They
go through :class:`~nctune.collapse.CollapseStats`, so they share its checks and its exact
one-pass maths; they sit above :mod:`nctune.collapse.stats`, which is built on the pure
functions of :mod:`nctune.collapse.functional`.
"""

from __future__ import annotations

import torch

from nctune.collapse.metrics import CollapseMetrics
from nctune.collapse.stats import CollapseStats


def _full(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None) -> CollapseMetrics:
    k = int(labels.max().item()) + 1 if num_classes is None else num_classes
    return CollapseStats(k).update(features, labels).compute()


def nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """NC1 = (1/K) tr(Σ_W Σ_B⁺) of a full feature matrix (Papyan et al. 2020).

    Here Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and
    Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ. It is computed as Σ_j (u_jᵀ Σ_W u_j) / σ_j²
    over the thin SVD Mᶜ = U diag(σ) Vᵀ of the centred class means, so no D×D pseudo-inverse
    is formed; directions with σ_j² ≤ ``PINV_RTOL``·σ_max² are dropped.

    Args:
        features: ``(N, D)`` features, any float dtype and device.
        labels: ``(N,)`` integer labels in ``[0, K)``.
        num_classes: declared classes; default ``labels.max() + 1``. Classes without
            samples are left out, with a :class:`~nctune.collapse.CollapseWarning`
            (K in the formulas counts the classes present).

    Returns:
        NC1 ≥ 0; lower means more collapsed.

    Raises:
        CollapseError: fewer than two classes present, non-finite features, or labels
            outside ``[0, K)`` (see :class:`~nctune.collapse.CollapseStats`).
    """
    return _full(features, labels, num_classes).nc1


def trace_ratio(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> float:
    """Trace ratio = tr Σ_W / tr Σ_B of a full feature matrix (Tirer et al. 2023).

    tr Σ_W = (1/N) Σ_i ‖h_i − μ_{y_i}‖²,  tr Σ_B = (1/K) Σ_k ‖μ_k − μ_G‖².

    Args:
        features: ``(N, D)`` features, any float dtype and device.
        labels: ``(N,)`` integer labels in ``[0, K)``.
        num_classes: declared classes; default ``labels.max() + 1``. Classes without
            samples are left out, with a :class:`~nctune.collapse.CollapseWarning`
            (K in the formulas counts the classes present).

    Returns:
        The ratio, ≥ 0.

    Raises:
        CollapseError: fewer than two classes present, non-finite features, or labels
            outside ``[0, K)`` (see :class:`~nctune.collapse.CollapseStats`).
    """
    return _full(features, labels, num_classes).trace_ratio


def cdnv(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """Class-distance normalised variance, mean over class pairs (Galanti et al. 2022).

        CDNV = mean_{i<j} (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²),   σ_k² = mean_{y=k} ‖h − μ_k‖²

    Args:
        features: ``(N, D)`` features, any float dtype and device.
        labels: ``(N,)`` integer labels in ``[0, K)``.
        num_classes: declared classes; default ``labels.max() + 1``. Classes without
            samples are left out, with a :class:`~nctune.collapse.CollapseWarning`
            (K in the formulas counts the classes present).

    Returns:
        CDNV ≥ 0; not finite when two class means coincide.

    Raises:
        CollapseError: fewer than two classes present, non-finite features, or labels
            outside ``[0, K)`` (see :class:`~nctune.collapse.CollapseStats`).
    """
    return _full(features, labels, num_classes).cdnv


def nc2(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> tuple[float, float]:
    """NC2 (equinorm, equiangle) of a full feature matrix; see :func:`nc2_from_means`.

    With c_k = μ_k − μ_G:
        equinorm  = std_k ‖c_k‖ / mean_k ‖c_k‖
        equiangle = mean_{i<j} |cos(c_i, c_j) + 1/(K−1)|

    Args:
        features: ``(N, D)`` features, any float dtype and device.
        labels: ``(N,)`` integer labels in ``[0, K)``.
        num_classes: declared classes; default ``labels.max() + 1``. Classes without
            samples are left out, with a :class:`~nctune.collapse.CollapseWarning`
            (K in the formulas counts the classes present).

    Returns:
        ``(equinorm, equiangle)``; both 0 for a simplex equiangular tight frame.

    Raises:
        CollapseError: fewer than two classes present, non-finite features, or labels
            outside ``[0, K)`` (see :class:`~nctune.collapse.CollapseStats`).
    """
    m = _full(features, labels, num_classes)
    return m.nc2_equinorm, m.nc2_equiangle
