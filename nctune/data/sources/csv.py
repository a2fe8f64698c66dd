"""``data.source: csv`` — a ``path,label[,split]`` manifest; paths are relative to its
folder.

Rows without a split (or with an empty one) are training rows. Integer labels index the
classes 0..K-1 and must all occur in training; other labels are class names, sorted.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ManifestRow:
    """One row of a ``path,label[,split]`` manifest (see :func:`read_manifest`).

    Attributes:
        line: the row's line number in the file (the header is line 1).
        path: the image file, resolved against the manifest's folder.
        label: the label text ("" when the manifest has no label column).
        split: ``'train'``, ``'val'`` or ``'test'`` (no split column or an empty cell: train).
    """

    line: int
    path: str
    label: str
    split: str


def read_manifest(
    manifest: str | Path, *, require_label: bool = True, check_files: bool = True
) -> list[ManifestRow]:
    """Read a csv data-source manifest: a header with ``path``, ``label`` and ``split``.

    The format ``data.source: csv`` reads (and ``nctune predict`` accepts): UTF-8 (a BOM
    is fine), a header naming the columns in any order, paths relative to the manifest's
    folder (or absolute), blank rows skipped, ``split`` one of train/val/test
    (``valid``/``validation`` mean val; empty or absent means train).

    Args:
        manifest: the CSV file.
        require_label: refuse a manifest without a ``label`` column or a row with an empty
            label (False: labels are optional, e.g. for prediction).
        check_files: refuse a row whose image file does not exist (False: leave that to
            the caller, e.g. to report it per row).

    Returns:
        The rows in file order.

    Raises:
        DataError: unreadable file, missing column, short row, unknown split, empty path or
            label, or a missing image file — one line naming the file and line.
    """
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"{manifest}: cannot read manifest ({err.__class__.__name__}: {err})"
        ) from None
    if not rows:
        raise DataError(f"{manifest}: empty manifest; the header must be path,label[,split]")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("path", "label") if c not in header and (require_label or c == "path")]
    if missing:
        raise DataError(
            f"{manifest}: missing column(s) {', '.join(repr(m) for m in missing)}; the header "
            f"must be path,label[,split] (found {','.join(header)})"
        )
    col = {name: header.index(name) for name in ("path", "label", "split") if name in header}
    base = manifest.parent
    out: list[ManifestRow] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DataError(
                f"{manifest} line {line}: {len(row)} fields, the header has {len(header)}"
            )
        rel = row[col["path"]].strip()
        label = row[col["label"]].strip() if "label" in col else ""
        split = row[col["split"]].strip().lower() if "split" in col else "train"
        split = {"": "train", "valid": "val", "validation": "val"}.get(split, split)
        if split not in ("train", "val", "test"):
            raise DataError(f"{manifest} line {line}: split {split!r} must be train, val or test")
        if not rel or (require_label and not label):
            raise DataError(f"{manifest} line {line}: empty path or label")
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if check_files and not path.is_file():
            raise DataError(
                f"{manifest} line {line}: image file {path} not found (paths are relative to "
                "the manifest's folder)"
            )
        out.append(ManifestRow(line, str(path), label, split))
    return out


@SOURCES.register("csv")
def _load_csv(cfg: DataSection) -> _Source:
    """a path,label manifest at 'path'."""
    manifest = _require_path(cfg, "a path,label[,split] manifest file")
    if manifest.is_dir():
        raise DataError(
            f"data.path: {manifest} is a folder; data.source=csv needs the manifest file"
        )
    entries: dict[str, list[tuple[int, str, str]]] = {"train": [], "val": [], "test": []}
    for row in read_manifest(manifest):
        entries[row.split].append((row.line, row.path, row.label))
    if not entries["train"]:
        raise DataError(f"{manifest}: no training rows (rows with split train or no split)")
    classes, to_index = _csv_classes(manifest, [lab for _, _, lab in entries["train"]])
    pools: dict[str, _Pool] = {}
    for split, items in entries.items():
        if not items:
            continue
        labels = []
        for line, _, label in items:
            idx = to_index(label)
            if idx is None:
                raise DataError(
                    f"{manifest} line {line}: label {label!r} is not one of the training classes "
                    f"({_short_list(classes)})"
                )
            labels.append(idx)
        pools[split] = _Pool(
            labels=np.asarray(labels, dtype=np.int64), paths=[p for _, p, _ in items]
        )
    return _Source(classes, f"csv:{manifest}", pools["train"], pools.get("val"), pools.get("test"))


def _csv_classes(
    manifest: Path, train_labels: list[str]
) -> tuple[list[str], Callable[[str], int | None]]:
    """Class list from the training labels: integer labels index 0..max, names sort."""
    try:
        ints = [int(label) for label in train_labels]
    except ValueError:
        ints = None
    if ints is not None:
        if min(ints) < 0:
            raise DataError(f"{manifest}: label {min(ints)} is negative; integer labels are 0..K-1")
        present = set(ints)
        classes = [str(i) for i in range(max(ints) + 1)]
        absent = [c for c in classes if int(c) not in present]
        if absent:
            raise DataError(
                f"{manifest}: class {absent[0]} has no training images (integer labels must "
                f"cover 0..{max(ints)}); add images or renumber the labels"
            )
        _check_classes(classes, str(manifest), "distinct labels")

        def to_index(label: str) -> int | None:
            try:
                value = int(label)
            except ValueError:
                return None
            return value if 0 <= value < len(classes) else None

        return classes, to_index
    classes = sorted(set(train_labels))
    _check_classes(classes, str(manifest), "distinct labels")
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, lookup.get
