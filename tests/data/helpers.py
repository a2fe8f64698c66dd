"""Helpers shared by the nctune.data tests: a stand-in input config and tiny data on disk.

Everything is built in tmp_path or read from files on this machine; nothing is downloaded.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nctune.config import DataConfig


@dataclass
class InputConfig:
    """Stand-in for nctune.backbones.InputConfig."""

    image_size: int = 16
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


IC = InputConfig()


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def write_png(path: Path, value: int = 128, size=(12, 10), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], mode: str = "L") -> Path:
    for ci, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", value=(20 * ci + i) % 256, mode=mode)
    return root


def class_counts(ds, k: int) -> list[int]:
    return np.bincount(ds.targets, minlength=k).tolist()


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def tiny_idx_folder(folder: Path, n_train=40, n_test=20, gz=True) -> Path:
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), 2051
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10, 2049)
    return folder


def corrupt_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = make_folder(tmp_path / "ds", {"a": 3, "b": 3})
    bad = root / "a" / "000.png"
    bad.write_bytes(b"not a png at all")
    return root, bad


def write_manifest(tmp_path: Path, text: str) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / name)
    (tmp_path / "m.csv").write_text(text)
    return tmp_path / "m.csv"
