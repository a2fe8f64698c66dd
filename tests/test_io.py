"""Atomic writes, staged result folders, growing row files — never through a link."""

from __future__ import annotations

import json
import os

import pytest

from nctune.errors import ArtifactError
from nctune.runs._io import (
    atomic_write_json,
    atomic_write_text,
    partial_file,
    partial_path,
    staged_dir,
    to_json,
    write_result_folder,
)


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


def test_write_result_folder_writes_json_recipe_and_figures_or_nothing(tmp_path):
    out = tmp_path / "res"
    write_result_folder(
        out, "x.json", {"a": float("nan")}, "seed: 1\n", {"f.png": lambda p: p.write_bytes(b"P")}
    )
    assert sorted(p.name for p in out.iterdir()) == ["f.png", "recipe.yaml", "x.json"]
    assert json.loads((out / "x.json").read_text()) == {"a": None}

    def broken(path):
        raise RuntimeError("the plot failed")

    with pytest.raises(RuntimeError):
        write_result_folder(out, "x.json", {"a": 2}, "seed: 2\n", {"f.png": broken})
    assert json.loads((out / "x.json").read_text()) == {"a": None}  # the old result, whole
    assert [p.name for p in tmp_path.iterdir()] == ["res"]


def test_partial_file_never_writes_through_a_link_planted_at_its_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's data")
    out = tmp_path / "rows.csv"
    partial_path(out).symlink_to(victim)
    with partial_file(out) as f:
        f.write("path,label\n")
    assert victim.read_text() == "someone's data"
    assert out.read_text() == "path,label\n" and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "victim.txt"]


def test_partial_file_keeps_rows_on_interrupt_and_removes_them_on_error(tmp_path):
    out = tmp_path / "rows.csv"
    with pytest.raises(KeyboardInterrupt), partial_file(out) as f:
        f.write("row 1\n")
        raise KeyboardInterrupt
    assert partial_path(out).read_text() == "row 1\n" and not out.exists()
    with pytest.raises(ArtifactError, match="cannot write"), partial_file(out) as f:
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
