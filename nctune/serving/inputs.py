"""Images named on a command line: files, folders, CSV manifests and data sets → images
(and labels).

A data set — WebDataset shards (a ``.tar``, a brace pattern, a folder of shards) or a
Hugging Face ``save_to_disk`` folder — gives one :class:`DataSample` per sample, read by
the data source's own reader and named ``SHARD#KEY`` or ``FOLDER#SPLIT/ROW``.

``predict`` takes any mix of them (:func:`expand_inputs`, :func:`expand_labelled`: a
labelled manifest's label travels beside its path); ``evaluate`` needs every image's true
class (:func:`labelled_images`: class folders or a manifest with a ``label`` column).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nctune.data import IMG_EXTENSIONS, list_images, read_manifest
from nctune.errors import DataError

__all__ = [
    "MANIFEST_EXTENSIONS",
    "DataSample",
    "expand_inputs",
    "expand_labelled",
    "labelled_images",
]

#: Manifest files among the inputs are read as ``path[,label][,split]`` lists of images.
MANIFEST_EXTENSIONS = (".csv",)
#: The split folders an image-folder data set may hold (as ``data.source: imagefolder``).
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MANIFEST_EXTENSIONS


@dataclass(frozen=True)
class DataSample:
    """One sample of a data set given as input: its name and where its image is read.

    Attributes:
        source: ``SHARD#KEY`` (WebDataset) or ``FOLDER#SPLIT/ROW`` (a saved HF dataset).
        base: the data source's reader (``base[index][0]`` is the RGB image).
        index: the sample's index in ``base``.
    """

    source: str
    base: Any
    index: int

    def image(self) -> Any:
        """The sample's RGB PIL image; DataError naming shard and key (or row) if corrupt."""
        return self.base[self.index][0]


def _data_set(path: Path, raw: str | Path, split: str | None) -> list[tuple[Any, str | None]]:
    """A data set input's samples with their labels, or ``[]`` when it is none."""
    from nctune.data.sources.hf import is_saved_dataset, read_dataset_samples
    from nctune.data.sources.webdataset import is_shard_input, read_shard_samples

    if is_saved_dataset(path):
        refs, names, labels = read_dataset_samples(path, split=split)
    elif is_shard_input(raw):
        refs, names, labels = read_shard_samples(raw, split=split)
    else:
        return []
    return [(DataSample(n, b, i), y) for (b, i), n, y in zip(refs, names, labels, strict=True)]


def expand_labelled(
    inputs: Iterable[str | Path], *, split: str | None = None
) -> list[tuple[Any, str | None]]:
    """:func:`expand_inputs` with each image's label: ``(image, label or None)``.

    A manifest row carries its ``label`` cell (when the manifest has that column), a data
    set sample its class name; files and folders give None.

    Args:
        inputs: paths given by the user, in order.
        split: with a manifest, keep only rows of this split (train, val or test); with
            a data set, only its samples of this split.

    Returns:
        ``(image path or DataSample, label)`` in input order.

    Raises:
        DataError: as :func:`expand_inputs`.
    """
    out: list[tuple[Any, str | None]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        samples = _data_set(path, raw, split)
        if samples:
            out.extend(samples)
        elif path.is_dir():
            found = list_images(path)
            if not found:
                raise DataError(
                    f"{path}: no images in this folder ({', '.join(IMG_EXTENSIONS[:4])}, …)"
                )
            out.extend((f, None) for f in found)
        elif _is_manifest(path):
            rows = read_manifest(path, require_label=False, check_files=False)
            out.extend((r.path, r.label or None) for r in rows if split in (None, r.split))
        elif path.is_file():
            out.append((str(path), None))
        else:
            raise DataError(f"{path}: no such file or folder")
    if not out:
        raise DataError(
            "no images to predict: give image files, folders, a CSV manifest or a data set"
        )
    return out


def expand_inputs(inputs: Iterable[str | Path], *, split: str | None = None) -> list[Any]:
    """Images from command-line inputs: files, folders (recursive), CSV manifests, data sets.

    A folder contributes its image files (:data:`~nctune.data.IMG_EXTENSIONS`, hidden
    entries skipped, sorted); a ``.csv`` file is read as a csv data-source manifest
    (:func:`~nctune.data.read_manifest`; its ``label`` column is optional here); WebDataset
    shards (a ``.tar``, a brace pattern, a folder of shards) and a Hugging Face
    ``save_to_disk`` folder give one :class:`DataSample` per sample, in their order; any
    other file is taken as an image (if it cannot be decoded its row fails, not the run).

    Args:
        inputs: paths given by the user, in order.
        split: with a manifest, keep only rows of this split (train, val or test).

    Returns:
        Image paths and data set samples in input order (a missing manifest row's file is
        kept, and fails).

    Raises:
        DataError: an input does not exist, a manifest or data set is malformed (as the
            data source says it), or nothing is left.
    """
    return [p for p, _ in expand_labelled(inputs, split=split)]


def _shown(classes: Sequence[str]) -> str:
    """The run's classes as error messages list them: the first eight, then ``…``."""
    return ", ".join(list(classes)[:8]) + (" …" if len(classes) > 8 else "")


def _class_folders(folder: Path, classes: Sequence[str], split: str) -> list[tuple[str, str]]:
    """``(path, class)`` of a folder of class folders, or of its ``split`` folder when it is
    a data set with train/val/test folders (as ``data.source: imagefolder`` reads)."""
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    known = set(classes)
    if subdirs and not known.intersection(subdirs):
        for name in SPLIT_FOLDERS.get(split, ()):
            if name in subdirs:
                return _class_folders(folder / name, classes, split)
    if not subdirs:
        raise DataError(
            f"{folder}: no class folders; evaluation needs labelled images — one folder per "
            "class, or a CSV manifest with a label column"
        )
    unknown = [d for d in subdirs if d not in known]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:3]) + (" …" if len(unknown) > 3 else "")
        raise DataError(
            f"{folder}: folder(s) {shown} are not classes of the run (classes: "
            f"{_shown(classes)}); give a folder of the run's class folders"
        )
    return [(f, name) for name in subdirs for f in list_images(folder / name)]


def labelled_images(
    inputs: Iterable[str | Path], classes: Sequence[str], *, split: str | None = None
) -> list[tuple[Any, int]]:
    """Labelled images for an evaluation: ``(path or DataSample, class index)``, input order.

    A folder holds one folder per class (named as the run's classes; a class may be
    missing), or train/val/test folders of them (``split`` picks one, default ``test``); a
    ``.csv`` manifest needs its ``label`` column, each label one of ``classes`` (``split``
    keeps only that split's rows); a data set (WebDataset shards, a saved HF dataset) gives
    its samples (``split`` keeps one split's, default every one), each class name one of
    ``classes``.

    Args:
        inputs: folders and manifests given by the user.
        classes: the run's class names, index order.
        split: a manifest's rows, or a data set folder's split folder, to keep.

    Returns:
        ``(image path, index into classes)`` pairs.

    Raises:
        DataError: one line naming the input: missing, a single image (no label), a folder
            without class folders or with folders that are not classes of the run, a
            manifest without a ``label`` column or with a label that is not a class, or
            no images at all.
    """
    index = {c: i for i, c in enumerate(classes)}
    out: list[tuple[Any, int]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        samples = _data_set(path, raw, split)
        for sample, label in samples:
            if label not in index:
                raise DataError(
                    f"{sample.source}: label {label!r} is not a class of the run "
                    f"(classes: {_shown(classes)})"
                )
            out.append((sample, index[label]))
        if samples:
            continue
        if path.is_dir():
            out.extend((f, index[c]) for f, c in _class_folders(path, classes, split or "test"))
        elif _is_manifest(path):
            for row in read_manifest(path, require_label=True, check_files=False):
                if split not in (None, row.split):
                    continue
                if row.label not in index:
                    raise DataError(
                        f"{path} line {row.line}: label {row.label!r} is not a class of the run "
                        f"(classes: {_shown(classes)})"
                    )
                out.append((row.path, index[row.label]))
        elif path.is_file():
            raise DataError(
                f"{path}: an image alone has no label; give class folders or a CSV manifest "
                "with a label column"
            )
        else:
            raise DataError(f"{path}: no such file or folder")
    if not out:
        raise DataError("no labelled images to evaluate: give class folders or a CSV manifest")
    return out
