"""Where a study lives (storages, heartbeat, retry) and how it samples and prunes."""

from __future__ import annotations

import copy
import json
import os
import socket
import sqlite3
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from nctune.config import Recipe
from nctune.errors import ConfigError, one_line


def _retry_callback():
    # Optuna 4.9 renamed RetryFailedTrialCallback (kept as a deprecated alias).
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    return (cls or optuna.storages.RetryFailedTrialCallback)(max_retry=1)


def is_journal(url: str) -> bool:
    """``journal:PATH`` or a path ending in ``.log``: Optuna's journal file storage."""
    return url.startswith("journal:") or url.endswith(".log")


def storage_file(url: str) -> Path | None:
    """The file a storage keeps its studies in (a journal or an SQLite database); None for a
    database server (or an in-memory URL, which :func:`open_storage` refuses)."""
    if is_journal(url):
        return Path(url.removeprefix("journal:"))
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # a malformed URL: open_storage says so
        return None
    if parsed.get_backend_name() != "sqlite" or _in_memory(parsed):
        return None
    return Path(parsed.database)


def _in_memory(parsed: sqlalchemy.engine.URL) -> bool:
    db = parsed.database or ""
    return db in ("", ":memory:") or db.startswith("file::memory:") or "mode=memory" in str(parsed)


def open_storage(url: str, heartbeat: int = 30, grace: int | None = None):
    """An Optuna storage for ``url``: a journal file or any SQLAlchemy URL.

    ``journal:PATH`` or a path ending in ``.log`` opens Optuna's journal file storage
    (no heartbeat: Optuna offers none for it). Anything else is an SQLAlchemy URL
    (``sqlite:///study.db``, ``postgresql+psycopg://user@host/db``) opened with a heartbeat
    every ``heartbeat`` seconds; a trial silent for ``grace`` seconds is failed and retried
    once. An SQLite file is checked (``PRAGMA quick_check``, read-only) before Optuna
    writes to it, so a damaged one is refused untouched.

    Raises:
        ConfigError: the URL cannot be opened (malformed, missing driver, unreachable), is
            an in-memory database (its study would die with this process, and no other
            worker could share it), or names a damaged file or a folder.
    """
    if is_journal(url):
        return _open_journal(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as err:  # sqlalchemy's ArgumentError, or a bad port number
        raise ConfigError(f"--storage {url}: not a storage URL ({one_line(err, 200)})") from None
    if parsed.get_backend_name() == "sqlite":
        if _in_memory(parsed):
            raise ConfigError(
                f"--storage {url}: an in-memory database dies with this process (and no other "
                "worker can share it); name a file, sqlite:///PATH, or leave --storage out"
            )
        _check_sqlite(Path(parsed.database))
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
            if _lost_the_race(err) and attempt < 3:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(
                f"--storage {shown(url)}: cannot open ({one_line(err, 200)})"
            ) from None
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Holder:
    """A running trial of the study that another worker holds (what a waiting worker waits
    for).

    Attributes:
        number: the trial number.
        worker: ``host:pid`` of the worker that started it (None before it said).
        since: when the trial started (the storage's clock).
        silent: seconds since its last heartbeat.
        left: seconds until it counts as dead (failed and retried) if it stays silent.
        dead: its worker ran on this machine and that process is gone, so the short grace
            applies (:func:`holders`).
    """

    number: int
    worker: str | None
    since: datetime | None
    silent: float
    left: float
    dead: bool


def holders(study: optuna.Study) -> list[Holder]:
    """The study's running trials held by other workers, with their heartbeat's age.

    A trial counts as dead after the storage's grace period without a heartbeat, or — when
    its worker ran on this machine and that process is gone (:func:`_gone`) — after one
    missed heartbeat (:math:`\\min(\\text{grace}, \\text{heartbeat} + 2)` seconds): a
    ``kill -9`` on one machine is then retried within seconds, not after the whole grace.
    The missed beat is kept as a second proof (a worker in another PID namespace of a host
    with the same name would have beaten). Empty without a heartbeat (journal storages).
    """
    store = getattr(study._storage, "_backend", study._storage)  # Optuna wraps it in a cache
    interval = getattr(store, "heartbeat_interval", None)
    if interval is None:
        return []
    grace = store.grace_period or 2 * interval
    short = min(grace, interval + 2)
    try:
        ages = _heartbeat_ages(store, study._study_id)
    except (ImportError, AttributeError):  # Optuna's internals moved: its own grace applies
        return []
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if t._trial_id not in ages or t.user_attrs.get("surplus") or worker == worker_name():
            continue
        silent = ages[t._trial_id]
        dead = _gone(worker)
        left = (short if dead else grace) - silent
        out.append(Holder(t.number, worker, t.datetime_start, silent, max(0.0, left), dead))
    return out


def fail_dead(study: optuna.Study, held: list[Holder]) -> list[Holder]:
    """Fail the trials whose worker is provably dead (:func:`holders`) and whose short grace
    passed, and run the storage's retry callback on them, as Optuna's own stale check does.

    Returns:
        Those holders (the ones due), whether this worker or another one failed them.
    """
    due = [h for h in held if h.dead and h.left <= 0]
    if not due:  # the common case, twice a second while waiting: no storage read
        return due
    store = study._storage
    ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
    callback = store.get_heartbeat_stale_trial_callback()
    for h in due:
        try:
            if not store.set_trial_state_values(ids[h.number], state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
        if callback is not None:
            callback(study, copy.deepcopy(store.get_trial(ids[h.number])))
    return due


def worker_name() -> str:
    """``host:pid`` of this process, as a trial records its worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(worker: str | None) -> bool:
    """True when ``worker`` (``host:pid``) ran on this machine and that process is gone (or
    a zombie). A reused PID reads as alive: the full grace applies then, never a shorter one."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    try:  # a killed child its parent has not reaped yet
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return stat.rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _heartbeat_ages(store, study_id: int) -> dict[int, float]:
    """Seconds since each running trial's last heartbeat (by trial id), on the database's
    clock (the one Optuna's stale check reads)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(store.scoped_session) as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
            .join(models.TrialModel)
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .all()
        )
    now = now.replace(tzinfo=None)
    return {tid: (now - beat.replace(tzinfo=None)).total_seconds() for tid, beat in rows}


def _lost_the_race(err: Exception) -> bool:
    """Workers starting together on a new database race to create Optuna's tables; the
    loser's CREATE fails — "already exists" in SQLite (an OperationalError), DuplicateTable
    (a ProgrammingError) or a unique violation on the catalogue (an IntegrityError) in
    PostgreSQL — and its next try finds them made. Other programming errors (a permission,
    a bad schema) are not retried: waiting would not change them."""
    if isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError)):
        return True
    return isinstance(err, sqlalchemy.exc.ProgrammingError) and "already exists" in str(err)


def _open_journal(url: str) -> optuna.storages.JournalStorage:
    """Optuna's journal storage on the file ``url`` names; the whole journal is replayed here,
    so a file that is not one fails now, as one line."""
    text = url.removeprefix("journal:")
    if not text.strip():
        raise ConfigError(
            f"--storage {url}: names no file; give journal:PATH, e.g. journal:search.log"
        )
    path = Path(text)
    if path.is_dir():
        raise ConfigError(
            f"--storage {url}: {path} is a folder; name a journal file, e.g. journal:{path / 'search.log'}"
        )
    try:
        _check_journal_start(url, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
    except OSError as err:
        raise ConfigError(f"--storage {url}: cannot open ({err.strerror or err})") from None
    try:
        return optuna.storages.JournalStorage(backend)
    except OSError as err:
        raise ConfigError(f"--storage {url}: cannot read {path} ({err.strerror or err})") from None
    except Exception as err:  # the replay: JSON, encoding or record errors of a foreign file
        raise ConfigError(
            f"--storage {url}: {path} is not an Optuna journal, or it is damaged "
            f"({one_line(err, 120)}); restore it, or name a new file"
        ) from None


def _check_journal_start(url: str, path: Path) -> None:
    """A journal's first line is one JSON record with an ``op_code``; Optuna's replay forgives
    a damaged *last* line (a writer killed mid-line), so a one-line foreign file would pass
    it and then get journal records appended."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        first = f.readline(1 << 20)
    try:
        record = json.loads(first) if first.endswith(b"\n") else None
    except ValueError:  # JSON or UTF-8
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError(
            f"--storage {url}: {path} is not an Optuna journal, or it is damaged (its first "
            "line is no journal record); restore it, or name a new file"
        )


def _check_sqlite(path: Path) -> None:
    """Refuse a damaged SQLite file before Optuna opens (and writes to) it.

    Read-only: a file another worker is writing may be locked for a moment, which is no
    damage (the check is skipped then; Optuna waits for the lock itself).
    """
    if not path.is_file() or path.stat().st_size == 0:  # new (or empty): SQLite starts it
        return
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # locked by a writer, or unreadable: Optuna will say
        return
    except sqlite3.DatabaseError as err:  # "file is not a database", "malformed"
        verdict = str(err)
    if verdict != "ok":
        raise ConfigError(
            f"{path}: the study database is damaged ({one_line(verdict, 120)}); restore it "
            "from a copy, or give the search another --out or --storage"
        )


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


def make_sampler(recipe: Recipe) -> BaseSampler:
    """The study's sampler. A grid search samples nothing: its points are queued as waiting
    trials (``_study._queue_grid``), whose values are fixed; Optuna's GridSampler shuffles
    its points by seed, so rebuilt per trial it would map one grid id to another value."""
    s = recipe.search
    if s.sampler in ("random", "grid"):
        return _TrialSeeded(lambda seed: optuna.samplers.RandomSampler(seed=seed), recipe.seed)
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
