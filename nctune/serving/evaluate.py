"""Evaluate a fine-tuned run on labelled images: accuracy, top-k, per-class precision,
recall and F1, their macro and weighted averages, and the confusion matrix.

The images go through the serving path (:func:`~nctune.serving.inference.iter_predict`,
the run's own eval transform), so an evaluation of the run's test split reproduces its
``test_accuracy``. With N images of true class ``y_i``, predicted class ``ŷ_i`` and the
K×K confusion matrix ``C[t, p] = #{i : y_i = t, ŷ_i = p}``:

    accuracy        = Σ_k C[k, k] / N
    top-k accuracy  = #{i : y_i among the k most probable classes of image i} / N
    precision_k     = C[k, k] / Σ_t C[t, k]          (0 when class k is never predicted)
    recall_k        = C[k, k] / Σ_p C[k, p]          (0 when class k has no image)
    F1_k            = 2 C[k, k] / (Σ_t C[t, k] + Σ_p C[k, p])
    macro           = mean over the classes present (in the truth or the predictions)
    weighted        = Σ_k support_k · metric_k / N,  support_k = Σ_p C[k, p]

— scikit-learn's ``classification_report`` with ``zero_division=0``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nctune.config import load_recipe
from nctune.data import build_data
from nctune.errors import ArtifactError, ConfigError, DataError
from nctune.runs._io import RECIPE_FILE, atomic_write_json, check_writable
from nctune.serving.inference import _classes, _count, iter_predict, load_finetuned
from nctune.serving.inputs import labelled_images

__all__ = ["SPLITS", "ClassScores", "Evaluation", "evaluate", "scores_from_confusion"]

SPLITS = ("train", "val", "test")
#: The files :func:`evaluate` writes into ``out``.
RESULT_FILE = "evaluation.json"
CONFUSION_FILE = "confusion.png"
#: A dataset's images are decoded this many batches at a time (bounded memory).
CHUNK_BATCHES = 8


@dataclass
class ClassScores:
    """One class's row of an evaluation.

    Attributes:
        name: the class name.
        precision: share of the images predicted as this class that are of it.
        recall: share of this class's images predicted as it.
        f1: harmonic mean of precision and recall.
        support: images of this class.
    """

    name: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready row: ``class``, ``precision``, ``recall``, ``f1``, ``support``."""
        return {
            "class": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


@dataclass
class Evaluation:
    """What :func:`evaluate` measured (see the module docstring for the definitions).

    Attributes:
        run: the run evaluated (its folder; ``"<model>"`` for an in-memory model).
        data: what was evaluated: ``"split:test"`` (the run's own split) or the inputs.
        split: the run's split, or the manifest rows / split folder kept (None: all).
        classes: the run's class names, index order.
        num_images: images evaluated.
        num_failed: images that could not be read (left out of every metric).
        failed: ``{"path", "error"}`` of each of them.
        accuracy: top-1 accuracy.
        top_k: the k of ``top_k_accuracy`` (at most the number of classes).
        top_k_accuracy: share of images whose class is among the k most probable.
        per_class: one :class:`ClassScores` per class, index order.
        macro: unweighted mean ``precision``, ``recall``, ``f1`` over the present classes.
        weighted: support-weighted mean ``precision``, ``recall``, ``f1``.
        confusion: ``confusion[t][p]``: images of class t predicted as p.
        seconds: wall time.
        files: the files written (with ``out``), else empty.
    """

    run: str
    data: str
    split: str | None
    classes: list[str]
    num_images: int
    num_failed: int
    accuracy: float
    top_k: int
    top_k_accuracy: float
    per_class: list[ClassScores]
    macro: dict[str, float]
    weighted: dict[str, float]
    confusion: list[list[int]]
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the document ``evaluation.json`` and ``--json`` hold): the fields
        in their order, each class row as :meth:`ClassScores.to_dict` names it."""
        return {**asdict(self), "per_class": [c.to_dict() for c in self.per_class]}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def scores_from_confusion(
    confusion: np.ndarray, classes: list[str]
) -> tuple[list[ClassScores], dict[str, float], dict[str, float]]:
    """Per-class scores and their macro and weighted averages from a confusion matrix.

    Args:
        confusion: K×K counts, rows true classes, columns predicted ones.
        classes: the K class names.

    Returns:
        ``(per_class, macro, weighted)`` as defined in the module docstring.
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp, support, predicted = np.diag(c), c.sum(axis=1), c.sum(axis=0)
    metrics = {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, support),
        "f1": _ratio(2 * tp, support + predicted),
    }
    present = (support > 0) | (predicted > 0)
    total = support.sum()
    macro = {k: float(v[present].mean()) if present.any() else 0.0 for k, v in metrics.items()}
    weighted = {k: float((v * support).sum() / total) if total else 0.0 for k, v in metrics.items()}
    per_class = [
        ClassScores(
            name,
            float(metrics["precision"][i]),
            float(metrics["recall"][i]),
            float(metrics["f1"][i]),
            int(support[i]),
        )
        for i, name in enumerate(classes)
    ]
    return per_class, macro, weighted


def _own_split(run_dir: Path, model: nn.Module, split: str, classes: list[str]) -> tuple[Any, Any]:
    """The run's ``split`` rebuilt from its recipe: (items for iter_predict, labels)."""
    recipe_file = run_dir / RECIPE_FILE
    if not recipe_file.is_file():
        raise ArtifactError(
            f"{run_dir}: no {RECIPE_FILE} to rebuild the run's {split} split; give the images "
            "to evaluate (class folders or a labelled CSV manifest)"
        )
    recipe = load_recipe(recipe_file)
    # evaluated as validation and test images are: never augmented, train split included
    data_cfg = recipe.data.model_copy(update={"augment": False})
    splits = build_data(data_cfg, model.input_config, seed=recipe.seed)
    named = getattr(model, "classes", None) is not None  # else "0", "1", … by index
    if len(splits.classes) != len(classes) or (named and list(map(str, splits.classes)) != classes):
        raise ArtifactError(
            f"{recipe_file}: its data's classes ({', '.join(map(str, splits.classes[:5]))}, …) "
            "are not the model's; the data changed since the run — give the images to evaluate"
        )
    dataset = getattr(splits, split)
    if dataset is None:
        others = [s for s in SPLITS if getattr(splits, s) is not None]
        raise DataError(
            f"--split {split}: the run has no {split} split; use --split {others[-1]} "
            "or give the images to evaluate"
        )
    paths = getattr(dataset, "paths", None)
    # files go through the serving path by name (decoded in its threads); in-memory data
    # sets hand out their (already eval-transformed) tensors
    return (list(paths) if paths is not None else dataset), np.asarray(dataset.targets)


def _rows(model: nn.Module, items: Any, *, batch_size: int, k: int, workers: int | None):
    """:func:`iter_predict`'s rows for paths, or for a dataset's tensors a chunk at a time."""
    if isinstance(items, list):
        yield from iter_predict(model, items, batch_size=batch_size, top_k=k, workers=workers)
        return
    chunk = batch_size * CHUNK_BATCHES
    for start in range(0, len(items), chunk):
        xs = [items[i][0] for i in range(start, min(start + chunk, len(items)))]
        yield from iter_predict(model, xs, batch_size=batch_size, top_k=k, workers=workers)


def _write(evaluation: Evaluation, out: Path) -> None:
    from nctune.report.evaluation import plot_confusion  # matplotlib only when writing

    evaluation.files = [RESULT_FILE, CONFUSION_FILE]
    plot_confusion(evaluation, out / CONFUSION_FILE)
    atomic_write_json(out / RESULT_FILE, evaluation.to_dict())


def evaluate(
    run: str | Path | nn.Module,
    data: str | Path | list[str | Path] | None = None,
    *,
    split: str | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    workers: int | None = None,
    out: str | Path | None = None,
) -> Evaluation:
    """Evaluate a fine-tuned run on its own split, class folders or a labelled manifest.

    Every image goes through :func:`~nctune.serving.inference.iter_predict` with the run's
    eval transform; the metrics are those of the module docstring.

    Args:
        run: an ``nctune finetune`` folder (or its ``model.safetensors``), or a model from
            :func:`~nctune.serving.inference.load_finetuned` (then ``data`` is needed).
        data: None for the run's own ``split`` (rebuilt from its ``recipe.yaml``), else
            folders of class folders (or of train/val/test folders of them) and CSV
            manifests with a ``label`` column.
        split: the run's split (``train``, ``val`` or ``test``; default ``test``); with
            ``data``, a manifest's rows or a data set folder's split folder to keep.
        top_k: the k of the top-k accuracy (capped at the number of classes).
        batch_size: images per forward pass.
        device: where to run (default: CPU for a run folder, the model's own device).
        workers: threads decoding images (default ``min(4, CPUs)``).
        out: a folder to write ``evaluation.json`` and ``confusion.png`` into (each file
            atomically; other files in it are left alone).

    Returns:
        An :class:`Evaluation`.

    Raises:
        ConfigError: ``top_k`` or ``batch_size`` below 1, an unknown ``split``, a model
            without ``data``.
        DataError: labels that cannot be read (see
            :func:`~nctune.serving.inputs.labelled_images`), a split the run does not
            have, or no image that could be read.
        ArtifactError: not a run, no recipe to rebuild its split, or ``out`` not writable.
    """
    start = time.perf_counter()
    top_k = _count("top_k", top_k, 1)
    batch_size = _count("batch_size", batch_size, 1)
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split: {split!r} must be train, val or test")
    if out is not None:
        out = check_writable(out)
    if isinstance(run, nn.Module):
        if data is None:
            raise ConfigError("data: give the images to evaluate an in-memory model on")
        model, name = run, "<model>"
    else:
        model, name = load_finetuned(run, device=str(device or "cpu")), str(run)
        device = None
    classes = _classes(model)
    k = min(top_k, len(classes))
    if data is None:
        run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
        split = split or "test"
        items, labels = _own_split(run_dir, model, split, classes)
        described = f"split:{split}"
    else:
        inputs = [data] if isinstance(data, (str, Path)) else list(data)
        pairs = labelled_images(inputs, classes, split=split)
        items, labels = [p for p, _ in pairs], np.asarray([y for _, y in pairs])
        described = ", ".join(str(i) for i in inputs)
    if device is not None:
        model.to(device)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    hits, failed = 0, []
    rows = _rows(model, items, batch_size=batch_size, k=k, workers=workers)
    for y, row in zip(labels, rows, strict=True):
        if not row.ok:
            failed.append({"path": row.source, "error": row.error})
            continue
        confusion[int(y), row.index] += 1
        hits += any(index[lab] == y for lab, _ in row.top_k)
    n = int(confusion.sum())
    if n == 0:
        raise DataError(f"{described}: none of the {len(labels)} images could be read")
    per_class, macro, weighted = scores_from_confusion(confusion, classes)
    result = Evaluation(
        run=name,
        data=described,
        split=split,
        classes=classes,
        num_images=n,
        num_failed=len(failed),
        accuracy=float(np.trace(confusion) / n),
        top_k=k,
        top_k_accuracy=hits / n,
        per_class=per_class,
        macro=macro,
        weighted=weighted,
        confusion=confusion.tolist(),
        failed=failed,
    )
    result.seconds = time.perf_counter() - start
    if out is not None:
        _write(result, Path(out))
    return result
