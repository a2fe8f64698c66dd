"""The same images three ways: an image folder, a saved Hugging Face dataset (and Parquet
file), WebDataset shards. Built in a temporary folder by the tests; nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("ant", "bee", "cow")


def image_folder(root: Path, per_class: int = 12, side: int = 32, seed: int = 0) -> Path:
    """Seeded noise PNGs (RGB, ``side`` px), one folder a class; a class shifts the mean."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 160, (side, side, 3)) + 40 * ci
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def hf_dataset(folder: Path):
    """The image folder as a ``datasets.Dataset`` (Image + ClassLabel), in its order."""
    import datasets

    from nctune.data import list_images

    paths = [p for c in CLASSES for p in list_images(folder / c)]
    labels = [CLASSES.index(Path(p).parent.name) for p in paths]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}
    )
    return datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)


def shards(folder: Path, out: Path, shard_size: int = 10) -> Path:
    from nctune.data.sources.webdataset import write_shards

    out.mkdir(parents=True, exist_ok=True)
    write_shards(folder, out, shard_size)
    return out
