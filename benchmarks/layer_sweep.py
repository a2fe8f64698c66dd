"""Layer sweep on the offline default: which single block is best to tune, and which rule finds it.

Fine-tunes every block of packaged ImageNet EfficientNet-Lite0 on Fashion-MNIST in turn —
Layer-FT (the block + a fresh head) and SCL-FT (the block + a head fed by that block and
the penultimate features) — and compares the results with what each selection rule picks
from the one-pass collapse profile of the pretrained backbone.

    python benchmarks/layer_sweep.py --quick          # ≤ 15 min on 2 CPU cores
    python benchmarks/layer_sweep.py                  # more data and epochs
    python benchmarks/layer_sweep.py --set backbone.name=timm:resnet50 \\
        --set data.image_size=224 --set device=cuda   # a GPU user's full-size run

Writes the table to stdout, ``docs/figures/layer_sweep.png`` (accuracy and NC1 against the
tuned block, the rules' picks marked) and, with ``--json``, every number. The same sweep
runs on your own data with ``nctune sweep RECIPE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from nctune.config import load_recipe
from nctune.report import plot_sweep, sweep_table
from nctune.sweep import layer_sweep

ROOT = Path(__file__).resolve().parents[1]


def overrides(quick: bool) -> list[str]:
    """The offline default at CPU size; ``--quick`` trims data and epochs to fit 15 minutes."""
    return [
        "backbone.name=packaged:efficientnet_lite0",
        "data.source=fashion_mnist",
        "data.subset=auto",
        "data.image_size=64",
        f"data.samples_per_class={40 if quick else 200}",
        "data.val_fraction=0.01",
        f"data.max_test_samples={1000 if quick else 10000}",
        "data.batch_size=64",
        f"train.epochs={3 if quick else 6}",
        "train.lr=0.002",
        "train.warmup_epochs=0.5",
        "seed=0",
    ]


def run(args_set: list[str], quick: bool, blocks: list[str] | None = None, modes=("layer", "scl")):
    recipe = load_recipe(None, [*overrides(quick), *args_set])
    return layer_sweep(recipe, blocks=blocks, modes=modes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="40 images/class, 3 epochs, 1,000 test images"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override (repeatable)",
    )
    p.add_argument("--blocks", help="comma-separated blocks/globs (default: all)")
    p.add_argument("--modes", default="layer,scl")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "figures" / "layer_sweep.png")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    t0 = time.perf_counter()
    result = run(
        args.set,
        args.quick,
        args.blocks.split(",") if args.blocks else None,
        tuple(args.modes.split(",")),
    )
    console = Console(width=160)
    console.print(sweep_table(result))
    for rule, regret in sorted(result.regret.items()):
        gaps = ", ".join(f"{m} {g:.2f} pts" for m, g in regret.items() if g is not None)
        console.print(
            f"rule {rule:8s} picks {result.picks[rule]:12s} gap to the best block: {gaps}"
        )
    plot_sweep(result, args.plot)
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    print(
        f"# {len(result.points)} runs in {time.perf_counter() - t0:.0f} s; plot: {args.plot}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
