"""Where a study lives (storages, heartbeat, retry) and how it samples and prunes."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.samplers import BaseSampler

from nctune.config import Recipe
from nctune.errors import ConfigError, one_line
from nctune.tune._space import grid


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
        except Exception as err:  # SQLAlchemy / driver errors have no common base worth naming
            # Workers starting together on a new database race to create Optuna's tables;
            # the loser's CREATE fails ("already exists" in SQLite, a unique violation in
            # PostgreSQL), and its next try finds them made.
            racing = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError)
            if isinstance(err, racing) and attempt < 3:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(
                f"--storage {shown(url)}: cannot open ({one_line(err, 200)})"
            ) from None
    raise AssertionError("unreachable")


def shown(url: str) -> str:
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


def make_sampler(recipe: Recipe, space: dict[str, dict]) -> BaseSampler:
    s = recipe.search
    if s.sampler == "random":
        return _TrialSeeded(lambda seed: optuna.samplers.RandomSampler(seed=seed), recipe.seed)
    if s.sampler == "grid":
        points = grid(space)
        return _TrialSeeded(
            lambda seed: optuna.samplers.GridSampler(points, seed=seed), recipe.seed
        )
    return _TrialSeeded(lambda seed: optuna.samplers.TPESampler(seed=seed), recipe.seed)


def make_pruner(recipe: Recipe) -> optuna.pruners.BasePruner:
    s = recipe.search
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    # steps are epochs counted from 1: the first `warmup_epochs` epochs are never pruned
    return optuna.pruners.MedianPruner(
        n_startup_trials=s.startup_trials, n_warmup_steps=s.warmup_epochs + 1
    )


def comparable(recipe: Recipe) -> dict[str, Any]:
    """What must match for a re-run to continue a study (not the trial count or time)."""
    doc = recipe.model_dump(mode="json")
    for key in ("trials", "timeout", "heartbeat", "grace"):
        doc["search"].pop(key, None)
    doc.pop("device", None)  # workers on other machines may use other devices
    return doc
