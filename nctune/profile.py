"""Result types of a collapse measurement: one layer, and a whole layer-wise profile.

The ground floor of everything that reads a profile (selection, strategies, report):
it imports only :mod:`nctune.collapse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nctune.collapse import CollapseMetrics

__all__ = ["PRE_LOGITS", "CollapseProfile", "LayerCollapse"]

#: Name of the pseudo-layer holding the classifier's input (penultimate features).
PRE_LOGITS = "pre_logits"


@dataclass(frozen=True)
class LayerCollapse:
    """Collapse of one tapped layer.

    Attributes:
        index: depth order, 0 = shallowest.
        name: module path (PEFT ``target_modules`` form), or ``"pre_logits"``.
        dim: pooled feature width.
        metrics: every collapse metric on the training split.
        ncc_accuracy: nearest-class-centre accuracy on the validation split (None without one).
        tunable: False for the pre-logits pseudo-layer, which is not a block one can tune.
    """

    index: int
    name: str
    dim: int
    metrics: CollapseMetrics = field(repr=False)
    ncc_accuracy: float | None
    tunable: bool = True

    @property
    def nc1(self) -> float:
        return self.metrics.nc1

    def __repr__(self) -> str:
        # the metrics object is long; NC1 is the number a reader wants next to the name
        ncc = "None" if self.ncc_accuracy is None else f"{self.ncc_accuracy:.4g}"
        return (
            f"LayerCollapse(index={self.index}, name={self.name!r}, dim={self.dim}, "
            f"nc1={self.nc1:.4g}, ncc_accuracy={ncc}, tunable={self.tunable})"
        )

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "index": self.index,
            "name": self.name,
            "dim": self.dim,
            "nc1": m.nc1,
            "trace_ratio": m.trace_ratio,
            "cdnv": m.cdnv,
            "ncc_accuracy": self.ncc_accuracy,
            "nc2_equinorm": m.nc2_equinorm,
            "nc2_equiangle": m.nc2_equiangle,
            "tunable": self.tunable,
        }


@dataclass
class CollapseProfile:
    """Layer-wise neural collapse of a model on one dataset.

    Attributes:
        layers: one entry per tapped layer, shallow → deep.
        num_samples: training samples measured.
        num_classes: classes present in them.
        seconds: wall time of the measurement passes.
        backbone: the backbone spec, when known.
        dataset: a description of the data, when known.
    """

    layers: list[LayerCollapse]
    num_samples: int
    num_classes: int
    seconds: float
    backbone: str | None = None
    dataset: str | None = None

    def __getitem__(self, name: str) -> LayerCollapse:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def blocks(self) -> list[LayerCollapse]:
        """The tunable layers (everything but ``pre_logits``)."""
        return [layer for layer in self.layers if layer.tunable]

    @property
    def penultimate(self) -> LayerCollapse:
        """The deepest layer: pre-logits when tapped, else the last block."""
        return self.layers[-1]

    def to_dict(self) -> dict[str, Any]:
        """The ``analysis.json`` body (without the recommendation, which the caller adds)."""
        return {
            "backbone": self.backbone,
            "dataset": self.dataset,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "seconds": self.seconds,
            "layers": [layer.to_dict() for layer in self.layers],
        }
