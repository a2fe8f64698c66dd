"""Neural-collapse maths as pure functions.

Two kinds of function live here:

* private ``_batch_sums`` / ``_reshift`` (update) and ``_geometry`` / ``_trace_ratio`` /
  ``_cdnv`` (compute): the halves of :class:`~nctune.collapse.CollapseStats`
  (torchmetrics' ``_update``/``_compute`` split), written over the additive sufficient statistics

      n_k,  s_k = Σ_{y=k} (h − c),  S = Σ (h − c)(h − c)ᵀ,  q_k = Σ_{y=k} ‖h − c‖²

  with a fixed shift ``c`` that keeps float64 sums free of cancellation;
* public functions that take a full feature matrix (``nc1``, ``trace_ratio``, ``cdnv``,
  ``nc2``) or class means (``nc3``, ``ncc_accuracy``) for callers who already hold them.

Everything is float64. No ``nn.Module`` knowledge: features are ``(N, D)`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Eigenvalues of Σ_B below this fraction of the largest count as zero in Σ_B⁺.
PINV_RTOL = 1e-10

_EPS32 = torch.finfo(torch.float32).eps
_EPS64 = torch.finfo(torch.float64).eps


def resolution(dtype: torch.dtype) -> float:
    """The relative precision of features of ``dtype``: its machine epsilon (integers: 0).

    Args:
        dtype: the dtype the features were given in (before the float64 sums).

    Returns:
        ``torch.finfo(dtype).eps`` for floating dtypes, else 0 (integers are exact).
    """
    return torch.finfo(dtype).eps if dtype.is_floating_point else 0.0


def same_feature_rtol(eps: float) -> float:
    """How small a spread, relative to the squared feature magnitude, is rounding noise.

    Features of identical images still differ by the rounding of the network's arithmetic,
    so "every feature is the same" is a test against a floor proportional to ‖μ‖²: for
    float32 (or coarser) features that floor is ``PINV_RTOL`` (a relative spread of 1e-5,
    about 80 float32 epsilons), and for finer features it shrinks with the square of their
    epsilon,

        ρ(ε) = PINV_RTOL · min(1, (max(ε, ε₆₄) / ε₃₂)²)     (≈ 3.5e-28 for float64)

    so a float64 offset of 1e5× the spread is data, not noise. The spread itself is measured
    around the shift c, so it never cancels against the offset.

    Args:
        eps: the coarsest :func:`resolution` of the features fed.

    Returns:
        ρ(ε).
    """
    return PINV_RTOL * min(1.0, (max(eps, _EPS64) / _EPS32) ** 2)


def accumulation_device(device: torch.device) -> torch.device:
    """Device for float64 sums: the features' own, except MPS (no float64) → CPU.

    Args:
        device: device the features live on.

    Returns:
        ``device`` itself, or ``cpu`` when ``device`` is MPS.
    """
    return torch.device("cpu") if device.type == "mps" else device


@dataclass
class _Sums:
    """Additive first-pass state (all float64, shifted by ``shift``)."""

    counts: torch.Tensor  # (K,)   n_k
    sums: torch.Tensor  # (K, D) s_k
    sq_norms: torch.Tensor  # (K,)   q_k
    second_moment: torch.Tensor | None  # (D, D) S, None in two-pass mode

    def map(self, fn) -> _Sums:
        """Apply ``fn`` to every tensor (e.g. ``.to(device)``, ``.clone()``)."""
        s = self.second_moment
        return _Sums(
            fn(self.counts), fn(self.sums), fn(self.sq_norms), None if s is None else fn(s)
        )


def _batch_sums(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    with_second_moment: bool,
    into: _Sums | None = None,
) -> _Sums:
    """One batch's contribution, added in place to ``into`` when given (and returned).

    ``x`` is already shifted float64 ``(B, D)``.
    """
    k, d = num_classes, x.shape[1]
    if into is None:
        z = torch.zeros
        opts = {"dtype": torch.float64, "device": x.device}
        second = z(d, d, **opts) if with_second_moment else None
        into = _Sums(z(k, **opts), z(k, d, **opts), z(k, **opts), second)
    into.counts += torch.bincount(labels, minlength=k).to(torch.float64)
    into.sums.index_add_(0, labels, x)
    into.sq_norms.index_add_(0, labels, x.square().sum(dim=1))
    if into.second_moment is not None:
        # One GEMM per batch, the only O(B·D²) work of the whole engine; addmm_ adds it in
        # place, without a D×D temporary and a second pass over S.
        into.second_moment.addmm_(x.T, x)
    return into


def _reshift(s: _Sums, delta: torch.Tensor) -> _Sums:
    """Re-express sums taken around shift ``c`` as sums around ``c' = c − delta``.

    With x' = x + δ:  s'_k = s_k + n_k δ,  q'_k = q_k + 2 δ·s_k + n_k ‖δ‖²,
    S' = S + (Σx) δᵀ + δ (Σx)ᵀ + N δ δᵀ. Exact, so states with different shifts merge.
    """
    total = s.sums.sum(dim=0)
    n = s.counts.sum()
    sums = s.sums + s.counts[:, None] * delta[None, :]
    sq = s.sq_norms + 2.0 * (s.sums @ delta) + s.counts * delta.dot(delta)
    second = None
    if s.second_moment is not None:
        outer = torch.outer(total, delta)
        second = s.second_moment + outer + outer.T + n * torch.outer(delta, delta)
    return _Sums(s.counts.clone(), sums, sq, second)


def _nc1_directions(centred_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of Σ_B: thin SVD of Mᶜ (D×K) → (U (D×r), σ² (r,)), small σ² dropped.

    Σ_B = (1/K) Mᶜ Mᶜᵀ = U diag(σ²/K) Uᵀ, so its eigenvalues are σ²/K and the
    relative cut-off on eigenvalues is the same cut-off on σ².
    """
    u, sigma, _ = torch.linalg.svd(centred_means, full_matrices=False)
    sigma2 = sigma.square()
    keep = sigma2 > PINV_RTOL * sigma2.max()
    return u[:, keep], sigma2[keep]


@dataclass(frozen=True)
class _Geometry:
    """Class-level quantities shared by every metric (present classes only)."""

    classes: torch.Tensor  # (K',) int64 labels with ≥ 1 sample
    counts: torch.Tensor  # (K',)
    means: torch.Tensor  # (K', D) shifted class means m_k
    global_mean: torch.Tensor  # (D,) shifted μ_G
    variances: torch.Tensor  # (K',) σ_k² = mean ‖h − μ_k‖²
    num_samples: int


def _geometry(s: _Sums) -> _Geometry:
    present = s.counts > 0
    counts = s.counts[present]
    sums = s.sums[present]
    means = sums / counts[:, None]
    n = counts.sum()
    global_mean = sums.sum(dim=0) / n
    variances = (s.sq_norms[present] / counts - means.square().sum(dim=1)).clamp_min(0.0)
    classes = torch.nonzero(present).flatten()
    return _Geometry(classes, counts, means, global_mean, variances, int(n.item()))


def _trace_ratio(g: _Geometry) -> tuple[float, float]:
    """(tr Σ_W, tr Σ_B): tr Σ_W = Σ_k n_k σ_k² / N, tr Σ_B = mean_k ‖μ_k − μ_G‖²."""
    tr_w = (g.counts * g.variances).sum() / g.num_samples
    tr_b = (g.means - g.global_mean).square().sum(dim=1).mean()
    return float(tr_w), float(tr_b)


def _pairwise_sq_dists(means: torch.Tensor) -> torch.Tensor:
    """‖μ_i − μ_j‖² via the Gram matrix of centred means (K×K, no K×K×D tensor)."""
    c = means - means.mean(dim=0)
    gram = c @ c.T
    diag = gram.diagonal()
    return (diag[:, None] + diag[None, :] - 2.0 * gram).clamp_min(0.0)


def _cdnv(g: _Geometry) -> float:
    """mean_{i<j} (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²)  (Galanti et al. 2022)."""
    k = g.means.shape[0]
    iu = torch.triu_indices(k, k, offset=1, device=g.means.device)
    d2 = _pairwise_sq_dists(g.means)[iu[0], iu[1]]
    num = g.variances[iu[0]] + g.variances[iu[1]]
    return float((num / (2.0 * d2)).mean())


def nc2_from_means(class_means: torch.Tensor, global_mean: torch.Tensor) -> tuple[float, float]:
    """NC2 of class means: (equinorm, equiangle).

    With c_k = μ_k − μ_G:
        equinorm  = std_k ‖c_k‖ / mean_k ‖c_k‖          (population std)
        equiangle = mean_{i<j} |cos(c_i, c_j) + 1/(K−1)|
    Both are 0 for a simplex equiangular tight frame.

    Args:
        class_means: ``(K, D)`` class means, ``K ≥ 2``.
        global_mean: ``(D,)`` mean of all samples.

    Returns:
        ``(equinorm, equiangle)`` as floats; equiangle is NaN when some c_k = 0.
    """
    c = class_means.to(torch.float64) - global_mean.to(torch.float64)
    k = c.shape[0]
    norms = c.norm(dim=1)
    equinorm = norms.std(unbiased=False) / norms.mean()
    unit = c / norms[:, None]
    cos = unit @ unit.T
    iu = torch.triu_indices(k, k, offset=1, device=c.device)
    equiangle = (cos[iu[0], iu[1]] + 1.0 / (k - 1)).abs().mean()
    return float(equinorm), float(equiangle)


def nc3(
    classifier_weight: torch.Tensor, class_means: torch.Tensor, global_mean: torch.Tensor
) -> float:
    """NC3, self-duality of classifier and class means.

        NC3 = ‖ W/‖W‖_F − Mᶜᵀ/‖Mᶜ‖_F ‖_F,   Mᶜ = [μ_k − μ_G]  (D×K)

    Args:
        classifier_weight: ``(K, D)`` last-layer weight, rows in the same class order as
            ``class_means`` (select ``W[metrics.classes]`` when some classes are absent).
        class_means: ``(K, D)``.
        global_mean: ``(D,)``.

    Returns:
        A value in [0, 2]; 0 when W ∝ Mᶜᵀ.

    Raises:
        ValueError: ``classifier_weight`` and ``class_means`` differ in shape.
    """
    w = classifier_weight.detach().to(torch.float64)
    mct = class_means.to(torch.float64) - global_mean.to(torch.float64)
    if w.shape != mct.shape:
        raise ValueError(f"classifier weight {tuple(w.shape)} != class means {tuple(mct.shape)}")
    return float((w / w.norm() - mct / mct.norm()).norm())


def ncc_predict(
    features: torch.Tensor, class_means: torch.Tensor, classes: torch.Tensor | None = None
) -> torch.Tensor:
    """Nearest-class-centre labels: ŷ(h) = argmin_k ‖h − μ_k‖ (``classes[k]`` when given).

    Ties go to the lowest row of ``class_means``.

    Args:
        features: ``(N, D)`` features, any float dtype and device.
        class_means: ``(K, D)`` class means μ_k.
        classes: ``(K,)`` label of each row of ``class_means`` (default ``0..K−1``).

    Returns:
        ``(N,)`` int64 predicted labels on ``class_means``' device.
    """
    x = features.detach().to(device=class_means.device, dtype=torch.float64)
    means = class_means.to(torch.float64)
    # ‖h−μ‖² = ‖h‖² − 2h·μ + ‖μ‖²; ‖h‖² is common to all k, so it can be dropped.
    scores = x @ means.T - 0.5 * means.square().sum(dim=1)
    idx = scores.argmax(dim=1)
    return idx if classes is None else classes.to(idx.device)[idx]


def ncc_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_means: torch.Tensor,
    classes: torch.Tensor | None = None,
) -> float:
    """Share of samples whose nearest training class mean is their own class.

    Args:
        features: ``(N, D)`` held-out features.
        labels: ``(N,)`` their labels.
        class_means: ``(K, D)`` training class means.
        classes: label of each row of ``class_means`` (default ``0..K−1``).

    Returns:
        Accuracy in [0, 1]: (1/N) Σ_i [argmin_k ‖h_i − μ_k‖ = y_i].

    Raises:
        ValueError: no samples, or ``labels`` not of shape ``(N,)``.
    """
    if features.shape[0] == 0:
        raise ValueError("ncc_accuracy needs at least one sample")
    if labels.shape != features.shape[:1]:  # (N, 1) labels would broadcast to N×N
        raise ValueError(f"labels must be ({features.shape[0]},), got shape {tuple(labels.shape)}")
    pred = ncc_predict(features, class_means, classes)
    return float((pred.cpu() == labels.detach().cpu()).double().mean())
