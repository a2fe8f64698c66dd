"""``data.source: fashion_mnist`` — Fashion-MNIST from IDX files, the Debian package or the
vendored subset.

``data.subset`` chooses: ``vendored`` reads the 3,000 + 1,000 image subset shipped in
``nctune/_data``; ``full`` needs the IDX files (from ``data.path``, else the Debian
package ``dataset-fashion-mnist``); ``auto`` prefers the full files when present. The
official test split is kept; validation is held out of the training split.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nctune.data.sources._base import SOURCES, _Pool, _require_path, _Source
from nctune.errors import DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection


FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: The vendored subset inside the package (made by scripts/make_fashion_mnist_subset.py).
VENDORED_FASHION_MNIST = "fashion_mnist_subset.npz"


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes; DataError naming it if malformed."""
    try:
        opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read IDX file ({err.__class__.__name__}: {err})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        kind = "image" if magic == 2051 else "label"
        raise DataError(f"{path}: not an IDX {kind} file (bad magic number); re-download it")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != math.prod(dims):
        raise DataError(
            f"{path}: corrupt IDX file ({len(raw) - header} data bytes, the header says "
            f"{math.prod(dims)}); re-download it"
        )
    # a copy: frombuffer's view is read-only, which torch.from_numpy warns about
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    # accept the plain folder and torchvision's FashionMNIST/raw layout
    for sub in (folder, folder / "raw", folder / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (sub / name).is_file():
                return sub / name
    return None


_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    found = {
        split: (_find_idx(folder, img), _find_idx(folder, lab))
        for split, (img, lab) in _IDX_STEMS.items()
    }
    if any(p is None for pair in found.values() for p in pair):
        return None
    return found  # type: ignore[return-value]


def _fashion_pool(images: np.ndarray, labels: np.ndarray, where: str) -> _Pool:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.size and int(labels.max()) >= 10:
        raise DataError(f"{where}: label {int(labels.max())} outside the 10 Fashion-MNIST classes")
    return _Pool(
        labels=labels.astype(np.int64),
        images=torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
    )


def _load_vendored() -> _Source:
    ref = resources.files("nctune") / "_data" / VENDORED_FASHION_MNIST
    try:
        payload = ref.read_bytes()
    except (OSError, FileNotFoundError):
        raise DataError(
            f"data.subset=vendored: nctune/_data/{VENDORED_FASHION_MNIST} is missing from this "
            "install; reinstall nctune or run scripts/make_fashion_mnist_subset.py"
        ) from None
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        train = _fashion_pool(z["train_images"], z["train_labels"], "vendored train")
        test = _fashion_pool(z["test_images"], z["test_labels"], "vendored test")
    return _Source(
        list(FASHION_MNIST_CLASSES), "fashion_mnist (vendored subset)", train, None, test
    )


@SOURCES.register("fashion_mnist")
def _load_fashion_mnist(cfg: DataSection) -> _Source:
    """IDX files from 'path', else the Debian dataset-fashion-mnist files, else the vendored subset."""
    if cfg.subset == "vendored":
        return _load_vendored()
    if cfg.path is not None:
        folder = _require_path(cfg, "a folder of Fashion-MNIST IDX files")
        field_name = f"data.path: {folder}"
    else:
        folder = DEBIAN_FASHION_MNIST
        field_name = f"data.subset=full: {folder}"
    files = _idx_files(folder) if folder.is_dir() else None
    if files is None:
        if cfg.path is None and cfg.subset == "auto":
            return _load_vendored()
        raise DataError(
            f"{field_name} lacks the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] and "
            "friends); install the Debian package dataset-fashion-mnist, point data.path at "
            "them, or set data.subset=vendored"
        )
    pools = {}
    for split, (img_path, lab_path) in files.items():
        pools[split] = _fashion_pool(
            _read_idx(img_path, 2051), _read_idx(lab_path, 2049), str(img_path)
        )
    return _Source(
        list(FASHION_MNIST_CLASSES),
        f"fashion_mnist ({folder})",
        pools["train"],
        None,
        pools["test"],
    )
