"""Every command that writes a folder claims it, and no claim or temporary file is written
through a link (issue 20, items 4 and 8), through the real ``nctune`` entry point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from nctune.cli import app
from nctune.runs._io import partial_path
from nctune.runs._lock import FolderClaim, lock_path


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(res: Result, *names: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def recipe(make_image_folder, write_recipe) -> Path:
    images = make_image_folder("images", {"a": 6, "b": 6})
    return write_recipe(
        data={"path": str(images)},
        train={"epochs": 1},
        search={"space": {"train.lr": {"float": [0.001, 0.1], "log": True}}, "trials": 1},
    )


def test_finetune_never_writes_through_a_lock_planted_as_a_link(tmp_path, recipe):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's data")
    os.utime(victim, (0, 0))  # an old file, as a victim would be
    (tmp_path / "L").mkdir()
    lock_path(tmp_path / "L" / "g").symlink_to(victim)
    res = invoke("finetune", recipe, "-q", "--out", tmp_path / "L" / "g")
    one_line(res, ".g.lock", "symbolic link")
    assert victim.read_text() == "someone's data"
    assert not (tmp_path / "L" / "g").exists()


def test_tune_refuses_a_folder_another_command_holds(tmp_path, recipe):
    out = tmp_path / "run"
    with FolderClaim(out, command="nctune finetune held-by-test"):
        res = invoke("tune", recipe, "-q", "--out", out)
    one_line(res, f"--out {out}", "in use by another nctune run", "held-by-test")
    assert not out.exists()  # no study.db, trials/ or prefix-cache/ in someone's run


def test_a_search_folder_in_use_refuses_other_commands_but_not_another_worker(tmp_path, recipe):
    out = tmp_path / "search"
    with FolderClaim(out, command="nctune tune other-worker", shared=True):
        res = invoke("finetune", recipe, "-q", "--out", out)
        one_line(res, f"--out {out}", "in use by another nctune run", "other-worker")
        assert not out.exists()
        res = invoke("tune", recipe, "-q", "--trials", "1", "--out", out)
        assert res.exit_code == 0, res.output
        assert (out / "trials" / "0" / "training.png").is_file()  # the trial's plot
        assert lock_path(out).exists()  # the other worker's claim stays
    assert not lock_path(out).exists()
    assert [p.name for p in (out / "trials").iterdir()] == ["0"]  # trial claims released


def test_predict_never_writes_through_a_link_at_its_partial_file(tiny_runs, tmp_path):
    run = tiny_runs("linear")
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's data")
    out = tmp_path / "pred.csv"
    partial_path(out).symlink_to(victim)  # this process's pid: CliRunner runs in it
    res = invoke("predict", run.run_dir, run.data / "test", "--out", out)
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "someone's data"
    assert out.read_text().startswith("path,label") and not out.is_symlink()
