"""A 12-trial collapse-aware search against full fine-tuning and plain ``auto``, in one run.

The offline task of ``benchmarks/finetune_strategies.py`` (packaged ImageNet
EfficientNet-Lite0 → Fashion-MNIST at 64 px, 300 training images per class, 600
validation images, the full 10,000-image test set, seed 0). Measured side by side:

1. full fine-tuning at its best learning rate from the strategies benchmark (1e-3),
   8 epochs;
2. plain ``auto`` (knee rule → SCL-FT) at its best rate there (3e-3), 8 epochs;
3. ``nctune.tune``: 12 trials of SCL-FT over the learning rate (log-uniform 3e-4…1e-2),
   the epochs (2…8) and the block (``blocks_from_profile: 4``: the four blocks the knee
   rule ranks best on the collapse profile), TPE sampler, median pruner. One profile for
   the whole search, one frozen-prefix cache per block shared by the trials, and the test
   split measured only for the best trial.

Reported: the best trial's test accuracy against full fine-tuning's and auto's, and the
whole search's wall time (profile, caches, every trial, test pass of the best, plots) as
a multiple of one full fine-tune's (its training, profile-free, plus its test pass).
Goal: best trial ≥ full fine-tuning's test accuracy, search ≤ 2× one full fine-tune.

    OMP_NUM_THREADS=1 python benchmarks/search.py            # the CPU benchmark
    python benchmarks/search.py --quick                     # 100 images/class, 3 epochs
    python benchmarks/search.py --set data.image_size=224   # a GPU user's run

Wall times on a shared machine are noisy; the three runs happen one after the other in
the same process, and the process CPU time is reported next to the wall time: with one
thread it does not move with the load other processes put on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_strategies import base_overrides  # the same task, the same settings

from nctune.config import load_recipe
from nctune.finetune import finetune
from nctune.tune import tune

FULL_LR, AUTO_LR = 1e-3, 3e-3  # best of three in benchmarks/finetune_strategies.py


def space(quick: bool) -> str:
    top = 3 if quick else 8
    return (
        "search.space={train.lr: {float: [0.0003, 0.01], log: true}, "
        f"train.epochs: {{int: [{max(1, top // 4)}, {top}]}}, "
        "strategy.layers: {blocks_from_profile: 4}}"
    )


def timed_finetune(overrides: list[str]) -> tuple[dict, float, float]:
    recipe = load_recipe(None, overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    r = finetune(recipe)
    return r.to_dict(), time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 images/class, 3 epochs, 2,000 test")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, help="search folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    base = [*base_overrides(args.quick), *args.set]
    print(
        f"# search benchmark — torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"overrides: {' '.join(base)}",
        flush=True,
    )

    full, full_s, full_cpu = timed_finetune([*base, "strategy.name=full", f"train.lr={FULL_LR}"])
    print(f"#   full  test {full['test_accuracy']:.4f}  total {full_s:.1f}s", flush=True)
    auto, auto_s, auto_cpu = timed_finetune([*base, "strategy.name=auto", f"train.lr={AUTO_LR}"])
    print(
        f"#   auto  test {auto['test_accuracy']:.4f}  total {auto_s:.1f}s  ({auto['tuned_layers']})",
        flush=True,
    )

    recipe = load_recipe(
        None, [*base, "strategy.name=scl", f"search.trials={args.trials}", space(args.quick)]
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="nctune-search-")) / "search"

    def show(t) -> None:
        if t.state in ("COMPLETE", "PRUNED", "FAIL"):
            print(
                f"#   trial {t.number:2d} {t.state:8s} {t.params} "
                f"val {t.val_accuracy} epochs {t.epochs} {t.wall_seconds or 0:.1f}s {t.reason or ''}",
                flush=True,
            )

    t0, c0 = time.perf_counter(), time.process_time()
    result = tune(recipe, out=out, on_trial=show)
    search_s, search_cpu = time.perf_counter() - t0, time.process_time() - c0
    best = result.best
    print()
    print(f"{'run':22s} | {'test acc':>8s} | {'wall s':>7s} | {'CPU s':>7s} | detail")
    print("-" * 80)
    print(
        f"{'full fine-tuning':22s} | {100 * full['test_accuracy']:7.2f}% | {full_s:7.1f} | {full_cpu:7.1f} | lr {FULL_LR}"
    )
    print(
        f"{'auto':22s} | {100 * auto['test_accuracy']:7.2f}% | {auto_s:7.1f} | {auto_cpu:7.1f} | "
        f"{', '.join(auto['tuned_layers'])}, lr {AUTO_LR}"
    )
    print(
        f"{'search best trial':22s} | {100 * best.test_accuracy:7.2f}% | {search_s:7.1f} | {search_cpu:7.1f} | "
        f"trial {best.number}: {best.params}"
    )
    print(
        f"search: {result.count('COMPLETE')} complete, {result.count('PRUNED')} pruned, "
        f"{result.count('FAIL')} failed; profile {result.profile_seconds:.1f}s; importances "
        f"{ {k: round(v, 2) for k, v in result.importances.items()} }"
    )
    ratio, cpu_ratio = search_s / full_s, search_cpu / full_cpu
    print()
    ok_acc = best.test_accuracy >= full["test_accuracy"]
    print(
        f"goal best trial >= full fine-tuning: {100 * best.test_accuracy:.2f}% vs "
        f"{100 * full['test_accuracy']:.2f}% -> {'met' if ok_acc else 'NOT met'} "
        f"(auto {100 * auto['test_accuracy']:.2f}%)"
    )
    print(
        f"goal search <= 2x one full fine-tune: wall {ratio:.2f}x -> "
        f"{'met' if ratio <= 2 else 'NOT met'}; CPU time {cpu_ratio:.2f}x -> "
        f"{'met' if cpu_ratio <= 2 else 'NOT met'} (one thread: CPU time does not move with "
        "the load of a shared machine, wall time does)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "overrides": base,
                    "full": {**full, "total_s": full_s, "cpu_s": full_cpu},
                    "auto": {**auto, "total_s": auto_s, "cpu_s": auto_cpu},
                    "search": {**result.to_dict(), "total_s": search_s, "cpu_s": search_cpu},
                    "ratio": ratio,
                    "cpu_ratio": cpu_ratio,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
