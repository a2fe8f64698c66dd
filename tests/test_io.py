"""Atomic writes and staged result folders."""

from __future__ import annotations

import json
import os

import pytest

from nctune.errors import ArtifactError
from nctune.runs._io import atomic_write_json, atomic_write_text, staged_dir, to_json


def test_atomic_write_leaves_no_temporaries(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert p.read_text() == "hello"
    atomic_write_json(tmp_path / "a" / "c.json", {"x": float("nan"), "y": [1.5, float("inf")]})
    assert json.loads((tmp_path / "a" / "c.json").read_text()) == {"x": None, "y": [1.5, None]}
    assert sorted(os.listdir(tmp_path / "a")) == ["b.txt", "c.json"]


def test_to_json_is_strict():
    assert "NaN" not in to_json({"a": float("nan")})


def test_staged_dir_swaps_in_on_success_and_keeps_old_on_failure(tmp_path):
    out = tmp_path / "run"
    with staged_dir(out) as tmp:
        (tmp / "result.json").write_text("1")
    assert (out / "result.json").read_text() == "1"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "result.json").write_text("2")
        raise RuntimeError("boom")
    assert (out / "result.json").read_text() == "1"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporaries left


def test_unwritable_out_is_an_artifact_error(tmp_path):
    # /proc refuses new files even to root, so this fails for every user.
    with pytest.raises(ArtifactError, match="not writable"), staged_dir("/proc/nctune-test/out"):
        pass
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="not a folder"), staged_dir(f):
        pass
    with pytest.raises(ArtifactError, match="is a file"), staged_dir(f / "sub" / "out"):
        pass


def test_results_get_umask_permissions_not_private_temp_modes(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "r.json", "{}")
        with staged_dir(tmp_path / "run") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
