"""Does ``auto`` keep its promise? Every strategy on every task, seeds, one table (issue 19).

Each cell of the table is one task × one strategy, replicated over seeds. For every seed a
strategy gets the same learning-rate budget: one ``nctune finetune`` run per rate of its
grid (``--lr-budget N`` takes the first N, grids below), the run with the best validation
accuracy is kept (ties: the earlier rate of the grid), and its test accuracy is that
seed's result. A rate of ``None`` (``--lrs auto=None``) runs the strategy once at its own
choice (no ``train.lr`` override), so a strategy that spends its budget inside nctune is
charged for it inside its own process.

Every run is its own process, ``python -m nctune finetune --set … --out DIR --json -q
--threads 1`` with ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``, and its cost is the child's CPU
time (user + sys from ``os.wait4``): the only time figure that survives a shared machine.
Wall seconds are kept for information. Accuracy, validation accuracy, parameter counts and
the in-process timings (``profile_seconds``, ``wall_seconds`` = training: prefix cache,
epochs, validation; ``total_seconds`` = all of ``finetune()``) come from the run's JSON.

Tasks (64 px, packaged ImageNet EfficientNet-Lite0, AdamW, cosine, batch 64, CPU):

* ``fmnist``         vendored Fashion-MNIST subset: 2,700 train, 300 val, 1,000 test;
* ``digits``         scikit-learn digits (8×8, upsampled): 15 % val, 25 % test (449 images);
* ``fmnist-10shot``  ``fmnist`` with 10 training images per class (validation and test
  unchanged), batch 16 (7 steps an epoch);
* ``digits-10shot``  ``digits`` with 10 training images per class, batch 16;
* ``shapes``         a seeded procedural domain-shift set written once into the work folder:
  10 classes = 5 shapes × 2 textures (stripes, checks), random colours, positions, sizes,
  rotations and noisy backgrounds; 80 images per class, 15 % val, 25 % test.

The seed moves everything a replicate should: held-out splits (digits, shapes), the
few-shot sample, the head's initialisation and the data order. Auto and full with the
same seed see the same data, so the goals also give their paired difference (mean ± SE).
Every record keeps the nctune commit it ran on (``+dirty`` for uncommitted changes); the
table warns when cached runs of different versions are mixed.

Goals (issue 19), each printed met / NOT met from the measured numbers: auto ≥ full − 0.5
points on every task and ≥ full on the suite mean; auto ≥ linear + 3 points on every
task; auto ≤ 10 % trainable; auto ≤ 0.25× full's CPU seconds per run (equal epochs); a
linear probe's process ≤ 1.3× its training time (end-to-end wall / report
``wall_seconds``, both wall clocks so that machine load cancels); with ``--with-tune``,
``nctune tune``'s best trial ≥ full on the suite mean and the whole search ≤ 2× one full
fine-tune's CPU seconds.

    python benchmarks/suite.py --quick         # 2 few-shot tasks, 3 seeds, 2 rates, 3 epochs:
                                               # 48 runs, 12-14 min on one idle core (half of
                                               # it process start-up: ~9 s of CPU per run)
    python benchmarks/suite.py                 # 5 tasks, 3 seeds, 3 rates, 5 epochs: 180 runs,
                                               # ~3 h of CPU at one thread (--jobs 2 halves
                                               # the wall time on an idle 2-core machine)
    python benchmarks/suite.py --with-tune     # + nctune tune (6 trials) per task and seed
    python benchmarks/suite.py --lrs auto=None # auto picks its own rate, one run per seed
    python benchmarks/suite.py --tasks digits --strategies linear,auto --seeds 5 --plan

Resumable: each finished run's record is kept under ``--work`` (default
``benchmarks/.suite-cache``) keyed by its exact command, so a re-run skips it; the table
(``--out-md``, default WORK/suite.md) and every raw run (``--out-json``, WORK/suite.json)
are written at the end. Model weights of finished runs are deleted to save disk. Each run
starts in its own folder, so paths given with ``--set`` must be absolute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = ROOT / "benchmarks" / ".suite-cache"

STRATEGIES = ("linear", "full", "lp-ft", "auto")
# Rates per strategy in order of preference (best first in benchmarks/finetune_strategies.py
# on Fashion-MNIST); a budget of N takes the first N. Head-only probes take large steps,
# whole-network tuning small ones; lp-ft's rate is its probe's (the full phase runs at 0.1×).
LR_GRID: dict[str, list[float | None]] = {
    "linear": [1e-2, 3e-2, 3e-3],
    "full": [1e-3, 3e-4, 1e-4],
    "lp-ft": [3e-2, 1e-2, 3e-3],
    "auto": [3e-3, 1e-3, 3e-4],
    "layers": [3e-3, 1e-3, 3e-4],
    "scl": [3e-3, 1e-3, 3e-4],
    "lora": [3e-3, 1e-3, 3e-4],
}
# auto's levers measured one at a time (issue 19): variants run as their own "strategy"
# (they keep auto's rate grid; auto-probe-lr chooses its own rate by the range test).
_PROBE = ["strategy.name=auto", "strategy.probe_blocks=3"]
VARIANTS: dict[str, list[str]] = {
    "auto-probe": _PROBE,
    "auto-probe-warm": [*_PROBE, "strategy.warm_start=true"],
    "auto-probe-lr": [*_PROBE, "strategy.warm_start=true", "strategy.lr_finder=true"],
}
LR_GRID.update({"auto-probe": LR_GRID["auto"], "auto-probe-warm": LR_GRID["auto"]})
LR_GRID["auto-probe-lr"] = [None]
_FMNIST = ["data.source=fashion_mnist", "data.subset=vendored", "data.val_fraction=0.1"]
_DIGITS = ["data.source=digits", "data.val_fraction=0.15", "data.test_fraction=0.25"]
_SHAPES = ["data.source=imagefolder", "data.path={shapes}", "data.val_fraction=0.15"]
# Task name → recipe overrides; "{shapes}" is replaced by the generated image folder.
TASKS: dict[str, list[str]] = {
    "fmnist": _FMNIST,
    "digits": _DIGITS,
    # batch 16: 100 training images make 7 steps an epoch, not 2
    "fmnist-10shot": [*_FMNIST, "data.samples_per_class=10", "data.batch_size=16"],
    "digits-10shot": [*_DIGITS, "data.samples_per_class=10", "data.batch_size=16"],
    "shapes": [*_SHAPES, "data.test_fraction=0.25"],
}
QUICK_TASKS = ("fmnist-10shot", "digits-10shot")
# nctune tune's space for --with-tune: SCL-FT over the rate and the block, epochs fixed.
TUNE_SPACE = (
    "search.space={train.lr: {float: [0.0003, 0.01], log: true}, "
    "strategy.layers: {blocks_from_profile: 3}}"
)
GOAL_MARGIN_FULL = 0.5  # points: auto ≥ full − this on every task
GOAL_MARGIN_LINEAR = 3.0  # points: auto ≥ linear + this on every task
GOAL_TRAINABLE = 10.0  # % of parameters
GOAL_CPU_RATIO = 0.25  # auto / full CPU seconds per run
GOAL_LINEAR_OVERHEAD = 1.3  # linear end-to-end / training time
GOAL_TUNE_RATIO = 2.0  # whole search / one full fine-tune, CPU seconds

_print_lock = threading.Lock()


# ---------------------------------------------------------------- settings and plan


@dataclass
class Settings:
    """What one invocation of the suite measures (every field a CLI option)."""

    tasks: list[str]
    strategies: list[str]
    seeds: list[int]
    lrs: dict[str, list[float | None]]
    epochs: int
    backbone: str = "packaged:efficientnet_lite0"
    image_size: int = 64
    extra: list[str] = field(default_factory=list)
    quick: bool = False
    jobs: int = 1
    work: Path = DEFAULT_WORK
    recipe: Path | None = None
    with_tune: bool = False
    tune_trials: int = 6

    def base_overrides(self, task: str, seed: int) -> list[str]:
        """Every recipe override of one run but the strategy's own."""
        shapes = str(self.work / SHAPES_DIR) if any("{shapes}" in o for o in TASKS[task]) else ""
        o = [
            f"backbone.name={self.backbone}",
            f"data.image_size={self.image_size}",
            "data.batch_size=64",
            f"train.epochs={self.epochs}",
            "device=cpu",
            *(t.replace("{shapes}", shapes) for t in TASKS[task]),
        ]
        if self.quick:
            o.append("data.max_test_samples=500")
        return [*o, *self.extra, f"seed={seed}"]


@dataclass(frozen=True)
class Spec:
    """One planned process: a fine-tune (``kind='finetune'``) or a search (``'tune'``)."""

    task: str
    strategy: str
    seed: int
    lr: float | None
    overrides: tuple[str, ...]
    kind: str = "finetune"
    trials: int = 0
    recipe: str | None = None

    def args(self) -> list[str]:
        """The nctune command line after ``python -m nctune``, without ``--out``."""
        sets = [x for o in self.overrides for x in ("--set", o)]
        extra = ["--trials", str(self.trials)] if self.kind == "tune" else []
        recipe = [self.recipe] if self.recipe else []
        return [self.kind, *recipe, *sets, *extra, "--json", "-q", "--threads", "1"]

    def folder(self, work: Path) -> Path:
        """The run's cache folder: readable names plus a hash of the exact command."""
        digest = hashlib.sha256(json.dumps(self.args()).encode()).hexdigest()[:10]
        lr = "own" if self.lr is None else f"{self.lr:g}"
        return work / "runs" / self.task / self.strategy / f"s{self.seed}-lr{lr}-{digest}"


def plan(settings: Settings) -> list[Spec]:
    """Every run of the suite, seeds outermost within a task so partial results are usable."""
    specs = []
    recipe = str(settings.recipe.resolve()) if settings.recipe else None
    for task in settings.tasks:
        for seed in settings.seeds:
            base = settings.base_overrides(task, seed)
            for strategy in settings.strategies:
                for lr in settings.lrs[strategy]:
                    o = [*base, *VARIANTS.get(strategy, [f"strategy.name={strategy}"])]
                    if lr is not None:
                        o.append(f"train.lr={lr:g}")
                    specs.append(Spec(task, strategy, seed, lr, tuple(o), recipe=recipe))
            if settings.with_tune:
                o = [*base, "strategy.name=scl", TUNE_SPACE]
                specs.append(
                    Spec(task, "tune", seed, None, tuple(o), "tune", settings.tune_trials, recipe)
                )
    return specs


# Rough CPU model for the printed estimate (seconds, 64 px Lite0, one thread): process
# start-up and imports, per image and epoch of training, per image forward pass. Calibrated
# on 10-shot runs at 3 epochs (linear ≈ 13 s, auto ≈ 14 s, full ≈ 18 s of CPU per run).
_EST_STARTUP = 9.0
_EST_TRAIN = {"full": 0.012, "lp-ft": 0.007, "auto": 0.004, "linear": 0.0003, "tune": 0.004}
_EST_FORWARD = 0.004
_EST_IMAGES = {  # train, val, test
    "fmnist": (2700, 300, 1000),
    "digits": (1078, 270, 449),
    "fmnist-10shot": (100, 300, 1000),
    "digits-10shot": (100, 270, 449),
    "shapes": (480, 120, 200),
}


def estimate_cpu(spec: Spec, settings: Settings) -> float:
    """A rough CPU-seconds guess for one run (only for the printed plan)."""
    train, val, test = _EST_IMAGES.get(spec.task, (500, 100, 200))
    if settings.quick:
        test = min(test, 500)
    trials = max(1, spec.trials)
    per_epoch = _EST_TRAIN.get(spec.strategy, 0.006) * train + val * _EST_FORWARD
    passes = (4 * train + test) * _EST_FORWARD  # profiles, head NC1 before/after, test
    return _EST_STARTUP + trials * settings.epochs * per_epoch + passes


# ---------------------------------------------------------------- running


def child_env() -> dict[str, str]:
    """The environment of every run: one thread everywhere, no colour, no progress."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


def measure(cmd: list[str], stdout: Path, stderr: Path, cwd: Path) -> dict[str, float]:
    """Run ``cmd`` to completion; its exit code, CPU seconds (user, sys) and wall seconds.

    ``os.wait4`` gives the resource usage of this child alone (and of any grandchildren
    it waited for), which stays right when several runs go in parallel threads.
    """
    with stdout.open("wb") as out, stderr.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return {
        "rc": proc.returncode,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "max_rss_mb": usage.ru_maxrss / 1024,
    }


def _drop_weights(folder: Path) -> None:
    """Delete model weights and checkpoints of a finished run (the suite never reads them)."""
    for pattern in ("*.safetensors", "*.pt", "*.pth"):
        for f in folder.rglob(pattern):
            f.unlink()


def run_spec(spec: Spec, settings: Settings) -> dict[str, Any]:
    """The record of one run: from the cache when it finished before, else run it now."""
    folder = spec.folder(settings.work)
    record_path = folder / "run.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("rc") == 0:
            return {**record, "cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    if out.exists():  # an interrupted earlier attempt: nctune refuses a used --out
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "nctune", *spec.args(), "--out", str(out)]
    version = code_version(folder)
    m = measure(cmd, folder / "stdout.json", folder / "stderr.txt", folder)
    record: dict[str, Any] = {
        "task": spec.task,
        "strategy": spec.strategy,
        "kind": spec.kind,
        "seed": spec.seed,
        "lr": spec.lr,
        "overrides": list(spec.overrides),
        "cmd": cmd,
        "code": version,
        **m,
    }
    if m["rc"] == 0:
        try:
            record["result"] = json.loads((folder / "stdout.json").read_text())
        except json.JSONDecodeError as e:
            record.update(rc=-1, error=f"stdout is not JSON: {e}")
    if m["rc"] != 0:
        err = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
        record.setdefault("error", " | ".join(err[-3:]))
    _drop_weights(out)
    record_path.write_text(json.dumps(record, indent=1))
    return {**record, "cached": False}


def code_version(cwd: Path) -> str:
    """The commit of the nctune a run imports, ``+dirty`` when its package has changes.

    Asked of the child's interpreter and environment (``PYTHONPATH`` may point elsewhere
    than this checkout); ``nctune at PATH`` when the package is not in a git work tree.
    """
    probe = "import importlib.util as u; print(u.find_spec('nctune').origin)"
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=child_env(), capture_output=True, text=True
    )
    if found.returncode != 0 or not found.stdout.strip():
        return "unknown"
    pkg = Path(found.stdout.strip()).parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=pkg, capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return f"nctune at {pkg}"
    return head + ("+dirty" if git("status", "--porcelain", "--", ".") else "")


def _describe(i: int, n: int, r: dict[str, Any]) -> str:
    lr = "own" if r["lr"] is None else f"{r['lr']:g}"
    head = f"[{i}/{n}] {r['task']} {r['strategy']} seed={r['seed']} lr={lr}"
    if r["rc"] != 0:
        return f"{head}: FAILED (rc {r['rc']}): {r.get('error', '')}"
    res = r["result"]
    if r["kind"] == "tune":
        res = res.get("best") or {}
    test, val = res.get("test_accuracy"), res.get("val_accuracy")
    acc = f"test {_fmt(test)} val {_fmt(val)}"
    return f"{head}: {acc} cpu {r['cpu_s']:.1f}s wall {r['wall_s']:.1f}s" + (
        " (cached)" if r.get("cached") else ""
    )


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def run_all(specs: list[Spec], settings: Settings) -> list[dict[str, Any]]:
    """Run (or read back) every spec, ``settings.jobs`` at a time; records in plan order."""
    done = [0]

    def one(spec: Spec) -> dict[str, Any]:
        r = run_spec(spec, settings)
        with _print_lock:
            done[0] += 1
            print(_describe(done[0], len(specs), r), flush=True)
        return r

    if settings.jobs <= 1:
        return [one(s) for s in specs]
    with ThreadPoolExecutor(settings.jobs) as pool:
        return list(pool.map(one, specs))


# ---------------------------------------------------------------- statistics


def mean_se(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean, s / √n (None where undefined).

    With n values x_i: mean x̄ = Σ x_i / n, s² = Σ (x_i − x̄)² / (n − 1), SE = s / √n.
    """
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _val(r: dict[str, Any]) -> float:
    res = (r["result"].get("best") or {}) if r["kind"] == "tune" else r["result"]
    v = res.get("val_accuracy")
    return -1.0 if v is None else v


def select(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The kept run of one seed: best validation accuracy, ties to the earlier rate."""
    ok = [r for r in records if r["rc"] == 0]
    best = None
    for r in ok:  # records arrive in grid order, so ">" keeps the earlier rate on a tie
        if best is None or _val(r) > _val(best):
            best = r
    return best


def _timings(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean per-run timings of finished fine-tunes (seconds)."""
    res = [r["result"] for r in runs if r["kind"] == "finetune"]

    def m(key: str) -> float | None:
        return _mean([x[key] for x in res if x.get(key) is not None])

    train, total = m("wall_seconds"), m("total_seconds")
    wall = _mean([r["wall_s"] for r in runs])
    return {
        "cpu_s": _mean([r["cpu_s"] for r in runs]),
        "wall_s": wall,
        "profile_s": m("profile_seconds"),
        "train_s": train,
        "finetune_s": total,
        "outside_s": None if wall is None or total is None else wall - total,
        "e2e_over_train": _mean(
            [r["wall_s"] / r["result"]["wall_seconds"] for r in runs if _train_s(r)]
        ),
    }


def _train_s(r: dict[str, Any]) -> float | None:
    return r["result"].get("wall_seconds") if r["kind"] == "finetune" else None


def summarize(records: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """One row per task × strategy (and tune): accuracy over seeds, parameters, CPU cost."""
    cells = []
    names = [*settings.strategies, *(["tune"] if settings.with_tune else [])]
    for task in settings.tasks:
        for strategy in names:
            mine = [r for r in records if r["task"] == task and r["strategy"] == strategy]
            if mine:
                cells.append(_cell(task, strategy, mine, settings))
    full = {c["task"]: c for c in cells if c["strategy"] == "full"}
    for c in cells:
        f = full.get(c["task"])
        ok = f and f["cpu_per_run"] and c["cpu_per_run"] is not None
        c["x_full_run"] = c["cpu_per_run"] / f["cpu_per_run"] if ok else None
        ok = f and f["cpu_per_seed"] and c["cpu_per_seed"] is not None
        c["x_full_seed"] = c["cpu_per_seed"] / f["cpu_per_seed"] if ok else None
    return cells


def _cell(task: str, strategy: str, mine: list[dict[str, Any]], settings: Settings) -> dict:
    ok = [r for r in mine if r["rc"] == 0]
    kept, seed_cost = [], []
    for seed in settings.seeds:
        runs = [r for r in mine if r["seed"] == seed]
        best = select(runs)
        if best is not None:
            kept.append(best)
        if runs and all(r["rc"] == 0 for r in runs):
            seed_cost.append(sum(r["cpu_s"] for r in runs))

    def res(r: dict[str, Any]) -> dict[str, Any]:
        return (r["result"].get("best") or {}) if r["kind"] == "tune" else r["result"]

    by_seed = {
        r["seed"]: 100 * res(r)["test_accuracy"]
        for r in kept
        if res(r).get("test_accuracy") is not None
    }
    tests = list(by_seed.values())
    vals = [100 * _val(r) for r in kept if _val(r) >= 0]
    test_mean, test_se = mean_se(tests)
    trainable = [res(r).get("trainable_percent") for r in kept]
    trainable = [t for t in trainable if t is not None]
    tuned = sorted({", ".join(res(r).get("tuned_layers") or ["head"]) for r in kept})
    return {
        "task": task,
        "strategy": strategy,
        "seeds": len(kept),
        "runs": len(mine),
        "failed": len(mine) - len(ok),
        "test_mean": test_mean,
        "test_se": test_se,
        "tests": tests,
        "test_by_seed": by_seed,
        "val_mean": _mean(vals),
        "lrs_kept": [r["lr"] for r in kept],
        "tuned": tuned,
        "trainable_max": max(trainable) if trainable else None,
        "cpu_per_run": _mean([r["cpu_s"] for r in ok]),
        "cpu_per_seed": _mean(seed_cost),
        "timings": _timings(ok),
    }


# ---------------------------------------------------------------- goals


def _goal(key: str, name: str, task: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {
        "id": key,
        "goal": name,
        "task": task,
        "measured": measured,
        "met": met,
        "status": "n/a" if met is None else ("met" if met else "NOT met"),
    }


def _pct(x: float | None, se: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f} %" if se is None else f"{x:.2f} ± {se:.2f} %"


def evaluate_goals(cells: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """Every goal of issue 19 that the measured cells can decide, met or not (else n/a)."""
    by = {(c["task"], c["strategy"]): c for c in cells}
    goals = []
    pairs = []  # (auto, full) test means per task, for the suite mean
    for task in settings.tasks:
        a, f, lin = by.get((task, "auto")), by.get((task, "full")), by.get((task, "linear"))
        goals += _accuracy_goals(task, a, f, lin, pairs)
        goals += _cost_goals(task, a, f, lin)
        t = by.get((task, "tune"))
        if t is not None:
            ok = t["cpu_per_run"] is not None and f is not None and f["cpu_per_run"]
            ratio = t["cpu_per_run"] / f["cpu_per_run"] if ok else None
            goals.append(
                _goal(
                    "tune_cost",
                    f"tune search ≤ {GOAL_TUNE_RATIO:g}× one full fine-tune (CPU s)",
                    task,
                    "–" if ratio is None else f"{ratio:.2f}× ({t['cpu_per_run']:.0f} s)",
                    None if ratio is None else ratio <= GOAL_TUNE_RATIO,
                )
            )
    goals += _suite_goals(cells, settings, pairs)
    return goals


def paired(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Mean ± SE of a − b over the seeds both cells kept (same seed: same splits and sample)."""
    common = sorted(set(a["test_by_seed"]) & set(b["test_by_seed"]))
    m, se = mean_se([a["test_by_seed"][s] - b["test_by_seed"][s] for s in common])
    if m is None:
        return "no common seed"
    return f"paired Δ {m:+.2f}" + ("" if se is None else f" ± {se:.2f}") + f", {len(common)} seeds"


def _accuracy_goals(task, a, f, lin, pairs) -> list[dict[str, Any]]:
    goals = []
    have_af = a and f and a["test_mean"] is not None and f["test_mean"] is not None
    if have_af:
        pairs.append((a["test_mean"], f["test_mean"]))
    d = a["test_mean"] - f["test_mean"] if have_af else None
    goals.append(
        _goal(
            "auto_vs_full",
            f"auto ≥ full − {GOAL_MARGIN_FULL:g} pt",
            task,
            "–"
            if d is None
            else f"auto {_pct(a['test_mean'], a['test_se'])} vs full "
            f"{_pct(f['test_mean'], f['test_se'])} (Δ {d:+.2f}; {paired(a, f)})",
            None if d is None else d >= -GOAL_MARGIN_FULL,
        )
    )
    have_al = a and lin and a["test_mean"] is not None and lin["test_mean"] is not None
    d = a["test_mean"] - lin["test_mean"] if have_al else None
    goals.append(
        _goal(
            "auto_vs_linear",
            f"auto ≥ linear + {GOAL_MARGIN_LINEAR:g} pt",
            task,
            "–"
            if d is None
            else f"auto {_pct(a['test_mean'])} vs linear {_pct(lin['test_mean'])} "
            f"(Δ {d:+.2f}; {paired(a, lin)})",
            None if d is None else d >= GOAL_MARGIN_LINEAR,
        )
    )
    return goals


def _cost_goals(task, a, f, lin) -> list[dict[str, Any]]:
    goals = []
    tr = a["trainable_max"] if a else None
    goals.append(
        _goal(
            "auto_trainable",
            f"auto ≤ {GOAL_TRAINABLE:g} % trainable",
            task,
            _pct(tr),
            None if tr is None else tr <= GOAL_TRAINABLE,
        )
    )
    ratio = a["x_full_run"] if a else None
    goals.append(
        _goal(
            "auto_cpu",
            f"auto ≤ {GOAL_CPU_RATIO:g}× full CPU s per run",
            task,
            "–"
            if ratio is None
            else f"{ratio:.3f}× ({a['cpu_per_run']:.1f} s / {f['cpu_per_run']:.1f} s)",
            None if ratio is None else ratio <= GOAL_CPU_RATIO,
        )
    )
    t = lin["timings"] if lin else {}
    over = t.get("e2e_over_train")
    goals.append(
        _goal(
            "linear_overhead",
            f"linear end to end ≤ {GOAL_LINEAR_OVERHEAD:g}× training",
            task,
            "–" if over is None else f"{over:.2f}× ({t['wall_s']:.1f} s / {t['train_s']:.1f} s)",
            None if over is None else over <= GOAL_LINEAR_OVERHEAD,
        )
    )
    return goals


def _suite_goals(cells, settings: Settings, pairs) -> list[dict[str, Any]]:
    goals = []
    complete = len(pairs) == len(settings.tasks) and pairs
    a_mean = sum(p[0] for p in pairs) / len(pairs) if complete else None
    f_mean = sum(p[1] for p in pairs) / len(pairs) if complete else None
    goals.append(
        _goal(
            "suite_auto_vs_full",
            "auto ≥ full on the suite mean",
            "suite",
            "–" if a_mean is None else f"auto {_pct(a_mean)} vs full {_pct(f_mean)}",
            None if a_mean is None else a_mean >= f_mean,
        )
    )
    if settings.with_tune:
        t = {c["task"]: c["test_mean"] for c in cells if c["strategy"] == "tune"}
        f = {c["task"]: c["test_mean"] for c in cells if c["strategy"] == "full"}
        ok = all(t.get(k) is not None and f.get(k) is not None for k in settings.tasks)
        tm = sum(t[k] for k in settings.tasks) / len(settings.tasks) if ok else None
        fm = sum(f[k] for k in settings.tasks) / len(settings.tasks) if ok else None
        goals.append(
            _goal(
                "suite_tune_vs_full",
                "tune best trial ≥ full on the suite mean",
                "suite",
                "–" if tm is None else f"tune {_pct(tm)} vs full {_pct(fm)}",
                None if tm is None else tm >= fm,
            )
        )
    return goals


# ---------------------------------------------------------------- report


def _num(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{spec}}{suffix}"


def _lr_text(lrs: list[float | None]) -> str:
    return ", ".join("own" if x is None else f"{x:g}" for x in lrs) or "–"


def render_markdown(
    cells: list[dict[str, Any]],
    goals: list[dict[str, Any]],
    settings: Settings,
    codes: list[str] | None = None,
) -> str:
    """The table, the time breakdown and the goals, as markdown.

    ``codes`` are the nctune versions (commit, ``+dirty``) the runs were measured with.
    """
    codes = sorted(set(codes or []))
    if len(codes) > 1:
        code = f"MIXED nctune versions {', '.join(codes)}: clear the work folder to compare"
    else:
        code = f"nctune {codes[0]}" if codes else ""
    lines = [
        f"Suite: {', '.join(settings.tasks)}; {settings.backbone} at {settings.image_size} px, "
        f"{settings.epochs} epochs, seeds {settings.seeds}, 1 thread per run"
        + (" (--quick)" if settings.quick else "")
        + (f"; {code}" if code else ""),
        "Rates tried per seed: "
        + "; ".join(f"{s} {_lr_text(settings.lrs[s])}" for s in settings.strategies)
        + (f"; tune {settings.tune_trials} trials" if settings.with_tune else ""),
        "",
        "| task | strategy | test acc (mean ± SE) | val acc | seeds | rates kept | trainable "
        "| CPU s/run | ×full | CPU s/seed | ×full | wall s/run |",
        "|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for c in cells:
        seeds = f"{c['seeds']}" + (f" ({c['failed']} runs failed)" if c["failed"] else "")
        lines.append(
            f"| {c['task']} | {c['strategy']} | {_pct(c['test_mean'], c['test_se'])} "
            f"| {_pct(c['val_mean'])} | {seeds} | {_lr_text(c['lrs_kept'])} "
            f"| {_num(c['trainable_max'], '.2f', ' %')} | {_num(c['cpu_per_run'])} "
            f"| {_num(c['x_full_run'], '.3f', '×')} | {_num(c['cpu_per_seed'])} "
            f"| {_num(c['x_full_seed'], '.3f', '×')} | {_num(c['timings']['wall_s'])} |"
        )
    lines += [
        "",
        "Where the time goes (mean wall s per run, from each run's JSON): outside = process "
        "start-up, imports, data loading and writing (end to end − finetune total); train = "
        "prefix cache, epochs, validation; other = head NC1 passes, test, profile after.",
        "",
        "| task | strategy | end to end | outside | profile | train | other | e2e / train |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for c in cells:
        t = c["timings"]
        parts = (t["finetune_s"], t["profile_s"], t["train_s"])
        other = None if None in parts else parts[0] - parts[1] - parts[2]
        lines.append(
            f"| {c['task']} | {c['strategy']} | {_num(t['wall_s'])} | {_num(t['outside_s'])} "
            f"| {_num(t['profile_s'])} | {_num(t['train_s'])} | {_num(other)} "
            f"| {_num(t['e2e_over_train'], '.2f', '×')} |"
        )
    lines += ["", "| goal | task | measured | |", "|---|---|---|---|"]
    for g in goals:
        status = g["status"] if g["met"] is not False else f"**{g['status']}**"
        lines.append(f"| {g['goal']} | {g['task']} | {g['measured']} | {status} |")
    met = sum(g["met"] is True for g in goals)
    missed = sum(g["met"] is False for g in goals)
    lines += ["", f"Goals: {met} met, {missed} NOT met, {len(goals) - met - missed} n/a."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- procedural task

SHAPES_DIR = "shapes-v1"  # bump the version when the generator changes
SHAPES_PER_CLASS = 80
SHAPES_SIZE = 64
SHAPES_SEED = 20261201
_SHAPE_KINDS = ("disc", "ring", "square", "triangle", "cross")
_TEXTURES = ("stripes", "checks")


def _shape_mask(kind: str, x, y, radius: float, angle: float):
    import numpy as np

    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    r = np.hypot(x, y)
    if kind == "disc":
        return r < radius
    if kind == "ring":
        return (r < radius) & (r > 0.55 * radius)
    if kind == "square":
        return (np.abs(u) < 0.8 * radius) & (np.abs(v) < 0.8 * radius)
    if kind == "cross":
        arm = radius / 3
        return ((np.abs(u) < arm) & (np.abs(v) < radius)) | (
            (np.abs(v) < arm) & (np.abs(u) < radius)
        )
    # triangle: inside the three half-planes of an equilateral triangle of circumradius r
    inside = np.ones_like(x, dtype=bool)
    for k in range(3):
        t = angle + 2 * np.pi * k / 3
        inside &= np.cos(t) * x + np.sin(t) * y < 0.5 * radius
    return inside


def _shape_image(shape: str, texture: str, rng):
    """One RGB uint8 image: a textured shape on a noisy, smoothly shaded background."""
    import numpy as np

    n = SHAPES_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    bg = rng.uniform(0, 255, 3)
    shade = rng.uniform(-40, 40, 3)[:, None, None] * ((xx + yy) / (2 * n) - 0.5)
    img = bg[:, None, None] + shade + rng.normal(0, 12, (3, n, n))
    cx, cy = rng.uniform(0.3 * n, 0.7 * n, 2)
    radius = rng.uniform(0.2 * n, 0.34 * n)
    angle = rng.uniform(0, 2 * np.pi)
    mask = _shape_mask(shape, xx - cx, yy - cy, radius, angle)
    period = rng.uniform(4, 9)
    t_angle = rng.uniform(0, np.pi)
    u = np.cos(t_angle) * xx + np.sin(t_angle) * yy
    v = -np.sin(t_angle) * xx + np.cos(t_angle) * yy
    if texture == "stripes":
        on = np.floor(u / period) % 2 == 0
    else:
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(c1 - c2).sum() < 150:  # the texture must be visible
        c2 = rng.uniform(0, 255, 3)
    fg = np.where(on[None], c1[:, None, None], c2[:, None, None]) + rng.normal(0, 8, (3, n, n))
    img = np.where(mask[None], fg, img)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def make_shapes(work: Path) -> Path:
    """Write the procedural domain-shift set once (seeded): WORK/shapes-v1/<class>/<i>.png."""
    import numpy as np
    from PIL import Image

    root = work / SHAPES_DIR
    if (root / "DONE").exists():
        return root
    tmp = work / f".{SHAPES_DIR}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(SHAPES_SEED)
    for shape in _SHAPE_KINDS:
        for texture in _TEXTURES:
            d = tmp / f"{shape}-{texture}"
            d.mkdir(parents=True)
            for i in range(SHAPES_PER_CLASS):
                Image.fromarray(_shape_image(shape, texture, rng)).save(d / f"{i:03d}.png")
    (tmp / "DONE").write_text("ok\n")
    if not (root / "DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    else:
        shutil.rmtree(tmp)
    return root


# ---------------------------------------------------------------- CLI


def _parse_lrs(items: list[str], strategies: list[str], budget: int) -> dict:
    lrs = {s: list(LR_GRID.get(s, [1e-3]))[:budget] for s in strategies}
    for item in items:
        name, _, values = item.partition("=")
        if name not in strategies:
            raise SystemExit(f"--lrs {item}: {name!r} is not among --strategies")
        parsed = []
        for v in values.split(","):
            parsed.append(None if v.strip().lower() in ("none", "own", "") else float(v))
        lrs[name] = parsed
    return lrs


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """The suite's settings from the command line (``--quick`` changes the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 few-shot tasks, 2 rates, 3 epochs")
    p.add_argument("--tasks", help=f"comma-separated subset of {', '.join(TASKS)}")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seeds", default="3", help="a count (0..N-1) or a comma-separated list")
    p.add_argument("--epochs", type=int, help="default 5 (--quick: 3)")
    p.add_argument("--lr-budget", type=int, help="rates per strategy and seed (default 3; quick 2)")
    p.add_argument(
        "--lrs",
        action="append",
        default=[],
        metavar="STRATEGY=LR[,LR…]",
        help="a strategy's own rates; None = its own choice (no train.lr)",
    )
    p.add_argument("--backbone", default="packaged:efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="extra")
    p.add_argument("--recipe", type=Path, help="base recipe file (default: nctune's defaults)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each one thread)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache of finished runs")
    p.add_argument("--out-md", type=Path, help="the table (default WORK/suite.md)")
    p.add_argument("--out-json", type=Path, help="every raw run (default WORK/suite.json)")
    p.add_argument("--with-tune", action="store_true", help="also nctune tune per task and seed")
    p.add_argument("--tune-trials", type=int, default=6)
    p.add_argument("--plan", action="store_true", help="print the runs and the estimate, stop")
    a = p.parse_args(argv)
    tasks = a.tasks.split(",") if a.tasks else list(QUICK_TASKS if a.quick else TASKS)
    for t in tasks:
        if t not in TASKS:
            p.error(f"--tasks: unknown task {t!r} (known: {', '.join(TASKS)})")
    strategies = a.strategies.split(",")
    seeds = [int(s) for s in a.seeds.split(",")] if "," in a.seeds else list(range(int(a.seeds)))
    budget = a.lr_budget or (2 if a.quick else 3)
    settings = Settings(
        tasks=tasks,
        strategies=strategies,
        seeds=seeds,
        lrs=_parse_lrs(a.lrs, strategies, budget),
        epochs=a.epochs or (3 if a.quick else 5),
        backbone=a.backbone,
        image_size=a.image_size,
        extra=a.extra,
        quick=a.quick,
        jobs=a.jobs,
        work=a.work.resolve(),
        recipe=a.recipe,
        with_tune=a.with_tune,
        tune_trials=a.tune_trials,
    )
    return settings, a


def main(argv: list[str] | None = None) -> int:
    """Plan, run (or read back) every run, print and write the table; 0 unless runs failed."""
    settings, a = parse_args(argv)
    specs = plan(settings)
    cached = [s for s in specs if _is_cached(s, settings)]
    todo = [s for s in specs if s not in cached]
    est = sum(estimate_cpu(s, settings) for s in todo)
    print(
        f"# suite: {len(specs)} runs ({len(cached)} cached, {len(todo)} to run), estimated "
        f"≈ {est / 60:.0f} min of CPU at one thread (≈ {est / 60 / max(1, settings.jobs):.0f} "
        f"min wall with --jobs {settings.jobs} on idle cores); work folder {settings.work}",
        flush=True,
    )
    if a.plan:
        for s in specs:
            print("#   " + " ".join(s.args()))
        return 0
    settings.work.mkdir(parents=True, exist_ok=True)
    if any("{shapes}" in o for t in settings.tasks for o in TASKS[t]):
        make_shapes(settings.work)
    t0 = time.perf_counter()
    records = run_all(specs, settings)
    cells = summarize(records, settings)
    goals = evaluate_goals(cells, settings)
    md = render_markdown(cells, goals, settings, [r.get("code", "unknown") for r in records])
    print()
    print(md, end="", flush=True)
    out_md = a.out_md or settings.work / "suite.md"
    out_json = a.out_json or settings.work / "suite.json"
    out_md.write_text(md)
    doc = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "seconds": time.perf_counter() - t0,
        "cells": cells,
        "goals": goals,
        "runs": records,
    }
    out_json.write_text(json.dumps(doc, indent=1, default=str))
    print(f"# wrote {out_md} and {out_json}", flush=True)
    return 1 if any(r["rc"] != 0 for r in records) else 0


def _is_cached(spec: Spec, settings: Settings) -> bool:
    path = spec.folder(settings.work) / "run.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("rc") == 0
    except json.JSONDecodeError:
        return False


if __name__ == "__main__":
    sys.exit(main())
