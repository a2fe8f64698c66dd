"""Splits: hold-out, few-shot sampling, caps and the :class:`DataSplits` of one run.

Every random choice is stratified by class and seeded; each kind of choice draws from
its own stream (a salt), and each class from its own generator, so:

* the hold-out (``val_fraction``, ``test_fraction``) keeps at least one training image
  per class, and changing ``test_fraction`` does not change the validation images;
* few-shot sampling (``samples_per_class``) happens after the hold-out, so validation
  and test sets do not change with the shot count, and for a fixed seed a smaller shot
  count is a subset of a larger one;
* caps (``max_test_samples``, :func:`subsample`) keep per-class counts proportional
  (largest remainder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset, Subset

from nctune.data.datasets import ImageDataset
from nctune.errors import DataError

# Salts for the seeded generators, so each random choice has its own stream.
_SALT_HOLDOUT, _SALT_FEWSHOT, _SALT_TESTCAP, _SALT_SUBSAMPLE = 1, 2, 3, 4


@dataclass
class DataSplits:
    """The datasets of one run.

    Attributes:
        train: training split (augmented iff ``data.augment``).
        val: validation split, or None (``val_fraction`` 0 and no official split).
        test: test split, or None.
        classes: class names; a label is an index into this list.
        source: where the data came from, e.g. ``'fashion_mnist (vendored subset)'``.
        image_size: the side ``T`` of every image tensor (3, T, T).
    """

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    classes: list[str]
    source: str
    image_size: int = 0

    _SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    @property
    def num_classes(self) -> int:
        """K, the number of classes (``len(classes)``)."""
        return len(self.classes)

    def describe(self) -> str:
        """One line: sizes per split, classes, image size and source.

        Returns:
            E.g. ``'digits (scikit-learn): train 1,617 / val 180 / test - images, 10
            classes, 224x224 px'`` (``-`` for a missing split).
        """
        parts = []
        for name in self._SPLITS:
            ds = getattr(self, name)
            parts.append(f"{name} {len(ds):,}" if ds is not None else f"{name} -")
        return (
            f"{self.source}: {' / '.join(parts)} images, {self.num_classes} classes, "
            f"{self.image_size}x{self.image_size} px"
        )

    def verify(self, max_images: int | None = None) -> None:
        """Decode up to ``max_images`` images of each split that decodes per sample.

        Files (and torchvision sets not held in memory) are otherwise read lazily, so a
        corrupt one would only surface mid-epoch; calling this first turns it into an
        up-front DataError naming the file. In-memory splits are skipped.

        Args:
            max_images: how many images to decode per split, from the first (None: all).

        Raises:
            DataError: an image cannot be read; the message names the first bad one.
        """
        for name in self._SPLITS:
            ds = getattr(self, name)
            if isinstance(ds, ImageDataset):
                ds.verify(max_images)


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up; Python's round() is half-to-even


def _allocate(counts: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` across classes ∝ ``counts`` (largest remainder), class k ≤ caps[k]."""
    quota = total * counts / max(int(counts.sum()), 1)
    alloc = np.minimum(np.floor(quota).astype(np.int64), caps)
    # largest fractional part first; ties by class index, so the result is deterministic
    order = np.lexsort((np.arange(len(counts)), -(quota - np.floor(quota))))
    rest = total - int(alloc.sum())
    while rest > 0:
        grew = False
        for k in order:
            if rest == 0:
                break
            if alloc[k] < caps[k]:
                alloc[k] += 1
                rest -= 1
                grew = True
        if not grew:
            break
    return alloc


def _class_perm(members: np.ndarray, seed: int, salt: int, k: int) -> np.ndarray:
    """A seeded permutation of one class's indices, independent of every other class."""
    return np.random.default_rng([seed, salt, k]).permutation(members)


def _stratified_pick(labels: np.ndarray, alloc: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """``alloc[k]`` seeded indices of each class k; sorted."""
    picked = [
        _class_perm(np.flatnonzero(labels == k), seed, salt, k)[: int(n)]
        for k, n in enumerate(alloc)
        if n > 0
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _holdout(
    labels: np.ndarray, num_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val, test) indices of one pool; each class keeps ≥ 1 train.

    Val is the first part of each class's permutation and test the next, so changing
    ``test_fraction`` does not change the validation images.
    """
    n = len(labels)
    counts = np.bincount(labels, minlength=num_classes)
    want_val = max(1, _round(val_fraction * n)) if val_fraction > 0 else 0
    want_test = max(1, _round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = _allocate(counts, want_val, np.maximum(counts - 1, 0))
    n_test = _allocate(counts, want_test, np.maximum(counts - 1 - n_val, 0))
    if want_val and n_val.sum() == 0:
        raise DataError(
            f"data.val_fraction={val_fraction}: {n} training images leave an empty validation "
            "split; raise val_fraction, add images, or set it to 0"
        )
    if want_test and n_test.sum() == 0:
        raise DataError(
            f"data.test_fraction={test_fraction}: {n} training images leave an empty test "
            "split; raise test_fraction, add images, or set it to 0"
        )
    train, val, test = [], [], []
    for k in range(num_classes):
        perm = _class_perm(np.flatnonzero(labels == k), seed, _SALT_HOLDOUT, k)
        v, t = int(n_val[k]), int(n_test[k])
        val.append(perm[:v])
        test.append(perm[v : v + t])
        train.append(perm[v + t :])
    tr, va, te = (np.sort(np.concatenate(p)).astype(np.int64) for p in (train, val, test))
    return tr, va, te


def _few_shot(labels: np.ndarray, classes: list[str], per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` seeded indices of each class (nested across shot counts)."""
    picked = []
    for k, name in enumerate(classes):
        members = np.flatnonzero(labels == k)
        if len(members) == 0:
            raise DataError(
                f"data.samples_per_class={per_class}: class {name!r} has no training images"
            )
        picked.append(_class_perm(members, seed, _SALT_FEWSHOT, k)[:per_class])
    return np.sort(np.concatenate(picked))


def _cap(labels: np.ndarray, num_classes: int, limit: int, seed: int, salt: int) -> np.ndarray:
    """A stratified seeded sample of at most ``limit`` indices (all of them if fewer)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=num_classes)
    return _stratified_pick(labels, _allocate(counts, limit, counts), seed, salt)


def subsample(dataset: Dataset, max_samples: int | None, *, seed: int = 0) -> Dataset:
    """A stratified, seeded subset of at most ``max_samples`` samples (e.g. for analysis).

    Args:
        dataset: an nctune dataset (anything else is subset with the first samples).
        max_samples: the cap; None or ≥ len(dataset) returns the dataset itself.
        seed: seed of the per-class choice.

    Returns:
        For an nctune dataset, one of the same kind whose per-class counts are
        proportional to the original ones (largest remainder); for any other dataset, a
        :class:`~torch.utils.data.Subset` of its first ``max_samples`` samples.
    """
    if max_samples is None or len(dataset) <= max_samples:  # type: ignore[arg-type]
        return dataset
    if isinstance(dataset, ImageDataset):
        k = int(dataset.targets.max()) + 1
        return dataset.subset(_cap(dataset.targets, k, max_samples, seed, _SALT_SUBSAMPLE))
    return Subset(dataset, range(max_samples))
