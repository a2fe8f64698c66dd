"""The search loop: open or continue the study, run trials until it holds enough, collect."""

from __future__ import annotations

import itertools
import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import yaml
from optuna.trial import TrialState
from torch.utils.data import DataLoader

from nctune.config import Recipe, recipe_from_dict
from nctune.data import DataSplits
from nctune.errors import ConfigError, NctuneError, one_line
from nctune.finetune import prepare
from nctune.report.search import plot_search
from nctune.runs._io import atomic_write_json, atomic_write_text, check_writable
from nctune.runs.artifacts import MODEL_FILE, RECIPE_FILE, REPORT_FILE, load_finetuned
from nctune.runs.folder import first_difference
from nctune.training.probe import MIN_VAL_PER_CLASS
from nctune.training.train import evaluate
from nctune.tune._objective import FINISHED, TRIALS_DIR, Objective, queued_params
from nctune.tune._owner import check_folder, check_study, claim_folder
from nctune.tune._result import SearchFailedError, SearchResult, TrialRecord
from nctune.tune._search import Search
from nctune.tune._space import grid, resolved_space
from nctune.tune._storage import (
    Holder,
    comparable,
    fail_dead,
    holders,
    make_pruner,
    make_sampler,
    open_storage,
    shown,
    storage_file,
)

STUDY_DB = "study.db"
SEARCH_FILE = "search.json"
BEST_RECIPE = "best.yaml"
PLOT_FILE = "search.png"


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
    on_wait: Callable[[list[Holder]], None] | None = None,
) -> SearchResult:
    """Search the recipe's ``search.space`` with Optuna; every trial is a ``finetune`` run.

    The study continues until it holds ``trials`` finished (complete or pruned) trials —
    counting those of earlier runs and of other workers — or this worker's ``timeout``
    passes, or this worker has seen ``trials`` of its own trials fail. Each trial's
    objective is ``search.metric`` of its run: by default the best validation accuracy
    :math:`\\max_e \\mathrm{acc}_{val}(e)`, maximised; with ``nc1_after`` the NC1 of the
    head's input after training, on the training split, minimised. After every epoch e a
    trial reports :math:`\\mathrm{acc}_{val}(e)` (with ``nc1_after``: the epoch's head-input
    NC1 from its training pass) as step e, and the median pruner stops it when that is worse
    than the median of earlier trials at the same epoch.

    Args:
        recipe: the base recipe; ``recipe.search`` says what to search and how.
        out: the search folder: ``study.db`` (default storage), ``study.json`` (the study
            it belongs to), ``trials/<n>/`` run folders, ``prefix-cache/``, ``search.json``,
            ``best.yaml``, ``search.png``.
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
        on_wait: called about twice a second, while this worker waits for trials other
            workers hold (the study's last ones), with a :class:`Holder` for each: which
            trial, whose, since when, and the seconds left before a silent one is failed
            and retried (``left`` 0: a dead worker's trial this worker just failed).

    Returns:
        The :class:`SearchResult`; the files above are written.

    Warns:
        SmallValidationWarning: before the first trial, when ``search.metric`` is
            ``val_accuracy`` and the validation split is too small to rank trials (see
            :func:`small_val_advice`).

    Raises:
        ConfigError: an empty search space, a metric the data cannot give, an unreadable
            storage, a study of that name holding a search over another recipe, or an
            ``out`` holding another study's trials (nothing is changed then).
        SearchFailedError: every trial failed (the first one's reason).
    """
    start = time.perf_counter()
    s = recipe.search
    if not s.space:
        raise ConfigError(
            "search.space: empty; name the recipe fields to search, e.g. "
            "{train.lr: {float: [0.0003, 0.01], log: true}}"
        )
    out = check_writable(out)
    url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    name = study_name or out.resolve().name
    check_folder(out, name, url)  # another study's trials are never overwritten

    # Everything that can fail on bad input fails here, before a trial runs.
    search = Search(
        recipe,
        out=out,
        url=url,
        name=name,
        direction=s.direction or ("minimize" if s.metric == "nc1_after" else "maximize"),
        want=trials or s.trials,
        base=prepare(recipe),
        start=start,
        enqueue=enqueue,
        should_stop=should_stop,
        on_trial=on_trial,
        progress=progress,
        on_wait=on_wait,
    )
    if s.metric == "val_accuracy" and search.base.splits.val is None:
        raise ConfigError(
            "search.metric: val_accuracy needs a validation split (set data.val_fraction > 0)"
        )
    advice = small_val_advice(recipe, search.base.splits)
    if advice is not None:  # said before the first trial, while the remedy is cheap
        warnings.warn(advice, SmallValidationWarning, stacklevel=2)
    search.space = resolved_space(recipe, search.profile_of)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _study(search)
    except NctuneError:
        # A search that never got going (unreadable storage, another recipe's study) or
        # whose every trial failed leaves nothing behind in a folder it created.
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


class SmallValidationWarning(UserWarning):
    """The validation split is too small to rank a search's trials by their accuracy."""


def small_val_advice(recipe: Recipe, splits: DataSplits) -> str | None:
    """Why ``search.metric: val_accuracy`` cannot rank trials on this split, and the remedies;
    None when it can (or when trials are not scored on it).

    The threshold is the collapse probe's: :math:`n \\ge m K` validation images for K
    classes, :math:`m` = :data:`~nctune.training.probe.MIN_VAL_PER_CLASS` (20). Below it the
    standard error of an accuracy, :math:`\\sqrt{p(1-p)/n}`, outgrows the gaps between the
    trials it should rank (the Fashion-MNIST search benchmark ranked 12 trials on 30 images:
    three tied, parameter importances empty).

    Args:
        recipe: the search's recipe (``search.metric``, ``data.val_fraction``).
        splits: its data, as :func:`~nctune.finetune.prepare` built it.
    """
    if recipe.search.metric != "val_accuracy" or splits.val is None:
        return None
    n, k = len(splits.val), splits.num_classes
    if n >= MIN_VAL_PER_CLASS * k:
        return None
    return (
        f"search.metric: val_accuracy ranks trials on {n} validation images for {k} classes "
        f"({n / k:.3g} a class), too few to tell them apart (under {MIN_VAL_PER_CLASS} a "
        f"class: {MIN_VAL_PER_CLASS * k} images); set data.val_fraction larger (now "
        f"{recipe.data.val_fraction:g}), or search.metric: nc1_after (trials scored by the "
        "head-input NC1 after training on the training split, lower is better; the layer "
        "sweep's Spearman ρ(NC1 after, accuracy) = −0.86, docs/evidence.md)"
    )


def _study(search: Search) -> SearchResult:
    """Open (or continue) the study, run it, collect it."""
    recipe = search.recipe
    store = open_storage(search.url, recipe.search.heartbeat, recipe.search.grace)
    with warnings.catch_warnings():
        # Optuna flags the heartbeat as experimental and its retry callback as renamed
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the library never prints
        try:
            study = _open_study(store, search)
            heartbeat = isinstance(store, optuna.storages.RDBStorage)
            interrupted = _run(study, search, heartbeat=heartbeat)
        finally:
            optuna.logging.set_verbosity(verbosity)
        return _finish(study, search, interrupted=interrupted)


def _open_study(store, search: Search) -> optuna.Study:
    """Create or load the study, make sure it and the folder are this search's, queue the
    first trials (a grid's every point)."""
    recipe = search.recipe
    check_study(store, search.out, search.name)
    try:
        study = optuna.create_study(
            storage=store,
            study_name=search.name,
            direction=search.direction,
            sampler=make_sampler(recipe),
            pruner=make_pruner(recipe),
            load_if_exists=True,
        )
        _claim_study(study, recipe, search.name)
        claim_folder(search.out, search.name, search.url)
        if search.enqueue and not study.get_trials(deepcopy=False):
            for params in search.enqueue:
                study.enqueue_trial(params)
        if recipe.search.sampler == "grid":
            _queue_grid(study, search.space)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DatabaseError) as err:
        # a damaged database that passed the open-time check, or a server that failed
        where = storage_file(search.url) or shown(search.url)
        raise ConfigError(
            f"{where}: the study storage failed ({one_line(err, 160)}); restore it from a "
            "copy, or give the search another --out or --storage"
        ) from None
    return study


def _queue_grid(study: optuna.Study, space: dict[str, dict]) -> None:
    """Queue every grid point that no trial of the study holds yet, in grid order.

    A grid search runs its queue, not a sampler: each point once, whatever the seed, and
    with several workers too (a worker takes a waiting trial atomically; two workers
    queueing at the same moment queue a point twice, and the later copy steps aside: see
    :meth:`~nctune.tune._objective.Objective.duplicate`).
    """
    points = grid(space)
    held = {
        json.dumps(queued_params(t), sort_keys=True)
        for t in study.get_trials(deepcopy=False)
        if not t.user_attrs.get("surplus")
    }
    for values in itertools.product(*points.values()):
        params = dict(zip(points, values, strict=True))
        if json.dumps(params, sort_keys=True) not in held:
            study.enqueue_trial(params)


def _claim_study(study: optuna.Study, recipe: Recipe, name: str) -> None:
    """Mark a new study with its recipe; refuse to continue one over another recipe (unless
    none of its trials finished: a search whose every trial failed may be fixed and re-run)."""
    mine = comparable(recipe)
    theirs = study.user_attrs.get("nctune_recipe")
    if theirs is None:
        study.set_user_attr("nctune_recipe", mine)
        return
    finished = any(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if theirs != mine and not finished:  # nothing came of the old recipe: this one takes over
        study.set_user_attr("nctune_recipe", mine)
    elif theirs != mine:
        diff = first_difference(theirs, mine) or "?"
        raise ConfigError(
            f"--study {name}: this study searches another recipe (differs at {diff}); "
            "continue it with the same recipe, or pick another --study or --out"
        )


def _run(study: optuna.Study, search: Search, *, heartbeat: bool) -> bool:
    """Run trials until the study holds ``want`` finished ones; True when stopped early.

    With a heartbeat (SQL storages) trials other workers are running count toward
    ``want``, and a worker waits for them rather than starting a surplus trial; a dead
    worker's trial is failed after the grace period, retried (queued as waiting) and run
    here. A journal storage has no heartbeat, so only finished trials count there.
    """
    s, want = search.recipe.search, search.want
    on_grid = s.sampler == "grid"  # its points are queued: run them, never sample more
    own_failures = 0
    objective = Objective(search, heartbeat=heartbeat)
    while True:
        if search.should_stop is not None and search.should_stop():
            return True
        if s.timeout is not None and time.perf_counter() - search.start > s.timeout:
            return False
        if own_failures >= want:
            return False
        held: list[Holder] = []
        if heartbeat:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, retried
            held = holders(study)
            freed = fail_dead(study, held)  # sooner when its process on this machine is gone
            held = [h for h in held if h not in freed]
            if freed and search.on_wait is not None:
                search.on_wait(freed)  # failed just now, to be retried here
        ts = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
        done = sum(t.state in FINISHED for t in ts)
        running = sum(t.state == TrialState.RUNNING for t in ts) if heartbeat else 0
        waiting = sum(t.state == TrialState.WAITING for t in ts)
        if done >= want:
            return False
        if on_grid and not waiting and not running:
            return False  # every point ran (or failed: a grid point is not tried twice)
        # Other workers run the last trials (or a grid's last points): wait, for one may die
        # and come back as a retry; a waiting point beyond `want` is left for a larger search.
        last = done + running >= want
        if (last and (on_grid or not waiting)) or (on_grid and not waiting):
            if search.on_wait is not None and held:
                search.on_wait(held)  # say what this worker waits for, not silence
            time.sleep(0.5)
            continue
        before = objective.failed
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        own_failures += objective.failed - before
        if objective.interrupted:
            return True


def _finish(study: optuna.Study, search: Search, *, interrupted: bool) -> SearchResult:
    """Collect the study, keep the best model, write search.json, best.yaml, search.png."""
    recipe, out = search.recipe, search.out
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
        study_name=search.name,
        storage=shown(search.url),
        out=str(out),
        metric=recipe.search.metric,
        direction=search.direction,
        trials_requested=search.want,
        space={k: {**v, "choices": v.get("choices")} for k, v in search.space.items()},
        trials=records,
        best=best_record,
        best_recipe=str(best_recipe) if best_recipe else None,
        importances=importances,
        profile_seconds=search.profile_seconds,
        seconds=time.perf_counter() - search.start,
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
        built = prepare(cfg)
        if built.splits.test is None:
            return None
        model = load_finetuned(run_dir, device=str(built.device))
        loader = DataLoader(built.splits.test, batch_size=cfg.data.batch_size, shuffle=False)
        report["test_accuracy"] = evaluate(model, loader, built.device, amp=cfg.train.amp)[0]
        atomic_write_json(run_dir / REPORT_FILE, report)
    return report["test_accuracy"]
