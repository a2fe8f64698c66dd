"""build_data: a recipe's ``data`` section + a backbone's input config → :class:`DataSplits`.

Looks the source up in :data:`~nctune.data.sources.SOURCES`, holds out validation and
test images where the source has no official split, samples few-shot training sets,
caps the test split, and wraps each pool in the dataset that fits it (in-memory,
files, or torchvision decoded per sample).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from nctune.data.datasets import (
    FileImageDataset,
    ImageDataset,
    TensorImageDataset,
    _TorchvisionDataset,
)
from nctune.data.input_config import resolve_input_config
from nctune.data.sources import SOURCES
from nctune.data.sources._base import _Pool, _Source
from nctune.data.splits import _SALT_TESTCAP, DataSplits, _cap, _few_shot, _holdout
from nctune.data.transforms import _Spec
from nctune.errors import ConfigError, DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection


def _dataset(src: _Source, pool: _Pool, spec: _Spec, *, augment: bool) -> ImageDataset:
    if pool.images is not None:
        return TensorImageDataset(pool.images, pool.labels, spec, augment=augment, flip=src.flip)
    if pool.paths is not None:
        return FileImageDataset(pool.paths, pool.labels, spec, augment=augment, flip=src.flip)
    assert pool.base is not None and pool.base_indices is not None
    return _TorchvisionDataset(
        pool.base, pool.base_indices, pool.labels, spec, augment=augment, name=src.tv_name
    )


def build_data(cfg: DataSection, input_config: Any, *, seed: int = 0) -> DataSplits:
    """Load ``cfg.source``, make the splits and wrap them in transforming datasets.

    Splits: an official validation/test split is used when the source has one; otherwise
    ``val_fraction`` and then ``test_fraction`` of the training pool are held out
    (stratified by class, seeded, every class keeping at least one training image; a
    fraction of 0 means no such split). ``samples_per_class`` then samples the remaining
    training images per class (a class with fewer keeps all of them), and
    ``max_test_samples`` caps the test split (stratified, seeded).

    Args:
        cfg: the recipe's ``data`` section.
        input_config: the backbone's input config — any object with ``image_size``,
            ``mean``, ``std``, ``interpolation`` and ``crop_pct``.
        seed: seed of every random choice (same seed, same splits and samples).

    Returns:
        The splits; ``train`` is augmented iff ``cfg.augment``, val/test never are.

    Raises:
        DataError: a missing path, unreadable or malformed file, unknown label or dataset
            name, fewer than two classes, a class without training images, or an empty
            split — one line naming the field or file.
        ConfigError: the input config asks for other than 3 input channels
            (``in_chans``), the resolved side is below ``MIN_IMAGE_SIZE``, or
            ``cfg.source`` is not a registered source.
    """
    src = SOURCES.get(cfg.source)(cfg)
    in_chans = int(getattr(input_config, "in_chans", 3) or 3)
    if in_chans != 3:
        raise ConfigError(
            f"backbone.model_kwargs.in_chans: nctune's data pipeline feeds 3-channel images "
            f"(grayscale is repeated), not {in_chans}; drop in_chans, or call nctune.analyze "
            "with your own DataLoader"
        )
    spec = _Spec.from_input_config(resolve_input_config(input_config, cfg))
    k = len(src.classes)
    train_pool, val_pool, test_pool = src.train, src.val, src.test

    val_frac = cfg.val_fraction if val_pool is None else 0.0
    test_frac = cfg.test_fraction if test_pool is None else 0.0
    if val_frac > 0 or test_frac > 0:
        tr, va, te = _holdout(train_pool.labels, k, val_frac, test_frac, seed)
        if val_frac > 0:
            val_pool = train_pool.take(va)
        if test_frac > 0:
            test_pool = train_pool.take(te)
        train_pool = train_pool.take(tr)

    counts = np.bincount(train_pool.labels, minlength=k)
    if (counts == 0).any():
        missing = src.classes[int(np.flatnonzero(counts == 0)[0])]
        raise DataError(
            f"{src.name}: class {missing!r} has no training images; add some or drop the class"
        )
    if cfg.samples_per_class is not None:
        train_pool = train_pool.take(
            _few_shot(train_pool.labels, src.classes, cfg.samples_per_class, seed)
        )
    if test_pool is not None and cfg.max_test_samples is not None:
        test_pool = test_pool.take(
            _cap(test_pool.labels, k, cfg.max_test_samples, seed, _SALT_TESTCAP)
        )

    return DataSplits(
        train=_dataset(src, train_pool, spec, augment=cfg.augment),
        val=None if val_pool is None else _dataset(src, val_pool, spec, augment=False),
        test=None if test_pool is None else _dataset(src, test_pool, spec, augment=False),
        classes=list(src.classes),
        source=src.name,
        image_size=spec.image_size,
    )
