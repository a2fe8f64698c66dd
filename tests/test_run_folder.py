"""nctune.runs.folder: a run folder's life (claim, check, create, abort, settle), one
first_difference, and loading a model without the plotting layer."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from nctune.errors import ArtifactError, DataError, Interrupted
from nctune.runs._lock import FolderBusyError, lock_path
from nctune.runs.folder import Kept, RunFolder, first_difference
from tests import fresh_imports

ROOT = Path(__file__).resolve().parents[1]


@fresh_imports.group
def test_loading_a_model_does_not_import_matplotlib():
    # nctune.runs.artifacts, nctune.runs.folder and nctune.serving.inference, in a fresh
    # interpreter: neither matplotlib nor nctune.report
    assert fresh_imports.probe()["serving"] == []


def test_first_difference_names_the_first_differing_path():
    a = {"train": {"lr": 0.1, "epochs": 2}, "seed": 0}
    assert first_difference(a, a) is None
    assert first_difference(a, {"train": {"lr": 0.2, "epochs": 2}, "seed": 0}) == "train.lr"
    assert first_difference(a, {"train": {"lr": 0.1}, "seed": 0}) == "train.epochs"
    assert first_difference(a, {**a, "device": "cpu"}) == "device"
    assert first_difference({"x": {"y": 1}}, {"x": 3}) == "x"


def test_the_cli_and_the_search_share_one_first_difference():
    from nctune.tune import _study

    assert _study.first_difference is first_difference
    assert not hasattr(_study, "_first_difference")


def _run(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name.replace("_", ".")).write_text(text)
    return path


def test_check_new_says_what_the_folder_holds(tmp_path):
    RunFolder(tmp_path / "missing").check_new()
    RunFolder(_run(tmp_path / "empty")).check_new()
    busy = _run(tmp_path / "busy", keep_txt="x")
    with pytest.raises(ArtifactError, match="already holds a run; replace it with --overwrite"):
        RunFolder(busy).check_new()
    RunFolder(busy).check_new(overwrite=True)
    stopped = _run(tmp_path / "stopped", recipe_yaml="seed: 0", checkpoint_pt="x")
    with pytest.raises(ArtifactError, match=f"continue it with --resume {stopped}"):
        RunFolder(stopped).check_new()
    done = _run(tmp_path / "done", recipe_yaml="seed: 0", report_json="{}")
    with pytest.raises(ArtifactError, match="it finished — use --overwrite"):
        RunFolder(done).check_new()


def test_overwrite_sets_the_old_run_aside_and_restores_it_when_the_new_one_fails(tmp_path):
    path = _run(tmp_path / "run", model_safetensors="old weights")
    with RunFolder(path) as run:
        run.create("seed: 1\n")
        old = tmp_path / f".run.old-{os.getpid()}"
        assert run.old == old and (old / "model.safetensors").exists()
        assert (path / "recipe.yaml").read_text() == "seed: 1\n"
        assert run.abort(DataError("a bad image")) is Kept.BEFORE
        run.settle()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in path.iterdir()] == ["model.safetensors"]  # as it was


def test_the_old_run_goes_once_the_new_one_has_a_checkpoint(tmp_path):
    path = _run(tmp_path / "run", model_safetensors="old weights")
    with RunFolder(path) as run:
        run.create("seed: 1\n")
        (path / "checkpoint.pt").write_bytes(b"new")
        assert run.abort(Interrupted("stopped")) is Kept.CHECKPOINT
        run.settle()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.pt", "recipe.yaml"]


def test_a_stop_before_the_first_checkpoint_keeps_the_recipe_for_a_fresh_resume(tmp_path):
    with RunFolder(tmp_path / "run") as run:
        run.create("seed: 1\n")
        assert run.abort(Interrupted("stopped")) is Kept.START
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["recipe.yaml"]
    with RunFolder(tmp_path / "fresh") as run:  # any other failure: nothing is left
        run.create("seed: 1\n")
        assert run.abort(RuntimeError("bug")) is Kept.BEFORE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_trial_folder_left_by_a_deleted_study_is_replaced_at_once(tmp_path):
    path = _run(tmp_path / "trials" / "3", trial_json="{}")
    with RunFolder(path, "trial") as run:
        run.create(keep_old=False)
        assert run.old is None and list(path.iterdir()) == []
    assert [p.name for p in path.parent.iterdir()] == ["3"]


def test_the_claim_lives_as_long_as_the_folder_object(tmp_path):
    path = tmp_path / "run"
    with RunFolder(path):
        assert lock_path(path).exists()
        with pytest.raises(FolderBusyError, match="in use by another nctune run"):
            RunFolder(path).claim()
    assert not tmp_path.exists() or not lock_path(path).exists()


def test_a_rank_other_than_0_neither_claims_nor_writes(tmp_path):
    path = _run(tmp_path / "run", keep_txt="x")
    with RunFolder(path, main=False) as run:
        assert not lock_path(path).exists()
        run.create("seed: 1\n")
        run.drop_checkpoint()
        assert run.abort(DataError("x")) is None
    assert [p.name for p in path.iterdir()] == ["keep.txt"]


def test_the_cli_keeps_no_private_stop_flag():
    # the modules (nctune.cli.finetune, the attribute, is the command function)
    common, finetune, tune = (
        importlib.import_module(f"nctune.cli.{name}") for name in ("common", "finetune", "tune")
    )
    assert tune.StopFlag is common.StopFlag is finetune.StopFlag
    assert not hasattr(finetune, "_StopFlag")
