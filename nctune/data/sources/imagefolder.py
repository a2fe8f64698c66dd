"""``data.source: imagefolder`` — one folder per class under ``data.path``.

With ``train/`` plus ``val/`` (or ``valid/``, ``validation/``) and/or ``test/``
subfolders those are the splits; otherwise ``data.path`` itself holds the class
folders of the training pool. Classes are the training split's folder names, sorted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nctune.data.sources._base import (
    SOURCES,
    _check_classes,
    _Pool,
    _require_path,
    _short_list,
    _Source,
)
from nctune.errors import DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted.

    Args:
        folder: the folder to walk (symbolic links followed).

    Returns:
        Paths of files whose extension is in :data:`IMG_EXTENSIONS`, sorted.
    """
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files if not f.startswith(".") and _is_image(f))
    return sorted(found)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_pool(folder: Path, classes: list[str], where: str, *, is_train: bool) -> _Pool:
    paths: list[str] = []
    labels: list[int] = []
    index = {c: i for i, c in enumerate(classes)}
    for name in _class_dirs(folder):
        if name not in index:
            raise DataError(
                f"data.path: {folder / name} is not a class of the training split "
                f"(classes: {_short_list(classes)}); rename or remove it"
            )
        files = list_images(folder / name)
        if not files and is_train:
            raise DataError(
                f"data.path: class folder {folder / name} has no images "
                f"({', '.join(IMG_EXTENSIONS[:4])}, …); add some or remove the folder"
            )
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise DataError(
            f"data.path: {folder} has no images in class folders ({where} split is empty)"
        )
    return _Pool(labels=np.asarray(labels, dtype=np.int64), paths=paths)


def _subdir(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


@SOURCES.register("imagefolder")
def _load_imagefolder(cfg: DataSection) -> _Source:
    """class folders under 'path'."""
    root = _require_path(cfg, "a folder of class folders")
    if not root.is_dir():
        raise DataError(
            f"data.path: {root} is not a folder (data.source=imagefolder needs class folders)"
        )
    train_dir = _subdir(root, "train")
    val_dir = _subdir(root, "val", "valid", "validation")
    test_dir = _subdir(root, "test")
    if train_dir is None or (val_dir is None and test_dir is None):
        train_dir, val_dir, test_dir = root, None, None
    classes = _class_dirs(train_dir)
    _check_classes(classes, f"data.path: {train_dir}", "class folders")
    train = _folder_pool(train_dir, classes, "train", is_train=True)
    val = _folder_pool(val_dir, classes, "val", is_train=False) if val_dir else None
    test = _folder_pool(test_dir, classes, "test", is_train=False) if test_dir else None
    return _Source(classes, f"imagefolder:{root}", train, val, test)
