"""Workers that start together on a new database race to create Optuna's tables; the loser's
CREATE fails — PostgreSQL says DuplicateTable (a ProgrammingError) or a unique violation on its
catalogue (an IntegrityError), SQLite says "already exists" (an OperationalError) — and every
worker must still open the storage (CI saw the PostgreSQL one: two `nctune tune` workers, one
exited 2 with "relation "studies" already exists")."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc

from nctune.errors import ConfigError
from nctune.tune import _storage


class _Flaky:
    """RDBStorage whose first ``fails`` constructions raise ``error`` (the race's loser)."""

    def __init__(self, error: Exception, fails: int = 1):
        self.error, self.fails, self.calls = error, fails, 0

    def __call__(self, url, **kw):
        self.calls += 1
        if self.calls <= self.fails:
            raise self.error
        return "storage"


def _duplicate_table() -> Exception:
    orig = Exception('relation "studies" already exists')
    return sqlalchemy.exc.ProgrammingError("CREATE TABLE studies (...)", {}, orig)


def _unique_violation() -> Exception:
    orig = Exception('duplicate key value violates unique constraint "pg_type_typname_nsp_index"')
    return sqlalchemy.exc.IntegrityError("CREATE TABLE studies (...)", {}, orig)


@pytest.mark.parametrize("error", [_duplicate_table, _unique_violation])
def test_the_race_loser_retries_and_opens(monkeypatch, tmp_path, error):
    flaky = _Flaky(error())
    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr(_storage.time, "sleep", lambda s: None)
    assert _storage.open_storage("postgresql+psycopg://u@h/db") == "storage"
    assert flaky.calls == 2


def test_a_programming_error_that_is_no_race_is_one_line_at_once(monkeypatch):
    orig = Exception("permission denied for schema public")
    flaky = _Flaky(sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, orig), fails=9)
    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr(_storage.time, "sleep", lambda s: None)
    with pytest.raises(ConfigError, match="cannot open.*permission denied"):
        _storage.open_storage("postgresql+psycopg://u@h/db")
    assert flaky.calls == 1  # not retried: waiting would not help


def test_a_race_that_never_settles_is_one_line(monkeypatch):
    flaky = _Flaky(_duplicate_table(), fails=99)
    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr(_storage.time, "sleep", lambda s: None)
    with pytest.raises(ConfigError, match="cannot open.*already exists"):
        _storage.open_storage("postgresql+psycopg://u@h/db")
