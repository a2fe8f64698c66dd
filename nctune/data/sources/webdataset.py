"""``data.source: webdataset`` — WebDataset tar shards (``pip install 'nctune[webdataset]'``).

``data.path`` is one ``.tar`` shard, a brace pattern (``shards/train-{000000..000099}.tar``),
a ``.txt`` list of shards (one a line, relative to the list) or a folder of shards. In a
folder, ``train-*.tar``, ``val-*.tar`` (``valid``, ``validation``) and ``test-*.tar`` are
the splits (no such prefix: every shard trains). A sample is the run of tar members that
share a key (the name up to its first dot, WebDataset's rule): the image is the first of
``data.image_key`` (default ``png;jpg;jpeg;webp``) present, the label the integer in
``data.label_key`` (default ``cls``). Class names: ``data.classes``, else ``classes.txt``
beside the shards, else ``'0'..'K-1'``.

The shards are indexed once (tar headers and the small label members: every image stays
on disk) and an image is read at its offset when the loader asks for it, so hold-out,
few-shot sampling, caps, ``finetune``, ``rank`` and ``predict`` work as with an image
folder. Under ``torchrun`` each rank reads its own disjoint share of every shard
(:func:`nctune.distributed.shard_dataset`, the split every source gets) and loader
workers split the batches, so no sample is read twice or skipped and the collapse
statistics add up to the one-process numbers.

:func:`write_shards` turns an image folder into such shards (``nctune shard``).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from nctune.data.bitdepth import to_rgb8
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
    from collections.abc import Callable

    from nctune.data.section import DataSection

IMAGE_KEYS = "png;jpg;jpeg;webp"
LABEL_KEY = "cls"
CLASSES_FILE = "classes.txt"
# WebDataset's own key rule (webdataset.tariterators.base_plus_ext): key = up to the first dot
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_SPLIT_PREFIX = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


@dataclass
class _Index:
    """Where each sample's image lies: shard number, byte offset and size, key; its label."""

    shards: list[str]
    shard: list[int]
    offset: list[int]
    size: list[int]
    key: list[str]
    label: list[int]


class _ShardImages:
    """Sample ``i`` of an index as ``(RGB PIL image, 0)``, read at its offset in the shard.

    Shards are opened lazily, one descriptor per shard and process (loader workers fork),
    under a lock (threads reading a new shard at once open it once), read at an offset
    without seeking (so threads may share them), and closed with the reader: a file left to
    the garbage collector is a ResourceWarning, a second stderr line after a command's error.
    """

    def __init__(self, index: _Index) -> None:
        self.shards = list(index.shards)
        self.shard = np.asarray(index.shard, dtype=np.int32)
        self.offset = np.asarray(index.offset, dtype=np.int64)
        self.size = np.asarray(index.size, dtype=np.int64)
        self.key = list(index.key)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _fds={}, _lock=threading.Lock())

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():  # a fork's copies are its own to drop
            for fd in self._fds.values():
                os.close(fd)

    def __len__(self) -> int:
        return len(self.key)

    def _read(self, index: int) -> bytes:
        s = int(self.shard[index])
        with self._lock:
            if self._pid != os.getpid():  # a forked worker must not share the parent's offsets
                self._fds, self._pid = {}, os.getpid()
            fd = self._fds.get(s)
            if fd is None:
                fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
        # pread, not seek + read: predict's decoding threads share the descriptor, and one
        # thread's seek between another's seek and read would hand it the wrong bytes
        return os.pread(fd, int(self.size[index]), int(self.offset[index]))

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = int(index)
        try:
            data = self._read(index)
            with Image.open(io.BytesIO(data)) as img:
                return to_rgb8(img), 0
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(
                f"shard {self.shards[int(self.shard[index])]} key {self.key[index]}: cannot "
                f"read the image ({one_line(err, 160)}); fix or drop the sample"
            ) from None


def _expand(pattern: str) -> list[str]:
    """A brace pattern's shard paths (each must exist)."""
    if "{" not in pattern:
        return [pattern]
    braceexpand = _optional("braceexpand", "webdataset", "data.source=webdataset").braceexpand
    paths = list(braceexpand(pattern))
    present = [p for p in paths if Path(p).is_file()]
    if not present:
        raise DataError(f"data.path: brace pattern {pattern} matches no file (first: {paths[0]})")
    if len(present) < len(paths):
        first = next(p for p in paths if not Path(p).is_file())
        raise DataError(
            f"data.path: shard {first} of {pattern} does not exist "
            f"({len(paths) - len(present)} of {len(paths)} missing)"
        )
    return paths


def _shard_lists(cfg: DataSection) -> tuple[dict[str, list[str]], Path]:
    """Split name → shard paths, and the folder that may hold ``classes.txt``."""
    pattern = str(cfg.path) if cfg.path is not None else ""
    if "{" in pattern:
        shards = _expand(pattern)
        return {"train": shards}, Path(shards[0]).parent
    path = _require_path(cfg, "a .tar shard, a brace pattern, a list of shards or a folder")
    if path.is_dir():
        tars = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
        if not tars:
            raise DataError(f"data.path: {path} holds no .tar shards (empty shard list)")
        by_split: dict[str, list[str]] = {}
        for tar in tars:
            prefix = re.split(r"[-_.]", tar.name, maxsplit=1)[0].lower()
            by_split.setdefault(_SPLIT_PREFIX.get(prefix, "train"), []).append(str(tar))
        if "train" not in by_split:
            raise DataError(f"data.path: {path} has no training shards (train-*.tar)")
        return by_split, path
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        shards = [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]
        if not shards:
            raise DataError(f"data.path: {path} lists no shards (empty shard list)")
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise DataError(f"data.path: shard {missing[0]} listed in {path} does not exist")
        return {"train": shards}, path.parent
    return {"train": [str(path)]}, path.parent


def _index(shards: list[str], image_keys: list[str], label_key: str) -> _Index:
    """Read the tar headers and label members of ``shards`` (images stay on disk)."""
    idx = _Index(list(shards), [], [], [], [], [])
    for number, shard in enumerate(shards):
        try:
            with tarfile.open(shard, mode="r:") as tar:
                samples: dict[str, dict[str, tarfile.TarInfo]] = {}
                for member in tar:
                    match = _KEY.match(member.name) if member.isfile() else None
                    if match:
                        samples.setdefault(match.group(1), {})[match.group(2).lower()] = member
                for key, members in samples.items():
                    _add_sample(idx, number, shard, key, members, tar, image_keys, label_key)
        except tarfile.ReadError as err:
            raise DataError(
                f"shard {shard}: not an uncompressed tar file ({one_line(err, 100)}); nctune "
                "reads images at their offset, so decompress .tar.gz shards"
            ) from None
        except OSError as err:
            raise DataError(f"shard {shard}: cannot read ({one_line(err, 120)})") from None
    if not idx.key:
        raise DataError(f"shard {shards[0]}: no samples in {len(shards)} shard(s)")
    return idx


def _add_sample(
    idx: _Index,
    number: int,
    shard: str,
    key: str,
    members: dict[str, tarfile.TarInfo],
    tar: tarfile.TarFile,
    image_keys: list[str],
    label_key: str,
) -> None:
    image = next((members[k] for k in image_keys if k in members), None)
    if image is None:
        raise DataError(
            f"shard {shard} key {key}: no image ({';'.join(image_keys)}; found "
            f"{_short_list(sorted(members))}); set data.image_key"
        )
    if label_key not in members:
        raise DataError(
            f"shard {shard} key {key}: no {label_key!r} label (found {_short_list(sorted(members))})"
            "; add one or set data.label_key"
        )
    raw = tar.extractfile(members[label_key])
    text = raw.read().decode("utf-8", "replace").strip() if raw is not None else ""
    try:
        label = int(text)
    except ValueError:
        raise DataError(
            f"shard {shard} key {key}: label {text[:40]!r} in {label_key!r} is not an integer"
        ) from None
    idx.shard.append(number)
    idx.offset.append(image.offset_data)
    idx.size.append(image.size)
    idx.key.append(key)
    idx.label.append(label)


def _class_file(folder: Path) -> list[str] | None:
    path = folder / CLASSES_FILE
    if not path.is_file():
        return None
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


@SOURCES.register("webdataset")
def _load_webdataset(cfg: DataSection) -> _Source:
    """WebDataset .tar shards at 'path' (a file, brace pattern, list or folder)."""
    image_keys = [k.strip().lower() for k in (cfg.image_key or IMAGE_KEYS).split(";") if k.strip()]
    label_key = (cfg.label_key or LABEL_KEY).lower()
    by_split, folder = _shard_lists(cfg)
    name = f"webdataset:{cfg.path}"
    indexes = {s: _index(shards, image_keys, label_key) for s, shards in by_split.items()}
    names = list(cfg.classes) if cfg.classes else _class_file(folder)
    train_labels = np.asarray(indexes["train"].label, dtype=np.int64)
    classes = _integer_classes(train_labels, names, f"{name} ({CLASSES_FILE} or data.classes)")
    pools = {}
    for split, index in indexes.items():
        labels = np.asarray(index.label, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"shard {index.shards[index.shard[i]]} key {index.key[i]}: label {labels[i]} is "
                f"not one of the {len(classes)} classes"
            )
        base = _ShardImages(index)
        pools[split] = _Pool(labels=labels, base=base, base_indices=np.arange(len(base)))
    return _Source(classes, name, pools["train"], pools.get("val"), pools.get("test"), tv_name=name)


def is_shard_input(path: str | Path) -> bool:
    """Whether a command-line input names WebDataset shards rather than images.

    Args:
        path: what the user gave: a ``.tar`` file, a brace pattern ending in ``.tar`` or a
            folder whose top level holds ``.tar`` files.

    Returns:
        True for shards (the pattern need not match anything yet: reading it says so).
    """
    text = str(path)
    if "{" in text and text.endswith(".tar"):
        return True
    path = Path(text).expanduser()
    if path.is_file():
        return path.suffix == ".tar"
    return path.is_dir() and any(p.suffix == ".tar" and p.is_file() for p in path.iterdir())


def read_shard_samples(
    path: str | Path, split: str | None = None
) -> tuple[list[tuple[Any, int]], list[str], list[str | None]]:
    """Every sample of some shards, for reading one by one (``nctune predict``).

    The same expansion and index as ``data.source: webdataset`` (so the same one-line
    errors: an empty shard list, a pattern matching nothing, a sample without an image or
    label); a folder's shards in file-name order, which for shards written by
    :func:`write_shards` is the order :func:`~nctune.data.list_images` walks their image
    folder in.

    Args:
        path: a ``.tar`` shard, a brace pattern, a ``.txt`` list or a folder of shards.
        split: with a folder, only its shards of this split (train, val or test).

    Returns:
        ``(refs, names, labels)``: ``refs[i]`` is ``(base, j)`` with ``base[j][0]`` sample
        ``i``'s RGB image (a DataError naming shard and key when it cannot be decoded);
        ``names[i]`` is ``SHARD#KEY``, ``labels[i]`` its class name (``classes.txt``
        beside the shards, else the integer label).

    Raises:
        DataError: one line, as the source's (``data.path:`` left off).
    """
    cfg: Any = SimpleNamespace(source="webdataset", path=path)
    try:
        by_split, folder = _shard_lists(cfg)
        if split is not None and Path(str(path)).is_dir():
            by_split = {split: by_split.get(split, [])}
            if not by_split[split]:
                raise DataError(f"{path}: no {split} shards ({split}-*.tar) in this folder")
        shards = [s for group in by_split.values() for s in group]
        if Path(str(path)).is_dir():
            shards.sort()
        index = _index(shards, IMAGE_KEYS.split(";"), LABEL_KEY)
    except DataError as err:
        raise DataError(str(err).removeprefix("data.path: ")) from None
    names = _class_file(folder) or []
    labels: list[str | None] = [names[y] if 0 <= y < len(names) else str(y) for y in index.label]
    sources = [f"{index.shards[s]}#{k}" for s, k in zip(index.shard, index.key, strict=True)]
    base = _ShardImages(index)
    return [(base, i) for i in range(len(base))], sources, labels


def write_shards(
    root: str | Path,
    out: Path,
    shard_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write an image folder as WebDataset shards into ``out`` (an empty, existing folder).

    Each split of the folder (``train/``, ``val/``, ``test/`` subfolders, or the folder
    itself as ``train``) becomes ``SPLIT-000000.tar``, … of ``shard_size`` samples each,
    in the image folder's order (class, then file name), so the shards give the same
    splits and numbers as the folder. A sample is ``KEY.EXT`` (the file's own bytes,
    ``jpeg`` written as ``jpg``) plus ``KEY.cls`` (the class index); ``classes.txt``
    names the classes. Writing the folder atomically is the caller's job
    (:func:`nctune.runs._io.staged_dir`).

    Args:
        root: the image folder (as ``data.source: imagefolder`` reads it).
        out: the folder to write into.
        shard_size: samples per shard (the last one may hold fewer).
        progress: ``progress(done, total)`` after each sample.

    Returns:
        ``{"classes", "samples": {split: n}, "shards": [file names]}``.

    Raises:
        DataError: what ``data.source: imagefolder`` refuses about ``root``.
    """
    # through the registry: source modules do not import each other (tests/data/test_package.py)
    src = SOURCES.get("imagefolder")(SimpleNamespace(source="imagefolder", path=Path(root)))
    splits = {s: p for s, p in (("train", src.train), ("val", src.val), ("test", src.test)) if p}
    total = sum(len(p.labels) for p in splits.values())
    written: list[str] = []
    done = 0
    for split, pool in splits.items():
        assert pool.paths is not None
        for start in range(0, len(pool.paths), shard_size):
            name = f"{split}-{start // shard_size:06d}.tar"
            with tarfile.open(out / name, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(start, min(start + shard_size, len(pool.paths))):
                    key = f"{i:08d}"
                    ext = Path(pool.paths[i]).suffix.lower().lstrip(".").replace("jpeg", "jpg")
                    _add_member(tar, f"{key}.{ext}", Path(pool.paths[i]).read_bytes())
                    _add_member(tar, f"{key}.{LABEL_KEY}", str(int(pool.labels[i])).encode())
                    done += 1
                    if progress is not None:
                        progress(done, total)
            written.append(name)
    (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in src.classes), encoding="utf-8")
    samples = {s: len(p.labels) for s, p in splits.items()}
    return {"classes": list(src.classes), "samples": samples, "shards": written}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def shard_image_folder(
    root: str | Path,
    out: str | Path,
    shard_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """:func:`write_shards` into ``out`` as a whole: a failure or Ctrl-C leaves ``out`` as it was.

    The shards are written into a hidden sibling folder that replaces ``out`` at the end
    (:func:`nctune.runs._io.staged_dir`). ``out`` may be missing, empty, or hold earlier
    shards (recognised by ``classes.txt``); a folder of other files is refused.

    Args:
        root: the image folder.
        out: the shard folder.
        shard_size: samples per shard, at least 1.
        progress: ``progress(done, total)`` after each sample.

    Returns:
        :func:`write_shards`'s summary plus ``out``.

    Raises:
        ConfigError: ``shard_size`` below 1.
        DataError: what ``data.source: imagefolder`` refuses about ``root``.
        ArtifactError: ``out`` holds other files or cannot be written.
    """
    from nctune.errors import ConfigError
    from nctune.runs._io import check_replaceable, staged_dir

    if shard_size < 1:
        raise ConfigError(f"--shard-size: {shard_size} must be at least 1")
    out = check_replaceable(Path(out), CLASSES_FILE)
    with staged_dir(out) as tmp:
        summary = write_shards(root, tmp, shard_size, progress)
    return {**summary, "out": str(out)}
