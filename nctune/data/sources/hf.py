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
"""

from __future__ import annotations

import io
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
            loaded = hf.load_dataset(cfg.name)
        except Exception as err:
            raise DataError(
                f"data.name: cannot load the hub dataset {cfg.name!r} ({one_line(err, 120)}); "
                f"offline only datasets already in the cache {hf.config.HF_DATASETS_CACHE} "
                "load — or save_to_disk it and set data.path"
            ) from None
        return _splits(loaded), f"hf:{cfg.name}"
    path = _require_path(cfg, "a save_to_disk folder, a .parquet or an .arrow file")
    try:
        if path.is_dir():
            loaded = hf.load_from_disk(str(path))
        elif path.suffix.lower() == ".parquet":
            loaded = hf.Dataset.from_parquet(str(path))
        elif path.suffix.lower() == ".arrow":
            loaded = hf.Dataset.from_file(str(path))
        else:
            raise DataError(
                f"data.path: {path} is not a save_to_disk folder, a .parquet or an .arrow file"
            )
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"data.path: {path} cannot be read as a Hugging Face dataset ({one_line(err, 160)})"
        ) from None
    return _splits(loaded), f"hf:{path}"


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
        missing = [c for c in (image_col, label_col) if c not in dataset.column_names]
        if missing:
            raise DataError(
                f"{name} ({split}): no column {_short_list(missing)} (columns: "
                f"{_short_list(dataset.column_names)}); set data.image_key / data.label_key"
            )
    names = _class_names(splits["train"].features[label_col], hf, cfg, label_col, name)
    labels = {s: _labels(d, label_col, f"{name} ({s})") for s, d in splits.items()}
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
            base=_HFImages(dataset, image_col, f"{name} ({split})"),
            base_indices=np.arange(len(dataset), dtype=np.int64),
        )
        for split, dataset in splits.items()
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
        be decoded); ``names[i]`` is
        ``FOLDER#SPLIT/ROW``, ``labels[i]`` its class name or None.

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
