"""What the data package reads from a recipe's ``data`` section.

:class:`nctune.config.DataConfig` satisfies :class:`DataSection`; data takes it duck-typed,
so it never imports the recipe that sits above it and validates its names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class DataSection(Protocol):
    """The fields of ``data`` that sources, splits and loaders read (see docs/recipes.md)."""

    source: str
    path: Path | None
    name: str | None
    download: bool
    subset: str
    val_fraction: float
    test_fraction: float
    samples_per_class: int | None
    max_test_samples: int | None
    image_size: int | None
    augment: bool | str
    random_erase: float
    balanced_sampler: bool
    batch_size: int
    num_workers: int
    image_key: str | None
    label_key: str | None
    classes: list[str] | None
    streaming: bool
