"""What the collapse statistics return: :class:`CollapseMetrics`, the metrics of one layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nctune.collapse.functional import nc3, ncc_accuracy


@dataclass(frozen=True)
class CollapseMetrics:
    """Neural-collapse metrics of one set of features (one layer).

    Attributes:
        nc1: (1/K) tr(Σ_W Σ_B⁺), within-class variability relative to between-class.
        trace_ratio: tr Σ_W / tr Σ_B.
        cdnv: mean over class pairs of (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²).
        nc2_equinorm: std_k ‖μ_k − μ_G‖ / mean_k ‖μ_k − μ_G‖.
        nc2_equiangle: mean_{i<j} |cos(μ_i − μ_G, μ_j − μ_G) + 1/(K−1)|.
        num_samples: N, samples seen.
        num_classes: K, classes with at least one sample (the K of every formula).
        dim: D, feature width.
        within_trace: tr Σ_W.
        between_trace: tr Σ_B.
        classes: ``(K,)`` labels of the classes present, in order.
        class_counts: ``(K,)`` samples per present class.
        class_means: ``(K, D)`` float64 class means μ_k (for NC3 and NCC).
        global_mean: ``(D,)`` float64 mean of all samples μ_G.
        mode: ``"full"`` or ``"two_pass"``, how Σ_W was accumulated.
    """

    nc1: float
    trace_ratio: float
    cdnv: float
    nc2_equinorm: float
    nc2_equiangle: float
    num_samples: int
    num_classes: int
    dim: int
    within_trace: float
    between_trace: float
    classes: torch.Tensor = field(repr=False)
    class_counts: torch.Tensor = field(repr=False)
    class_means: torch.Tensor = field(repr=False)
    global_mean: torch.Tensor = field(repr=False)
    mode: str = "full"

    def nc3(self, classifier_weight: torch.Tensor) -> float:
        """NC3 against a ``(K_declared, D)`` classifier weight (rows of present classes used).

            NC3 = ‖ W/‖W‖_F − Mᶜᵀ/‖Mᶜ‖_F ‖_F,   Mᶜ = [μ_k − μ_G]  (D×K)

        where W keeps the rows ``classifier_weight[self.classes]``.

        Args:
            classifier_weight: ``(K_declared, D)`` last-layer weight, one row per declared
                class in label order.

        Returns:
            A value in [0, 2]; 0 when W ∝ Mᶜᵀ.

        Raises:
            ValueError: the selected weight's shape differs from ``class_means``.
        """
        w = classifier_weight.detach().to(self.class_means.device)
        return nc3(w[self.classes], self.class_means, self.global_mean)

    def ncc_accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Nearest-class-centre accuracy of held-out ``features`` against these means.

            NCC accuracy = (1/N) Σ_i [argmin_k ‖h_i − μ_k‖ = y_i]

        Args:
            features: ``(N, D)`` held-out features.
            labels: ``(N,)`` their labels (declared label space).

        Returns:
            Accuracy in [0, 1].

        Raises:
            ValueError: no samples, or ``labels`` not of shape ``(N,)``.
        """
        return ncc_accuracy(features, labels, self.class_means, self.classes)

    def to_dict(self) -> dict[str, float | int | str]:
        """The scalar fields, JSON-ready.

        Returns:
            ``{name: value}`` for every field except the tensors ``classes``,
            ``class_counts``, ``class_means`` and ``global_mean``.
        """
        keys = (
            "nc1 trace_ratio cdnv nc2_equinorm nc2_equiangle num_samples num_classes dim "
            "within_trace between_trace mode"
        ).split()
        return {k: getattr(self, k) for k in keys}
