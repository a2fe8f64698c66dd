"""Tiny finished runs for inference and export tests (see the ``tiny_runs`` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: classes × (train, val, test) images per class
CLASSES = ("ant", "bee", "cat")
COUNTS = {"train": 10, "val": 4, "test": 6}
STRATEGY_SETS = {
    "linear": ["strategy.name=linear"],
    "scl": ["strategy.name=scl", "strategy.layers=[layer3.0]"],
    "lora": ["strategy.name=lora", "strategy.layers=[layer4.0]", "strategy.lora_rank=2"],
    "full": ["strategy.name=full"],
}


@dataclass
class TinyRun:
    run_dir: Path
    data: Path
    report: dict


def make_images(root: Path, seed: int = 0) -> Path:
    """``root/{train,val,test}/<class>/<i>.png``: 40×48 RGB, one mean colour per class."""
    rng = np.random.default_rng(seed)
    for split, n in COUNTS.items():
        for k, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((40, 48, 3))
                base[..., k] = 200  # a dominant channel per class, plus noise
                pixels = np.clip(base + rng.normal(0, 50, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def make_tiny_run(root: Path, strategy: str) -> TinyRun:
    import json

    from nctune.config import load_recipe
    from nctune.finetune import finetune
    from nctune.runs.artifacts import save_run

    data = root / "images"
    if not data.exists():
        make_images(data)
    sets = [
        "backbone.name=timm:resnet10t",
        "backbone.pretrained=false",
        "data.source=imagefolder",
        f"data.path={data}",
        "data.image_size=32",
        "data.batch_size=8",
        "train.epochs=2",
        "train.lr=0.01",
        "device=cpu",
        *STRATEGY_SETS[strategy],
    ]
    recipe = load_recipe(None, sets)
    result = finetune(recipe)
    run_dir = root / f"run-{strategy}"
    save_run(run_dir, result, recipe.to_yaml())
    return TinyRun(run_dir, data, json.loads((run_dir / "report.json").read_text()))
