#!/usr/bin/env python
"""Regenerate nctune's vendored Fashion-MNIST subset from the official IDX files.

The subset (``nctune/_data/fashion_mnist_subset.npz``) lets the offline quickstart run on
a machine without the full dataset. It is a stratified sample: ``--train-per-class``
images of each class from the official training file and ``--test-per-class`` from the
official test file (defaults 300 and 100: 4,000 images, about 1.7 MB).

The output is byte-for-byte reproducible, so anyone can check the committed file:

* the sample does not depend on NumPy's random streams (which NumPy does not promise to
  keep across versions): each image's rank is the SHA-256 of ``"{seed}:{split}:{index}"``
  and every class keeps its lowest-ranked images, listed in their original order;
* the ``.npz`` is written by hand with :mod:`zipfile` using a fixed timestamp, fixed
  permissions and a fixed member order, since ``np.savez_compressed`` stamps the zip
  entries with the current time.

Usage (the defaults read the Debian package ``dataset-fashion-mnist``)::

    python scripts/make_fashion_mnist_subset.py
    python scripts/make_fashion_mnist_subset.py --src DIR --out PATH

Only NumPy and the standard library are needed, so this runs without installing nctune.
Fashion-MNIST is © 2017 Zalando SE, MIT licence (see nctune/_data/FASHION_MNIST_LICENSE.txt).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "nctune" / "_data" / "fashion_mnist_subset.npz"
# A zip entry needs some date; 1980-01-01 is the earliest the format can store.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
NUM_CLASSES = 10


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes with the given magic number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_file(src: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` inside ``src``."""
    for name in (f"{stem}.gz", stem):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: neither {stem}.gz nor {stem} found")


def select(labels: np.ndarray, per_class: int, seed: int, split: str) -> np.ndarray:
    """Indices of ``per_class`` images of every class, ranked by a seeded hash, sorted."""
    keys = np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}:{split}:{i}".encode()).digest()[:8], "big")
            for i in range(len(labels))
        ],
        dtype=np.uint64,
    )
    chosen = []
    for k in range(NUM_CLASSES):
        members = np.flatnonzero(labels == k)
        if len(members) < per_class:
            raise ValueError(f"{split}: class {k} has {len(members)} images < {per_class}")
        # stable sort: equal keys (never seen in practice) fall back to the index order
        order = np.argsort(keys[members], kind="stable")
        chosen.append(members[order[:per_class]])
    return np.sort(np.concatenate(chosen))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A reproducible ``.npz`` (loadable by ``np.load``): deflated members, fixed metadata."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(
                member, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # "Unix": otherwise it depends on the OS writing the file
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def make_subset(src: Path, train_per_class: int, test_per_class: int, seed: int) -> bytes:
    """The subset as ``.npz`` bytes: ``{train,test}_{images,labels,index}`` arrays.

    ``*_images`` are uint8 (N, 28, 28), ``*_labels`` uint8 (N,), and ``*_index`` uint16 (N,)
    the position of each image in the official file (for provenance).
    """
    arrays: dict[str, np.ndarray] = {}
    for split, prefix, per_class in (
        ("train", "train", train_per_class),
        ("test", "t10k", test_per_class),
    ):
        images = read_idx(find_file(src, f"{prefix}-images-idx3-ubyte"), 2051)
        labels = read_idx(find_file(src, f"{prefix}-labels-idx1-ubyte"), 2049)
        if len(images) != len(labels):
            raise ValueError(f"{src}: {prefix} has {len(images)} images but {len(labels)} labels")
        index = select(labels, per_class, seed, split)
        arrays[f"{split}_images"] = images[index]
        arrays[f"{split}_labels"] = labels[index].astype(np.uint8)
        arrays[f"{split}_index"] = index.astype(np.uint16)
    return npz_bytes(arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEBIAN_DIR, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        data = make_subset(args.src, args.train_per_class, args.test_per_class, args.seed)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, args.out)  # atomic: a failed run never leaves half a file
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
