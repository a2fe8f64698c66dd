"""Which study a search folder belongs to, so that another study never overwrites its trials.

A search folder's ``trials/<n>`` are numbered by one study's trial numbers. A second study
writing into the same folder — a copied folder run under its new name (the default study
name is the folder's), ``--study other``, another ``--storage``, or an emptied ``study.db``
— starts again at trial 0 and would replace ``trials/0…`` and the best model of the first.
So the folder names its study in ``OUT/study.json``, written once, before the first trial,
and a search whose study is not that one, or whose storage has lost the trials the folder
holds, is refused before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nctune.errors import ConfigError, one_line
from nctune.runs._io import atomic_write_json
from nctune.tune._objective import TRIALS_DIR
from nctune.tune._storage import shown, storage_file

#: The folder's owner: ``{"study_name", "storage"}``.
OWNER_FILE = "study.json"

#: A search folder from before ``study.json``: its ``search.json`` names the study.
_LEGACY_FILE = "search.json"


def storage_label(url: str, out: Path) -> str:
    """The storage as a folder records it: a file inside ``out`` by its path relative to
    ``out`` (a copied or moved folder takes its database along), anything else by its URL
    without the password."""
    file = storage_file(url)
    if file is not None:
        try:
            rel = file.resolve().relative_to(out.resolve())
        except ValueError:
            return str(file.resolve())
        return f"{rel.as_posix()} in the folder"
    return shown(url)


def trial_numbers(out: Path) -> list[int]:
    """The trial numbers with a run folder under ``out/trials``, ascending."""
    root = out / TRIALS_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def _owner(out: Path) -> tuple[str, str | None] | None:
    """(study name, storage label) the folder belongs to; the label is None for a folder
    written before ``study.json`` (its ``search.json`` names the study, not comparably the
    storage); None for a folder that belongs to no study yet."""
    marker = out / OWNER_FILE
    if marker.is_file():
        try:
            doc = json.loads(marker.read_text(encoding="utf-8"))
            return str(doc["study_name"]), str(doc["storage"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{marker}: damaged ({one_line(err, 80)}); it names the study this folder's "
                "trials belong to: restore it, or give the search another --out"
            ) from None
    legacy = out / _LEGACY_FILE
    if legacy.is_file() and trial_numbers(out):
        try:
            return str(json.loads(legacy.read_text(encoding="utf-8"))["study_name"]), None
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def _refuse_other(out: Path, owner: tuple[str, str | None], name: str, label: str) -> None:
    their_name, their_label = owner
    if their_name == name and their_label in (None, label):
        return
    where = f" in {their_label}" if their_label else ""
    raise ConfigError(
        f"--out {out}: holds the trials of study {their_name!r}{where}, not of study "
        f"{name!r} in {label}; continue that search with --study {their_name} (and its "
        "--storage), or give this one another --out"
    )


def check_folder(out: Path, name: str, url: str) -> None:
    """Refuse a search folder that belongs to another study, before the storage is opened.

    Also refuses a folder holding trials whose study file (the default ``study.db``, or a
    journal) is missing or empty: a new study there would start again at trial 0.

    Raises:
        ConfigError: one line naming the folder, its study and how to continue it.
    """
    owner = _owner(out)
    if owner is not None:
        _refuse_other(out, owner, name, storage_label(url, out))
    numbers = trial_numbers(out)
    file = storage_file(url)
    if numbers and file is not None and (not file.is_file() or file.stat().st_size == 0):
        raise ConfigError(
            f"--out {out}: holds {len(numbers)} trial folders, but their study's storage "
            f"{file} is {'empty' if file.exists() else 'missing'}; a new study would "
            f"overwrite them: restore {file.name}, or give the search another --out"
        )


def check_study(storage, out: Path, name: str) -> None:
    """Refuse to start (or continue) study ``name`` in a folder holding trial folders that
    the study does not have: its next trial numbers would land on them.

    Called with the storage open and before the study is created in it.

    Raises:
        ConfigError: one line naming the folder and the study.
    """
    numbers = trial_numbers(out)
    if not numbers:
        return
    try:
        have = storage.get_n_trials(storage.get_study_id_from_name(name))
    except KeyError:  # no such study in this storage
        have = 0
    if numbers[-1] >= have:
        raise ConfigError(
            f"--out {out}: holds trial folders up to trials/{numbers[-1]}, but study {name!r} "
            f"has {have} trials; a new trial would overwrite them: continue the search "
            "that wrote them (its --study and --storage), or give this one another --out"
        )


def claim_folder(out: Path, name: str, url: str) -> None:
    """Name study ``name`` as the folder's owner (once: a folder never changes hands).

    The marker appears whole or not at all (written aside, then hard-linked into place, which
    fails when it exists), so workers starting together agree on one owner.

    Raises:
        ConfigError: another study claimed the folder first.
    """
    label = storage_label(url, out)
    marker = out / OWNER_FILE
    if not marker.exists():
        aside = out / f".{OWNER_FILE}.{os.getpid()}"
        atomic_write_json(aside, {"study_name": name, "storage": label})
        try:
            os.link(aside, marker)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: last writer wins, then compared
            atomic_write_json(marker, {"study_name": name, "storage": label})
        finally:
            aside.unlink(missing_ok=True)
    owner = _owner(out)
    if owner is not None:
        _refuse_other(out, owner, name, label)
