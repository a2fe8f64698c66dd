"""Collapse-aware hyper-parameter search: an Optuna study whose trials are ``finetune`` runs.

What nctune adds to a plain Optuna loop:

* every trial runs :func:`nctune.finetune.finetune` — the code path of ``nctune
  finetune`` — with the trial's values set at dotted recipe paths, in its own run folder
  ``OUT/trials/<number>`` (``nctune finetune OUT/best.yaml`` reproduces the best one);
* the search space may come from collapse: ``strategy.layers: {blocks_from_profile: k}``
  offers the k blocks the recipe's selection rule ranks best on the backbone's NC
  profile, measured once per (backbone, data, seed) and shared by every trial;
* frozen-prefix features are cached once per (prefix weights, block, data, transform) in
  ``OUT/prefix-cache`` and read by every later trial that tunes the same block;
* trials report validation accuracy after every epoch, so the pruner stops poor ones.

Several workers (processes, machines) share a study through its storage: SQLite in
``OUT/study.db`` by default, any SQLAlchemy URL (PostgreSQL, MySQL), or an Optuna
journal file (``journal:PATH`` or a path ending in ``.log``). With a SQL storage a
running trial sends a heartbeat; a trial whose worker died is marked failed after the
grace period and retried once (Optuna's retry callback). Re-running the same search
continues the study until it holds ``search.trials`` finished (complete or pruned) trials.

The library never prints: progress goes to the ``on_trial`` and ``progress`` callbacks,
and the result is a :class:`SearchResult`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
import yaml
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import DataLoader

from nctune.artifacts import (
    MODEL_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    load_finetuned,
    save_run,
)
from nctune.config import Recipe, _wants_list, recipe_from_dict
from nctune.errors import ConfigError, NctuneError
from nctune.finetune import _profile, finetune, prepare
from nctune.report.search import plot_search
from nctune.selection import recipe_rule, select_layers
from nctune.train import CHECKPOINT, EpochStats, evaluate

STUDY_DB = "study.db"
SEARCH_FILE = "search.json"
BEST_RECIPE = "best.yaml"
TRIALS_DIR = "trials"
CACHE_DIR = "prefix-cache"
PLOT_FILE = "search.png"
TRIAL_FILE = "trial.json"

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_PRIMITIVE = (type(None), bool, int, float, str)


class SearchFailedError(NctuneError):
    """Every trial of a search failed; the message carries the first trial's reason.

    Attributes:
        bad_input: the first failure was bad input (an :class:`~nctune.errors.NctuneError`,
            e.g. a sampled combination the recipe refuses): the CLI exits 2, else 1.
    """

    def __init__(self, message: str, bad_input: bool) -> None:
        super().__init__(message)
        self.bad_input = bad_input


class _Interrupted(Exception):
    """A stop request ended a trial mid-way (it is failed, and re-queued for a re-run)."""


class _Surplus(Exception):
    """Another worker already started the study's last trial; this one never ran."""


@dataclass
class TrialRecord:
    """One trial as the report shows it.

    Attributes:
        number: Optuna's trial number (its run folder is ``OUT/trials/<number>``).
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``.
        params: dotted recipe path → sampled value.
        value: the trial's score (``search.metric``), None unless complete.
        val_accuracy, test_accuracy: the run's accuracies.
        nc1_after: NC1 of the head's input after training (training split, eval mode).
        trainable_percent: share of the parameters that trained.
        tuned_layers: the blocks that trained.
        epochs: epochs run (fewer than asked when pruned).
        wall_seconds: the trial's wall time.
        run_dir: the trial's run folder.
        reason: why it failed or was pruned.
    """

    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    nc1_after: float | None = None
    trainable_percent: float | None = None
    tuned_layers: list[str] | None = None
    epochs: int | None = None
    wall_seconds: float | None = None
    run_dir: str | None = None
    reason: str | None = None

    @classmethod
    def from_frozen(cls, t: FrozenTrial) -> TrialRecord:
        a = t.user_attrs
        return cls(
            number=t.number,
            state=t.state.name,
            params=dict(t.params),
            value=t.value if t.state == TrialState.COMPLETE else None,
            val_accuracy=a.get("val_accuracy"),
            test_accuracy=a.get("test_accuracy"),
            nc1_after=a.get("nc1_after"),
            trainable_percent=a.get("trainable_percent"),
            tuned_layers=a.get("tuned_layers"),
            epochs=a.get("epochs", len(t.intermediate_values) or None),
            wall_seconds=a.get("wall_seconds"),
            run_dir=a.get("run_dir"),
            reason=a.get("fail_reason"),
        )


@dataclass
class SearchResult:
    """A finished (or stopped) search (``search.json`` is :meth:`to_dict`).

    Attributes:
        study_name, storage: where the study lives (the storage URL without a password).
        out: the search folder.
        metric, direction: what was optimised.
        trials_requested: the finished trials the study should hold.
        space: dotted path → the distribution searched (profile blocks resolved).
        trials: every trial of the study, in number order.
        best: the best complete trial (None when none completed).
        best_recipe: ``OUT/best.yaml``, the best trial's resolved recipe.
        importances: parameter → importance (Optuna's default evaluator; empty with fewer
            than two complete trials or nothing varying).
        profile_seconds: time spent measuring collapse profiles in this worker.
        seconds: this worker's wall time.
        interrupted: a stop request ended this worker's search early.
    """

    study_name: str
    storage: str
    out: str
    metric: str
    direction: str
    trials_requested: int
    space: dict[str, Any]
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_recipe: str | None
    importances: dict[str, float] = field(default_factory=dict)
    profile_seconds: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False

    def count(self, state: str) -> int:
        """Trials in ``state`` (``'COMPLETE'``, ``'PRUNED'``, ``'FAIL'``…)."""
        return sum(t.state == state for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        """The ``search.json`` document."""
        out = {k: v for k, v in asdict(self).items() if k not in ("trials", "best")}
        out["counts"] = {s: self.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        out["best"] = asdict(self.best) if self.best else None
        out["trials"] = [asdict(t) for t in self.trials]
        return out


# ------------------------------------------------------------------ search space
def rank_blocks(profile, strategy, k: int) -> list[str]:
    """The ``k`` blocks the recipe's selection rule ranks best, best first.

    The rule picks a block from the profile's blocks; the pick is removed and the rule
    applied again to the rest, ``k`` times: ``last`` yields the deepest blocks,
    ``min_nc1`` the most collapsed, ``knee`` successive knees of the NC1 curve.

    Args:
        profile: the backbone's :class:`~nctune.profile.CollapseProfile` on the data.
        strategy: the recipe's ``strategy`` section (``rule``, ``threshold``).
        k: how many blocks (fewer when the profile has fewer).

    Returns:
        Block module paths, in the order the rule ranks them.
    """
    rule, params = recipe_rule(strategy)
    left = list(profile.blocks)
    ranked: list[str] = []
    while left and len(ranked) < k:
        view = type(profile)(left, profile.num_samples, profile.num_classes, 0.0)
        pick = select_layers(view, rule, **params).layers[0]
        ranked.append(pick)
        left = [b for b in left if b.name != pick]
    return ranked


def _encode(value: Any) -> Any:
    return value if isinstance(value, _PRIMITIVE) else json.dumps(value)


def _resolved_space(recipe: Recipe, profile_of: Callable[[Recipe], Any]) -> dict[str, dict]:
    """Dotted path → ``{'kind', 'low', 'high', 'log', 'step', 'choices'}`` for the sampler."""
    out: dict[str, dict] = {}
    for path, d in recipe.search.space.items():
        if d.kind == "blocks_from_profile":
            blocks = rank_blocks(profile_of(recipe), recipe.strategy, d.blocks_from_profile)
            out[path] = {"kind": "choice", "choices": blocks}
        elif d.kind == "choice":
            out[path] = {"kind": "choice", "choices": list(d.choice)}
        else:
            lo, hi = d.float_ or d.int_
            out[path] = {"kind": d.kind, "low": lo, "high": hi, "log": d.log, "step": d.step}
    return out


def _suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """The trial's value for every searched path (decoded: lists come back as lists)."""
    values = {}
    for path, d in space.items():
        if d["kind"] == "float":
            values[path] = trial.suggest_float(
                path, d["low"], d["high"], log=d["log"], step=d["step"]
            )
        elif d["kind"] == "int":
            step = int(d["step"]) if d["step"] else 1
            values[path] = trial.suggest_int(path, d["low"], d["high"], log=d["log"], step=step)
        else:
            encoded = [_encode(c) for c in d["choices"]]
            got = trial.suggest_categorical(path, encoded)
            values[path] = d["choices"][encoded.index(got)]
    return values


def trial_recipe(recipe: Recipe, values: dict[str, Any], source: str = "trial") -> Recipe:
    """``recipe`` with each dotted path set to its value (a string for a list field, such as
    ``strategy.layers``, becomes a one-item list), validated.

    Raises:
        ConfigError: the combination is not a valid recipe (named by ``source``).
    """
    data = recipe.model_dump(mode="json")
    for path, value in values.items():
        *sections, leaf = path.split(".")
        node = data
        for part in sections:
            node = node[part]
        model: Any = Recipe
        for part in sections:
            model = model.model_fields[part].annotation
        wants_list = _wants_list(model.model_fields[leaf].annotation)
        node[leaf] = [value] if wants_list and isinstance(value, str) else value
    return recipe_from_dict(data, source)


# ---------------------------------------------------------------------- storage
def _retry_callback():
    # Optuna 4.9 renamed RetryFailedTrialCallback (kept as a deprecated alias).
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    return (cls or optuna.storages.RetryFailedTrialCallback)(max_retry=1)


def open_storage(url: str, heartbeat: int = 30, grace: int | None = None):
    """An Optuna storage for ``url``: a journal file or any SQLAlchemy URL.

    ``journal:PATH`` or a path ending in ``.log`` opens Optuna's journal file storage
    (no heartbeat: Optuna offers none for it). Anything else is an SQLAlchemy URL
    (``sqlite:///study.db``, ``postgresql+psycopg://user@host/db``) opened with a heartbeat
    every ``heartbeat`` seconds; a trial silent for ``grace`` seconds is failed and retried
    once.

    Raises:
        ConfigError: the URL cannot be opened (malformed, missing driver, unreachable).
    """
    if url.startswith("journal:") or url.endswith(".log"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as err:
            raise ConfigError(f"--storage {url}: cannot open ({err.strerror or err})") from None
        return optuna.storages.JournalStorage(backend)
    kw: dict[str, Any] = dict(heartbeat_interval=heartbeat, grace_period=grace or 4 * heartbeat)
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat is "experimental"; alias deprecated
                try:
                    return optuna.storages.RDBStorage(
                        url, heartbeat_stale_trial_callback=_retry_callback(), **kw
                    )
                except TypeError:  # Optuna < 4.9 names the callback failed_trial_callback
                    return optuna.storages.RDBStorage(
                        url, failed_trial_callback=_retry_callback(), **kw
                    )
        except sqlalchemy.exc.IntegrityError:
            # Workers starting together on a new database race to create Optuna's tables;
            # the loser's CREATE fails on a duplicate, and its second try finds them made.
            if attempt == 3:
                raise
            time.sleep(0.5 * (attempt + 1))
        except Exception as err:  # SQLAlchemy / driver errors have no common base worth naming
            first = " ".join(str(err).split())[:160]
            raise ConfigError(
                f"--storage {_shown(url)}: cannot open ({err.__class__.__name__}: {first})"
            ) from None
    raise AssertionError("unreachable")


def _shown(url: str) -> str:
    """The URL without its password (for reports and errors)."""
    if "://" not in url:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class _TrialSeeded(BaseSampler):
    """A sampler rebuilt for every trial from ``seed + trial number``.

    One seed for the whole study would make two workers draw the same values; a seed per
    trial number keeps a single worker reproducible and gives workers different draws.
    The inner samplers keep no state of their own beyond the random generator: TPE and
    grid read the history from the study.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory, self._seed = factory, seed
        self._inner = factory(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._factory(self._seed * 1_000_003 + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _grid(space: dict[str, dict]) -> dict[str, list]:
    """Every value the grid sampler visits, per path (float ranges need a step)."""
    grid = {}
    for path, d in space.items():
        if d["kind"] == "choice":
            grid[path] = [_encode(c) for c in d["choices"]]
        elif d["kind"] == "int":
            grid[path] = list(range(d["low"], d["high"] + 1, int(d["step"] or 1)))
        else:
            n = math.floor((d["high"] - d["low"]) / d["step"] + 1e-9)
            grid[path] = [d["low"] + i * d["step"] for i in range(n + 1)]
    return grid


def _sampler(recipe: Recipe, space: dict[str, dict]) -> BaseSampler:
    s = recipe.search
    if s.sampler == "random":
        return _TrialSeeded(lambda seed: optuna.samplers.RandomSampler(seed=seed), recipe.seed)
    if s.sampler == "grid":
        grid = _grid(space)
        return _TrialSeeded(lambda seed: optuna.samplers.GridSampler(grid, seed=seed), recipe.seed)
    return _TrialSeeded(lambda seed: optuna.samplers.TPESampler(seed=seed), recipe.seed)


def _pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    s = recipe.search
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    # steps are epochs counted from 1: the first `warmup_epochs` epochs are never pruned
    return optuna.pruners.MedianPruner(
        n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_epochs + 1
    )


def _comparable(recipe: Recipe) -> dict[str, Any]:
    """What must match for a re-run to continue a study (not the trial count or time)."""
    doc = recipe.model_dump(mode="json")
    for key in ("trials", "timeout", "heartbeat", "grace"):
        doc["search"].pop(key, None)
    doc.pop("device", None)  # workers on other machines may use other devices
    return doc


# ------------------------------------------------------------------------ search
def tune(
    recipe: Recipe,
    *,
    out: str | Path,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    enqueue: list[dict[str, Any]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_trial: Callable[[TrialRecord], None] | None = None,
    progress: Callable[..., None] | None = None,
) -> SearchResult:
    """Search the recipe's ``search.space`` with Optuna; every trial is a ``finetune`` run.

    The study continues until it holds ``trials`` finished (complete or pruned) trials —
    counting those of earlier runs and of other workers — or this worker's ``timeout``
    passes, or this worker has seen ``trials`` of its own trials fail. Each trial's
    objective is ``search.metric`` of its run (by default the best validation accuracy
    :math:`\\max_e \\mathrm{acc}_{val}(e)`); after every epoch e it reports
    :math:`\\mathrm{acc}_{val}(e)` (or the epoch's head-input NC1) as step e, and the pruner
    stops it when that falls below the median of earlier trials at the same epoch.

    Args:
        recipe: the base recipe; ``recipe.search`` says what to search and how.
        out: the search folder: ``study.db`` (default storage), ``trials/<n>/`` run
            folders, ``prefix-cache/``, ``search.json``, ``best.yaml``, ``search.png``.
        trials: overrides ``search.trials``.
        storage: an SQLAlchemy URL, ``journal:PATH`` or a ``.log`` path; default
            ``sqlite:///OUT/study.db``.
        study_name: default: the name of ``out``. Workers sharing a study pass the same.
        enqueue: parameter dicts (dotted path → value) to try first, when the study is new.
        should_stop: polled during training; True ends the running trial at the next step
            (failed as interrupted and queued again for a re-run) and the search.
        on_trial: called with a :class:`TrialRecord` when a trial starts, after each of its
            epochs, and when it ends.
        progress: ``progress(phase, done, total, info=...)`` for the running trial.

    Returns:
        The :class:`SearchResult`; the files above are written.

    Raises:
        ConfigError: a metric the data cannot give, an unreadable storage, or a study of
            that name holding a search over another recipe.
        SearchFailedError: every trial failed (the first one's reason).
    """
    start = time.perf_counter()
    s = recipe.search
    want = trials or s.trials
    out = check_writable(out)
    url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    name = study_name or out.resolve().name
    direction = s.direction or ("minimize" if s.metric == "nc1_after" else "maximize")

    # Everything that can fail on bad input fails here, before a trial runs.
    base = prepare(recipe)
    if s.metric == "val_accuracy" and base[1].val is None:
        raise ConfigError(
            "search.metric: val_accuracy needs a validation split (set data.val_fraction > 0)"
        )
    profiles: dict[str, Any] = {}
    timing = {"profile": 0.0}

    def profile_of(r: Recipe, prepared=None):
        key = json.dumps(
            [
                r.backbone.model_dump(mode="json"),
                r.data.model_dump(mode="json", exclude={"augment", "batch_size", "num_workers"}),
                r.analysis.model_dump(mode="json"),
                r.seed,
            ],
            sort_keys=True,
        )
        if key not in profiles:
            backbone, _, plain, device = prepared or (base if r is recipe else prepare(r))
            t0 = time.perf_counter()
            profiles[key] = _profile(backbone, plain, r, device, progress, "profile")
            timing["profile"] += time.perf_counter() - t0
        return profiles[key]

    space = _resolved_space(recipe, profile_of)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _study(
            recipe,
            out,
            url,
            name,
            direction,
            want,
            space,
            profile_of,
            timing,
            start,
            enqueue,
            should_stop,
            on_trial,
            progress,
        )
    except NctuneError:
        # A search that never got going (unreadable storage, another recipe's study) or
        # whose every trial failed leaves nothing behind in a folder it created.
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _study(
    recipe,
    out,
    url,
    name,
    direction,
    want,
    space,
    profile_of,
    timing,
    start,
    enqueue,
    should_stop,
    on_trial,
    progress,
) -> SearchResult:
    """Open (or continue) the study, run it, collect it."""
    store = open_storage(url, recipe.search.heartbeat, recipe.search.grace)
    with warnings.catch_warnings():
        # Optuna flags the heartbeat as experimental and its retry callback as renamed
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the library never prints
        try:
            study = optuna.create_study(
                storage=store,
                study_name=name,
                direction=direction,
                sampler=_sampler(recipe, space),
                pruner=_pruner(recipe),
                load_if_exists=True,
            )
            _claim_study(study, recipe, name)
            if enqueue and not study.get_trials(deepcopy=False):
                for params in enqueue:
                    study.enqueue_trial(params)
            interrupted = _run(
                study,
                recipe,
                space,
                want,
                out,
                profile_of,
                should_stop,
                on_trial,
                progress,
                start,
                isinstance(store, optuna.storages.RDBStorage),
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
        return _finish(
            study, recipe, url, name, direction, want, space, out, start, timing, interrupted
        )


def _claim_study(study: optuna.Study, recipe: Recipe, name: str) -> None:
    """Mark a new study with its recipe; refuse to continue one over another recipe (unless
    none of its trials finished: a search whose every trial failed may be fixed and re-run)."""
    mine = _comparable(recipe)
    theirs = study.user_attrs.get("nctune_recipe")
    if theirs is None:
        study.set_user_attr("nctune_recipe", mine)
        return
    finished = any(t.state in _FINISHED for t in study.get_trials(deepcopy=False))
    if theirs != mine and not finished:  # nothing came of the old recipe: this one takes over
        study.set_user_attr("nctune_recipe", mine)
    elif theirs != mine:
        diff = _first_difference(theirs, mine) or "?"
        raise ConfigError(
            f"--study {name}: this study searches another recipe (differs at {diff}); "
            "continue it with the same recipe, or pick another --study or --out"
        )


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if a != b else None


def _run(
    study, recipe, space, want, out, profile_of, should_stop, on_trial, progress, start, heartbeat
):
    """Run trials until the study holds ``want`` finished ones; True when stopped early.

    With a heartbeat (SQL storages) trials other workers are running count toward
    ``want``, and a worker waits for them rather than starting a surplus trial; a dead
    worker's trial is failed after the grace period, retried (queued as waiting) and run
    here. A journal storage has no heartbeat, so only finished trials count there.
    """
    s = recipe.search
    own_failures = 0
    objective = _Objective(
        recipe, space, want, out, profile_of, should_stop, on_trial, progress, heartbeat
    )
    while True:
        if should_stop is not None and should_stop():
            return True
        if s.timeout is not None and time.perf_counter() - start > s.timeout:
            return False
        if own_failures >= want:
            return False
        if heartbeat:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, retried
        ts = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
        done = sum(t.state in _FINISHED for t in ts)
        running = sum(t.state == TrialState.RUNNING for t in ts) if heartbeat else 0
        waiting = sum(t.state == TrialState.WAITING for t in ts)
        if done >= want:
            return False
        if done + running >= want and not waiting:
            time.sleep(0.5)  # other workers run the last trials; one may die and need a retry
            continue
        before = objective.failed
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        own_failures += objective.failed - before
        if objective.interrupted:
            return True
        if s.sampler == "grid" and _grid_done(study, space):
            return False


def _grid_done(study, space) -> bool:
    """Every grid point has a trial: a grid search ends there, whatever ``trials`` says."""
    total = math.prod(len(v) for v in _grid(space).values())
    seen = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)}
    return len(seen) >= total


class _Objective:
    """One trial: sample → recipe → run folder → finetune (pruned per epoch) → score."""

    def __init__(
        self, recipe, space, want, out, profile_of, should_stop, on_trial, progress, heartbeat
    ):
        self.recipe, self.space, self.want, self.out = recipe, space, want, Path(out)
        self.heartbeat = heartbeat
        self.profile_of, self.should_stop = profile_of, should_stop
        self.on_trial, self.progress = on_trial, progress
        self.failed, self.interrupted = 0, False

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except _Surplus:
            trial.set_user_attr("surplus", True)
            raise
        except _Interrupted:
            self.interrupted = True
            self.failed += 1
            trial.set_user_attr("fail_reason", "interrupted (queued again for a re-run)")
            trial.study.enqueue_trial(trial.params)
            raise
        except Exception as err:
            self.failed += 1
            reason = " ".join(f"{err.__class__.__name__}: {err}".split())
            if isinstance(err, NctuneError):
                reason = " ".join(str(err).split())
            trial.set_user_attr("fail_reason", reason[:500])
            trial.set_user_attr("bad_input", isinstance(err, NctuneError))
            self._record(trial, "FAIL", reason=reason)
            raise

    def _surplus(self, trial: optuna.Trial) -> bool:
        earlier = [
            t
            for t in trial.study.get_trials(deepcopy=False)
            if t.number < trial.number
            and t.state in (*_FINISHED, TrialState.RUNNING)
            and not t.user_attrs.get("surplus")
        ]
        return len(earlier) >= self.want

    def _record(self, trial, state: str, **kw) -> None:
        if self.on_trial is not None:
            self.on_trial(TrialRecord(trial.number, state, dict(trial.params), **kw))

    def _run(self, trial: optuna.Trial) -> float:
        if self.heartbeat and self._surplus(trial):
            raise _Surplus
        values = _suggest(trial, self.space)
        run_dir = _claim_run_dir(self.out / TRIALS_DIR / str(trial.number))
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self._record(trial, "RUNNING", run_dir=str(run_dir))
        try:
            return self._train(trial, values, run_dir)
        except BaseException as err:
            # a stopped trial keeps its recipe and a note of what happened, not its checkpoint
            (run_dir / CHECKPOINT).unlink(missing_ok=True)
            state = "PRUNED" if isinstance(err, optuna.TrialPruned) else "FAIL"
            atomic_write_json(run_dir / TRIAL_FILE, {"state": state, "reason": str(err)})
            raise

    def _train(self, trial: optuna.Trial, values: dict[str, Any], run_dir: Path) -> float:
        metric = self.recipe.search.metric
        cfg = trial_recipe(self.recipe, values, source=f"trial {trial.number}")
        atomic_write_text(run_dir / RECIPE_FILE, cfg.to_yaml())
        backbone, splits, plain, device = prepare(cfg)
        # The test split is measured once, on the best trial, when the search ends: choosing
        # among trials must not see it, and a test pass per trial costs about an epoch.
        prepared = (backbone, dataclasses.replace(splits, test=None), plain, device)
        st = cfg.strategy  # the profile finetune would measure, measured once per study
        needs = st.name == "auto" or (st.name in ("layers", "scl") and not st.layers)
        needs = needs or cfg.train.profile_after
        profile = self.profile_of(cfg, prepared) if needs else None
        seen: list[EpochStats] = []

        def epoch_end(stats: EpochStats) -> None:
            seen.append(stats)
            value = stats.val_accuracy if metric == "val_accuracy" else stats.nc1
            info = {"val_accuracy": stats.val_accuracy, "epochs": stats.epoch}
            self._record(trial, "RUNNING", run_dir=str(run_dir), **info)
            if value is None or not math.isfinite(value):
                return
            trial.report(value, stats.epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs", stats.epoch)
                accs = [e.val_accuracy for e in seen if e.val_accuracy is not None]
                trial.set_user_attr("val_accuracy", max(accs) if accs else None)
                trial.set_user_attr("fail_reason", f"pruned after epoch {stats.epoch}")
                self._record(trial, "PRUNED", reason=f"pruned after epoch {stats.epoch}", **info)
                raise optuna.TrialPruned(f"pruned after epoch {stats.epoch}")

        t0 = time.perf_counter()
        result = finetune(
            cfg,
            run_dir=run_dir,
            should_stop=self.should_stop,
            progress=self.progress,
            prepared=prepared,
            profile=profile,
            on_epoch_end=epoch_end,
            shared_cache_dir=self.out / CACHE_DIR,
        )
        if result.interrupted:
            raise _Interrupted
        save_run(run_dir, result)
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
        doc = result.to_dict()
        attrs = {
            "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy,
            "nc1_after": result.nc1_after,
            "trainable_percent": doc["trainable_percent"],
            "tuned_layers": result.tuned_layers,
            "epochs": len(result.history),
            "wall_seconds": time.perf_counter() - t0,
            "cache": result.cache,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        score = result.val_accuracy if metric == "val_accuracy" else result.nc1_after
        if score is None or not math.isfinite(score):
            raise ConfigError(f"trial {trial.number}: search.metric {metric} is undefined")
        self._record(
            trial,
            "COMPLETE",
            value=score,
            run_dir=str(run_dir),
            **{k: v for k, v in attrs.items() if k != "cache"},
        )
        return score


def _claim_run_dir(run_dir: Path) -> Path:
    """Create the trial's run folder; trial numbers are unique, so an existing folder is a
    leftover of a study that was deleted and started again: it is replaced."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        stale = run_dir.with_name(f".{run_dir.name}.stale-{os.getpid()}")
        os.replace(run_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
        run_dir.mkdir()
    return run_dir


def _finish(study, recipe, url, name, direction, want, space, out, start, timing, interrupted):
    """Collect the study, keep the best model, write search.json, best.yaml, search.png."""
    frozen = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    records = [TrialRecord.from_frozen(t) for t in frozen]
    complete = [t for t in frozen if t.state == TrialState.COMPLETE]
    if not complete and not interrupted:
        failed = [t for t in frozen if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
        if failed and not any(t.state == TrialState.PRUNED for t in frozen):
            first = failed[0]
            raise SearchFailedError(
                f"search: all {len(failed)} trials failed; the first (trial {first.number}): "
                f"{first.user_attrs['fail_reason']}",
                bad_input=bool(first.user_attrs.get("bad_input")),
            )
    best = study.best_trial if complete else None
    best_record = next((r for r in records if best and r.number == best.number), None)
    if recipe.search.keep == "best" and best is not None:
        for t in complete:
            if t.number != best.number:
                (out / TRIALS_DIR / str(t.number) / MODEL_FILE).unlink(missing_ok=True)
    if best_record is not None:
        best_record.test_accuracy = _best_test_accuracy(out / TRIALS_DIR / str(best.number))
    best_recipe = None
    if best is not None:
        text = (out / TRIALS_DIR / str(best.number) / RECIPE_FILE).read_text(encoding="utf-8")
        best_recipe = atomic_write_text(out / BEST_RECIPE, text)
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                importances = {
                    k: float(v) for k, v in optuna.importance.get_param_importances(study).items()
                }
            except (RuntimeError, ValueError):  # nothing varied, or too few distinct values
                importances = {}
        if any("will be equal" in str(w.message) for w in caught):
            importances = {}  # too few trials to tell the parameters apart: say nothing
    result = SearchResult(
        study_name=name,
        storage=_shown(url),
        out=str(out),
        metric=recipe.search.metric,
        direction=direction,
        trials_requested=want,
        space={k: {**v, "choices": v.get("choices")} for k, v in space.items()},
        trials=records,
        best=best_record,
        best_recipe=str(best_recipe) if best_recipe else None,
        importances=importances,
        profile_seconds=timing["profile"],
        seconds=time.perf_counter() - start,
        interrupted=interrupted,
    )
    atomic_write_json(out / SEARCH_FILE, result.to_dict())
    plot_search(result, out / PLOT_FILE)
    return result


def _best_test_accuracy(run_dir: Path) -> float | None:
    """Test accuracy of a trial's kept model (once: stored in its ``report.json``)."""
    report = json.loads((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    if report.get("test_accuracy") is None:
        cfg = recipe_from_dict(
            yaml.safe_load((run_dir / RECIPE_FILE).read_text(encoding="utf-8")), str(run_dir)
        )
        _, splits, _, device = prepare(cfg)
        if splits.test is None:
            return None
        model = load_finetuned(run_dir, device=str(device))
        loader = DataLoader(splits.test, batch_size=cfg.data.batch_size, shuffle=False)
        report["test_accuracy"] = evaluate(model, loader, device, amp=cfg.train.amp)[0]
        atomic_write_json(run_dir / REPORT_FILE, report)
    return report["test_accuracy"]
