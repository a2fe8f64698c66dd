"""``data.source: hf`` — a Hugging Face ``datasets`` dataset (``pip install 'nctune[hf]'``).

Where it comes from: ``data.path`` is a ``save_to_disk`` folder (a ``Dataset`` or a
``DatasetDict``), a ``.parquet`` file or an ``.arrow`` file; without a path, ``data.name``
is a hub dataset name (needs the network, or the datasets cache). The image column
(``data.image_key``, default ``image``) holds ``Image`` features, encoded bytes or file
paths; the label column (``data.label_key``, default ``label``) is a ``ClassLabel`` (its
names are the classes) or an integer column (``data.classes`` names it, else ``'0'..``).
A ``DatasetDict``'s ``validation`` (``val``, ``valid``) and ``test`` splits are used when
present, otherwise the recipe's fractions hold them out of ``train``.

Arrow data is memory-mapped and decoded one row at a time, so a dataset larger than
memory is read without being loaded: only the label column is read up front.

``data.streaming: true`` reads it as ``datasets`` streams it (``streaming=True``, an
``IterableDataset``): Parquet and Arrow files are read in place (no Arrow cache is written
beside them, as ``Dataset.from_parquet`` does), a hub dataset is not downloaded whole. The
label column is streamed once up front; images are then read in row order, skipping
forward (skipped rows are read, not decoded). That suits the commands that make one pass
in order (``analyze``, ``rank``); those that need random access (``finetune``, ``tune``,
``sweep``: shuffled epochs) refuse it (:func:`refuse_streaming`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from nctune.data.bitdepth import array_to_uint8, to_rgb8
from nctune.data.sources._base import (
    SOURCES,
    _integer_classes,
    _optional,
    _Pool,
    _require_path,
    _short_list,
    _Source,
)
from nctune.errors import DataError, one_line

if TYPE_CHECKING:
    from nctune.data.section import DataSection

_SPLIT_NAMES = {
    "train": ("train",),
    "val": ("validation", "val", "valid"),
    "test": ("test",),
}


class _HFImages:
    """Row ``i`` of one column of a ``datasets.Dataset`` as ``(RGB PIL image, 0)``.

    The loader wants ``base[i][0]`` to be the image (labels come from the pool), and a
    corrupt row must name the dataset and row.
    """

    def __init__(self, dataset: Any, column: str, where: str) -> None:
        self.dataset = dataset.select_columns([column])
        self.column = column
        self.where = where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            value = self.dataset[int(index)][self.column]
            return to_rgb8(_as_pil(value)), 0
        except DataError:
            raise
        except Exception as err:
            raise DataError(
                f"{self.where} row {index}: cannot read column {self.column!r} as an image "
                f"({one_line(err, 160)}); fix or drop the row"
            ) from None


class _StreamImages:
    """Row ``i`` of a streamed dataset's image column as ``(RGB PIL image, 0)``.

    Rows are read in increasing order from one iterator, skipping forward; asking for an
    earlier row starts a new iterator (a second pass, another split's pool, a forked
    loader worker). Random access is therefore quadratic: only in-order passes use it.
    """

    def __init__(self, stream: Any, column: str, where: str, length: int) -> None:
        self.stream = stream
        self.column = column
        self.where = where
        self.length = length
        self._rows: Any = None
        self._next = 0
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None, "_next": 0}

    def __len__(self) -> int:
        return self.length

    def _row(self, index: int) -> Any:
        if self._rows is None or index < self._next or self._pid != os.getpid():
            self._rows, self._next, self._pid = iter(self.stream), 0, os.getpid()
        try:
            while self._next < index:
                next(self._rows)
                self._next += 1
            row = next(self._rows)
        except StopIteration:
            raise DataError(
                f"{self.where}: the stream ended before row {index} of {self.length}; did "
                "the files change while being read?"
            ) from None
        self._next = index + 1
        return row[self.column]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = int(index)
        value = self._row(index)
        try:
            return to_rgb8(_as_pil(value)), 0
        except Exception as err:
            raise DataError(
                f"{self.where} row {index}: cannot read column {self.column!r} as an image "
                f"({one_line(err, 160)}); fix or drop the row"
            ) from None


def _as_pil(value: Any) -> Any:
    """An ``Image`` feature's value (PIL, ``{'bytes', 'path'}``), bytes, a path or an array."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        with Image.open(io.BytesIO(value)) as img:
            img.load()
            return img.copy()
    if isinstance(value, str):
        with Image.open(value) as img:
            img.load()
            return img.copy()
    if value is None:
        raise ValueError("empty cell")
    arr = np.asarray(value)
    return Image.fromarray(array_to_uint8(np.squeeze(arr)))


def _open(cfg: DataSection, hf: Any) -> tuple[dict[str, Any], str]:
    """The dataset's splits (name → ``Dataset``) and a display name."""
    if cfg.path is None and cfg.name:
        try:
            loaded = hf.load_dataset(cfg.name, streaming=bool(getattr(cfg, "streaming", False)))
        except Exception as err:
            raise DataError(
                f"data.name: cannot load the hub dataset {cfg.name!r} ({one_line(err, 120)}); "
                f"offline only datasets already in the cache {hf.config.HF_DATASETS_CACHE} "
                "load — or save_to_disk it and set data.path"
            ) from None
        return _splits(loaded), f"hf:{cfg.name}"
    path = _require_path(cfg, "a save_to_disk folder, a .parquet or an .arrow file")
    # one check of the path's kind for both ways of opening it
    if not path.is_dir() and path.suffix.lower() not in (".parquet", ".arrow"):
        raise DataError(
            f"data.path: {path} is not a save_to_disk folder, a .parquet or an .arrow file"
        )
    if getattr(cfg, "streaming", False):
        return _open_stream(path, hf), f"hf:{path}"
    try:
        if path.is_dir():
            loaded = hf.load_from_disk(str(path))
        elif path.suffix.lower() == ".parquet":
            loaded = hf.Dataset.from_parquet(str(path))
        else:
            loaded = hf.Dataset.from_file(str(path))
    except Exception as err:
        raise DataError(
            f"data.path: {path} cannot be read as a Hugging Face dataset ({one_line(err, 160)})"
        ) from None
    return _splits(loaded), f"hf:{path}"


def _open_stream(path: Path, hf: Any) -> dict[str, Any]:
    """A folder, Parquet or Arrow file (the kind :func:`_open` checked) as ``IterableDataset``
    splits (nothing loaded)."""
    try:
        if path.is_dir():
            loaded = hf.load_from_disk(str(path))  # memory-mapped: only its iterator streams
            if hasattr(loaded, "keys"):
                loaded = hf.IterableDatasetDict(
                    {k: v.to_iterable_dataset() for k, v in loaded.items()}
                )
            else:
                loaded = loaded.to_iterable_dataset()
        else:
            kind = path.suffix.lower().lstrip(".")
            loaded = hf.load_dataset(kind, data_files=str(path), split="train", streaming=True)
    except Exception as err:
        raise DataError(
            f"data.path: {path} cannot be streamed as a Hugging Face dataset ({one_line(err, 160)})"
        ) from None
    return _splits(loaded)


def _streamed_pool(
    dataset: Any, hf: Any, image_col: str, label_col: str, where: str
) -> tuple[np.ndarray, _StreamImages]:
    """A streamed split's labels (one pass over that column) and its image reader."""
    values = [row[label_col] for row in dataset.select_columns([label_col])]
    if any(v is None for v in values):
        raise DataError(f"{where}: label column {label_col!r} has empty cells; fill or drop them")
    images = dataset.select_columns([image_col])
    feature = (images.features or {}).get(image_col)
    if isinstance(feature, hf.Image):  # skipped rows are then read, never decoded
        images = images.cast_column(image_col, hf.Image(decode=False))
    labels = np.asarray(values, dtype=np.int64)
    return labels, _StreamImages(images, image_col, where, len(labels))


def refuse_streaming(cfg: DataSection) -> None:
    """Refuse ``data.streaming`` where the data must be read in any order (training).

    Args:
        cfg: the recipe's ``data`` section.

    Raises:
        ConfigError: one line saying what to do instead, when ``cfg.streaming`` is set.
    """
    from nctune.errors import ConfigError

    if getattr(cfg, "streaming", False):
        raise ConfigError(
            "data.streaming: finetune, tune and sweep need random access to the data "
            "(shuffled epochs), which a stream cannot give; save_to_disk the dataset and set "
            "data.streaming: false (Arrow is memory-mapped, not loaded into memory)"
        )


def _splits(loaded: Any) -> dict[str, Any]:
    if not hasattr(loaded, "keys"):  # a single Dataset: the training pool
        return {"train": loaded}
    found = {}
    for split, names in _SPLIT_NAMES.items():
        for name in names:
            if name in loaded:
                found[split] = loaded[name]
                break
    if "train" not in found:
        if len(loaded) != 1:
            raise DataError(
                f"data.path: the dataset has splits {_short_list(list(loaded))} but no 'train'; "
                "rename the training split to 'train'"
            )
        found = {"train": next(iter(loaded.values()))}
    return found


def _class_names(
    feature: Any, hf: Any, cfg: DataSection, column: str, where: str
) -> list[str] | None:
    """The ClassLabel's names (or ``data.classes``); refuses a non-integer label column."""
    if isinstance(feature, hf.ClassLabel):
        return list(cfg.classes or feature.names)
    dtype = getattr(feature, "dtype", "")
    if not (isinstance(feature, hf.Value) and str(dtype).startswith(("int", "uint"))):
        raise DataError(
            f"{where}: label column {column!r} is {dtype or feature!s}, not "
            "an integer or ClassLabel column; cast it (dataset.class_encode_column) or set "
            "data.label_key"
        )
    return list(cfg.classes) if cfg.classes else None


def _labels(dataset: Any, column: str, where: str) -> np.ndarray:
    values = dataset[column]
    if any(v is None for v in values):
        raise DataError(f"{where}: label column {column!r} has empty cells; fill or drop them")
    return np.asarray(values, dtype=np.int64)


@SOURCES.register("hf")
def _load_hf(cfg: DataSection) -> _Source:
    """a Hugging Face datasets folder or Parquet/Arrow file at 'path', or a hub 'name'."""
    hf = _optional("datasets", "hf", "data.source=hf")
    image_col = cfg.image_key or "image"
    label_col = cfg.label_key or "label"
    splits, name = _open(cfg, hf)
    for split, dataset in splits.items():
        columns = dataset.column_names or list(dataset.features or ())
        missing = [c for c in (image_col, label_col) if c not in columns]
        if missing:
            raise DataError(
                f"{name} ({split}): no column {_short_list(missing)} (columns: "
                f"{_short_list(columns)}); set data.image_key / data.label_key"
            )
    names = _class_names(splits["train"].features[label_col], hf, cfg, label_col, name)
    if getattr(cfg, "streaming", False):
        streamed = {
            s: _streamed_pool(d, hf, image_col, label_col, f"{name} ({s})")
            for s, d in splits.items()
        }
        labels = {s: lab for s, (lab, _) in streamed.items()}
        bases: dict[str, Any] = {s: base for s, (_, base) in streamed.items()}
    else:
        labels = {s: _labels(d, label_col, f"{name} ({s})") for s, d in splits.items()}
        bases = {s: _HFImages(d, image_col, f"{name} ({s})") for s, d in splits.items()}
    classes = _integer_classes(labels["train"], names, name)
    for split, values in labels.items():
        if values.size and int(values.max()) >= len(classes):
            raise DataError(
                f"{name} ({split}): label {int(values.max())} is not one of the "
                f"{len(classes)} training classes"
            )
    pools = {
        split: _Pool(
            labels=labels[split],
            base=bases[split],
            base_indices=np.arange(len(labels[split]), dtype=np.int64),
        )
        for split in splits
    }
    return _Source(classes, name, pools["train"], pools.get("val"), pools.get("test"), tv_name=name)


def is_saved_dataset(folder: str | Path) -> bool:
    """Whether ``folder`` is a ``save_to_disk`` folder (a Dataset or a DatasetDict).

    Args:
        folder: any path.

    Returns:
        True when it holds ``dataset_dict.json`` or ``state.json`` + ``dataset_info.json``.
    """
    folder = Path(folder)
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def read_dataset_samples(
    folder: str | Path, split: str | None = None, image_key: str = "image", label_key: str = "label"
) -> tuple[list[tuple[Any, int]], list[str], list[str | None]]:
    """Every row of a ``save_to_disk`` folder, for reading one by one (``nctune predict``).

    Read as ``data.source: hf`` reads it (memory-mapped; an image decoded when asked for).

    Args:
        folder: a saved ``Dataset`` or ``DatasetDict``.
        split: only this split (train, val or test); default every split, train first.
        image_key: the image column.
        label_key: the label column, when present (its ClassLabel names the classes).

    Returns:
        ``(refs, names, labels)``: ``refs[i]`` is ``(base, row)`` with ``base[row][0]``
        the row's RGB image (a DataError naming the dataset, split and row when it cannot
        be decoded); ``names[i]`` is ``FOLDER#SPLIT/ROW``, ``labels[i]`` its class name
        or None.

    Raises:
        DataError: one line: the extra missing, a folder that does not load, no such
            split, no image column.
    """
    hf = _optional("datasets", "hf", f"{folder}")
    cfg: Any = SimpleNamespace(source="hf", path=Path(folder), name=None)
    try:
        splits, _ = _open(cfg, hf)
    except DataError as err:
        raise DataError(str(err).removeprefix("data.path: ")) from None
    if split is not None:
        if split not in splits:
            raise DataError(f"{folder}: no {split} split (splits: {_short_list(list(splits))})")
        splits = {split: splits[split]}
    refs: list[tuple[Any, int]] = []
    names: list[str] = []
    labels: list[str | None] = []
    for name, dataset in splits.items():
        if image_key not in dataset.column_names:
            raise DataError(
                f"{folder} ({name}): no column {image_key!r} (columns: "
                f"{_short_list(dataset.column_names)})"
            )
        base = _HFImages(dataset, image_key, f"{folder} ({name})")
        feature = dataset.features.get(label_key)
        values = dataset[label_key] if feature is not None else [None] * len(dataset)
        classes = feature.names if isinstance(feature, hf.ClassLabel) else None
        for row, y in enumerate(values):
            refs.append((base, row))
            names.append(f"{folder}#{name}/{row}")
            labels.append(None if y is None else classes[y] if classes else str(y))
    return refs, names, labels
