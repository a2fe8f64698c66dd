"""Shared fixtures for command-line tests: tiny image folders and recipe files.

Everything is written under ``tmp_path``; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console

from nctune.cli import common

#: A recipe small enough for a CPU test: random-init resnet10t, 32 px, one batch.
TINY_RECIPE: dict[str, Any] = {
    "backbone": {"name": "timm:resnet10t", "pretrained": False},
    "data": {"source": "imagefolder", "image_size": 32, "batch_size": 16, "val_fraction": 0.25},
    "device": "cpu",
}


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(autouse=True)
def plain_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands' stderr console as a redirected stream sees it: not a terminal.

    Rich reads FORCE_COLOR / TTY_COMPATIBLE once, when a console is made; a CI that sets
    them would otherwise turn on colour codes and the progress bar inside CliRunner.
    """
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "CLICOLOR_FORCE", "PY_COLORS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(common, "err_console", Console(stderr=True))


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_image_folder(name, {class: count}, size=32)`` → a folder of class folders of PNGs.

    Each class has its own mean colour plus noise, so the classes are separable but not
    trivially collapsed. ``{"train": {...}, "val": {...}}`` makes split subfolders instead.
    """

    def make(name: str, counts: Mapping[str, Any], size: int = 32, seed: int = 0) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        if counts and all(isinstance(v, Mapping) for v in counts.values()):
            for split, per_class in counts.items():
                make(f"{name}/{split}", per_class, size, seed + 1)
            return root
        for k, (cls, n) in enumerate(counts.items()):
            folder = root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((size, size, 3), 40 + 60 * k, dtype=np.float64)
                pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
        return root

    return make


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """``write_recipe(name="recipe.yaml", **sections)`` → :data:`TINY_RECIPE` merged with
    ``sections`` (nested dicts merge, other values replace), written as YAML."""

    def write(name: str = "recipe.yaml", /, **sections: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(_merge(TINY_RECIPE, sections), sort_keys=False))
        return path

    return write
