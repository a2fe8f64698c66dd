"""The confusion matrix of an evaluation (:class:`~nctune.serving.evaluate.Evaluation`,
taken duck-typed: report sits below serving) as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from nctune.report import _figure, _png
from nctune.runs._io import atomic_write_bytes

#: Above this many classes the cells are not annotated with their counts (unreadable).
MAX_ANNOTATED = 30
#: Above this many classes the axes are not labelled with every class name.
MAX_TICKS = 60


def confusion_figure(evaluation: Any) -> Figure:
    """Rows are true classes, columns predicted ones; each cell shows its count, coloured
    by the share of its row (the row's recall on the diagonal), so rare classes read as
    clearly as common ones.

    Args:
        evaluation: an :class:`~nctune.serving.evaluate.Evaluation` (``confusion``,
            ``classes``, ``accuracy``, ``num_images``).

    Returns:
        The figure (pyplot-free, on an Agg canvas).
    """
    counts = np.asarray(evaluation.confusion, dtype=np.int64)
    k = len(counts)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = min(4.0 + 0.35 * k, 16.0)
    fig = _figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if k <= MAX_ANNOTATED:
        for i in range(k):
            for j in range(k):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    if k <= MAX_TICKS:
        names = [str(c) for c in evaluation.classes]
        ax.set_xticks(
            range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center"
        )
        ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"Confusion matrix: {evaluation.num_images} images, "
        f"accuracy {100 * evaluation.accuracy:.1f} %"
    )
    return fig


def plot_confusion(evaluation: Any, path: str | Path) -> Path:
    """Write :func:`confusion_figure` as a PNG, atomically.

    Args:
        evaluation: an :class:`~nctune.serving.evaluate.Evaluation`.
        path: the PNG file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, _png(confusion_figure(evaluation)))
