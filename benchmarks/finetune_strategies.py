"""Every fine-tuning strategy on the same offline transfer task, in one run.

Packaged ImageNet EfficientNet-Lite0 → Fashion-MNIST (≥ 64 px), a few hundred training
images per class, fixed seed. Each strategy gets the same epoch budget and the best of
three learning rates, chosen on the validation split; accuracy is then measured on the
full 10,000-image Fashion-MNIST test set (the Debian ``dataset-fashion-mnist`` files; the
vendored 1,000-image test subset stands in, with a warning, when they are absent).

    python benchmarks/finetune_strategies.py                 # the CPU benchmark (~40 min on 2 cores)
    python benchmarks/finetune_strategies.py --quick         # smoke run (a few minutes)
    python benchmarks/finetune_strategies.py --set backbone.name=timm:resnet50 \\
        --set data.image_size=224 --set data.batch_size=128  # a GPU user's full-size run

"wall s" is the training time of the kept run: the profile pass when the strategy needs
one (auto), prefix caching, every epoch and its validation — not the final test pass.
The goal lines (auto ≤ 10 % trainable, ≤ 0.25× full's wall time, accuracy ≥ both full and
linear) are printed last with the measured ratios, met or not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nctune.config import load_recipe
from nctune.data import DEBIAN_FASHION_MNIST
from nctune.finetune import finetune

# Learning rates per strategy: head-only probes take large steps, whole-network
# tuning small ones (pretrained features break under large updates).
LRS = {
    "linear": [3e-3, 1e-2, 3e-2],
    "full": [1e-4, 3e-4, 1e-3],
    "layers": [3e-4, 1e-3, 3e-3],
    "scl": [3e-4, 1e-3, 3e-3],
    "lora": [3e-4, 1e-3, 3e-3],
    "lp-ft": [3e-3, 1e-2, 3e-2],  # the probe's rate; the full phase runs at 0.1x
    "auto": [3e-4, 1e-3, 3e-3],
}
# What each strategy tunes when the recipe does not say: `layers` and `auto` let the
# NC rule choose; `scl` uses the deepest block, the choice a user makes without nctune.
EXTRA = {
    "layers": ["strategy.rule=knee"],
    "scl": ["strategy.rule=last"],
    "lora": ["strategy.lora_rank=8"],
}


def base_overrides(quick: bool) -> list[str]:
    full_test = (Path(DEBIAN_FASHION_MNIST) / "t10k-images-idx3-ubyte.gz").exists()
    if not full_test:
        print(
            "# warning: Debian Fashion-MNIST files absent: using the vendored 1,000-image test subset",
            file=sys.stderr,
        )
    o = [
        "backbone.name=packaged:efficientnet_lite0",
        "data.source=fashion_mnist",
        f"data.subset={'full' if full_test else 'vendored'}",
        "data.image_size=64",
        f"data.samples_per_class={100 if quick else 300}",
        "data.val_fraction=0.01",  # 600 validation images from the 60k pool
        "data.batch_size=64",
        f"train.epochs={3 if quick else 8}",
        "train.warmup_epochs=1",
        "train.profile_after=false",
        "seed=0",
    ]
    if quick:
        o.append("data.max_test_samples=2000")
    return o


def run_one(strategy: str, lr: float, overrides: list[str]) -> dict:
    recipe = load_recipe(
        None, [*overrides, f"strategy.name={strategy}", f"train.lr={lr}", *EXTRA.get(strategy, [])]
    )
    t0 = time.perf_counter()
    r = finetune(recipe)
    return {
        "strategy": strategy,
        "lr": lr,
        "tuned": ", ".join(r.tuned_layers) or "head",
        "trainable_pct": 100.0 * r.trainable_params / r.total_params,
        "wall_s": r.wall_seconds + (r.profile_seconds if strategy == "auto" else 0.0),
        "val_acc": r.val_accuracy,
        "test_acc": r.test_accuracy,
        "nc1_after": r.nc1_after,
        "nc1_before": r.nc1_before,
        "cache": r.cache.get("where") if r.cache.get("used") else "off",
        "total_s": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="100 images/class, 3 epochs, 2,000 test images, one learning rate",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe override for every run",
    )
    p.add_argument("--strategies", default=",".join(LRS), help="comma-separated subset")
    p.add_argument("--json", type=Path, help="also write every run's numbers here")
    args = p.parse_args()
    overrides = [*base_overrides(args.quick), *args.set]
    print(
        f"# finetune strategies — torch {torch.__version__}, {torch.get_num_threads()} threads, overrides: {' '.join(overrides)}",
        flush=True,
    )
    runs, best = [], {}
    for strategy in args.strategies.split(","):
        lrs = LRS[strategy][1:2] if args.quick else LRS[strategy]
        for lr in lrs:
            res = run_one(strategy, lr, overrides)
            runs.append(res)
            print(
                f"#   {strategy:7s} lr={lr:<7g} val {res['val_acc']:.4f} test {res['test_acc']:.4f} wall {res['wall_s']:.1f}s",
                flush=True,
            )
            if strategy not in best or res["val_acc"] > best[strategy]["val_acc"]:
                best[strategy] = res
    print()
    print(
        f"{'strategy':8s} | {'tuned blocks':22s} | {'trainable':>9s} | {'wall s':>7s} | {'test acc':>8s} | {'NC1 after':>9s} | {'lr':>6s} | cache"
    )
    print("-" * 96)
    for s, r in best.items():
        tuned = r["tuned"] if len(r["tuned"]) <= 22 else r["tuned"][:19] + "..."
        print(
            f"{s:8s} | {tuned:22s} | {r['trainable_pct']:8.2f}% | {r['wall_s']:7.1f} | {100 * r['test_acc']:7.2f}% | {r['nc1_after']:9.4g} | {r['lr']:6g} | {r['cache']}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"overrides": overrides, "runs": runs, "best": best}, indent=2)
        )
    if {"auto", "full", "linear"} <= set(best):
        a, f, lin = best["auto"], best["full"], best["linear"]
        print()
        print(
            f"goal auto trainable <= 10%: {a['trainable_pct']:.2f}% -> {'met' if a['trainable_pct'] <= 10 else 'NOT met'}"
        )
        ratio = a["wall_s"] / f["wall_s"]
        print(
            f"goal auto/full wall time <= 0.25x: {ratio:.3f}x -> {'met' if ratio <= 0.25 else 'NOT met'}"
        )
        ok = a["test_acc"] >= f["test_acc"] and a["test_acc"] >= lin["test_acc"]
        print(
            f"goal auto accuracy >= full and linear: auto {100 * a['test_acc']:.2f}% vs full {100 * f['test_acc']:.2f}%, linear {100 * lin['test_acc']:.2f}% -> {'met' if ok else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
