"""Datasets, splits, few-shot sampling and transforms.

:func:`build_data` turns a :class:`~nctune.config.DataConfig` and a backbone's input
config into :class:`DataSplits` (train / val / test datasets yielding
``(float32 (3, H, W) normalised image, int label)``); :func:`make_loader` wraps one in a
seeded :class:`~torch.utils.data.DataLoader`.

The package, by concept:

* :mod:`~nctune.data.build` — :func:`build_data`: source → hold-out → few-shot → caps →
  datasets.
* :mod:`~nctune.data.sources` — one module per ``data.source`` (``fashion_mnist``,
  ``imagefolder``, ``csv``, ``torchvision``, ``digits``), each registered in
  :data:`SOURCES`; ``sources/_base.py`` holds what they share.
* :mod:`~nctune.data.splits` — stratified, seeded hold-out, few-shot sampling, caps,
  :func:`subsample` and :class:`DataSplits`.
* :mod:`~nctune.data.datasets` — :class:`ImageDataset` and its in-memory, file and
  torchvision kinds.
* :mod:`~nctune.data.input_config` — :func:`resolve_input_config`: the one place that
  combines a backbone's input config with ``data.image_size`` (the side every transform,
  saved run and export uses).
* :mod:`~nctune.data.transforms` — :func:`eval_transform` (timm's eval transform with
  PIL), the batched uint8 resize of in-memory images, augmentation.
* :mod:`~nctune.data.loaders` — :func:`make_loader`.

Every problem with the input raises :class:`~nctune.errors.DataError` with one line that
names the field or file, including unreadable images met while iterating (also from
loader worker processes). Configuration is used for annotations only: this package never
imports :mod:`nctune.config` at run time (config validates ``data.source`` against
:data:`SOURCES`).
"""

from __future__ import annotations

from nctune.data.build import build_data
from nctune.data.datasets import FileImageDataset, ImageDataset, TensorImageDataset, open_image
from nctune.data.input_config import InputConfigLike, resolve_input_config
from nctune.data.loaders import make_loader
from nctune.data.sources import SOURCES, list_sources
from nctune.data.sources.csv import ManifestRow, read_manifest
from nctune.data.sources.fashion_mnist import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES
from nctune.data.sources.imagefolder import IMG_EXTENSIONS, list_images
from nctune.data.splits import DataSplits, subsample
from nctune.data.transforms import eval_transform

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IMG_EXTENSIONS",
    "SOURCES",
    "DataSplits",
    "FileImageDataset",
    "ImageDataset",
    "InputConfigLike",
    "ManifestRow",
    "TensorImageDataset",
    "build_data",
    "eval_transform",
    "list_images",
    "list_sources",
    "make_loader",
    "open_image",
    "read_manifest",
    "resolve_input_config",
    "subsample",
]
