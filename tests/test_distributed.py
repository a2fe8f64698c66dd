"""Running under torchrun: 2 CPU processes with gloo against one process, same numbers.

The slow tests start real process groups: one ``python -m torch.distributed.run``
(torchrun) whose ranks run the commands of the tests that compare numbers
and of the one whose rank 1 fails (tests/torchrun_batch.py: each rank's ~5 s of imports paid
once, not per test), or the ranks as plain subprocesses with the variables torchrun sets
when a test kills them. The one-process baselines run in this process. Tiny
random-init timm test models at 32 px on the vendored Fashion-MNIST subset or generated
PNGs; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from nctune import distributed as dist
from nctune.cli import app
from nctune.config import load_recipe
from nctune.data import build_data
from nctune.errors import ConfigError
from tests.torchrun_batch import (
    ANALYZE,
    FINETUNE,
    ONE_LAUNCH,
    PNGS,
    SWEEP,
    SWEEP_GRID,
    Job,
    child_env,
    free_port,
    sets,
    shared,
    shared_root,
)


def launch(*args: str, cwd: Path, world: int = 2, one_group: bool = False, **popen):
    """``python -m nctune ARGS`` as ``world`` ranks with torchrun's variables, each its own
    process (so each rank's exit code is seen); ``one_group``: all in one process group."""
    port, procs = str(free_port()), []
    for rank in range(world):
        env = child_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        group = {"process_group": procs[0].pid if procs else 0} if one_group else {}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "nctune", *args], cwd=cwd, env=env, **group, **popen
            )
        )
    return procs


def in_process(*args: str) -> Result:
    """``nctune ARGS`` in this process (a one-process baseline needs no interpreter of its
    own: the ~5 s of importing torch and timm are paid once per test process)."""
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict[str, Job]:
    """The slow tests' commands on 2 gloo ranks, one torchrun launch (tests/torchrun_batch.py)."""
    return shared(tmp_path_factory)


# ------------------------------------------------------------------ in-process units
def test_without_torchrun_everything_is_one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert dist.read_env() is None
    with dist.process_group() as env:
        assert env == dist.DistEnv(0, 1, 0)
        assert not torch.distributed.is_initialized()
        assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
        assert list(dist.shard(5)) == [0, 1, 2, 3, 4]
        data = list(range(7))
        assert dist.shard_dataset(data) is data
        assert dist.all_reduce_sum(1, 2.5) == [1.0, 2.5]
        assert dist.all_gather("x") == ["x"]
        dist.check()
        model = torch.nn.Linear(2, 2)
        assert dist.wrap_ddp(model, torch.device("cpu")) is model


def test_read_env_and_exit_codes():
    assert dist.read_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == dist.DistEnv(
        3, 4, 1
    )
    with pytest.raises(ConfigError, match="RANK=4"):
        dist.read_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ConfigError, match="integers"):
        dist.read_env({"WORLD_SIZE": "two"})
    assert dist.exit_code(ConfigError("x")) == 2
    assert dist.exit_code(dist.PeerFailure("x", 1, 1)) == 1
    assert dist.exit_code(RuntimeError("x")) == 1
    assert dist.exit_code(KeyboardInterrupt()) == 130


def test_shards_cover_every_sample_once():
    # the definition the statistics rely on: disjoint, complete, sizes within one
    n, world = 11, 3
    parts = [list(range(r, n, world)) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


# ------------------------------------------------------------ multi-process (slow)
@pytest.mark.slow
@ONE_LAUNCH
def test_analyze_on_two_processes_matches_one(tmp_path, two):
    one = in_process("analyze", *sets(*ANALYZE), "--out", str(tmp_path / "one"), "--json")
    job = two["analyze"]
    job.ok()
    assert job.stdout[1] == ""  # rank 0 alone printed
    a, b = json.loads(one.stdout), json.loads(job.stdout[0])
    assert a["num_samples"] == b["num_samples"] == 69
    assert [x["name"] for x in a["layers"]] == [x["name"] for x in b["layers"]]
    for x, y in zip(a["layers"], b["layers"], strict=True):
        for key in ("nc1", "cdnv", "trace_ratio", "ncc_accuracy"):
            assert y[key] == pytest.approx(x[key], rel=1e-9, abs=0), (x["name"], key)
    assert a["recommendation"] == b["recommendation"]
    assert sorted(p.name for p in (job.folder / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    in_process("finetune", *sets(*FINETUNE), "--out", str(out))
    return out


def assert_same_run(a: dict, b: dict, n_val: int) -> None:
    """Stated tolerance: accuracies within one sample, NC1 within 1e-3 relative (measured:
    equal accuracies, NC1 ~4e-6 apart — float32 gradients summed in another order)."""
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]]
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert hb["val_accuracy"] == pytest.approx(ha["val_accuracy"], abs=1.01 / n_val)
        assert hb["nc1"] == pytest.approx(ha["nc1"], rel=1e-3)
        assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-3)
        assert hb["lr"] == pytest.approx(ha["lr"], rel=1e-12)
    assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1.01 / n_val)
    assert b["nc1_after"] == pytest.approx(a["nc1_after"], rel=1e-3)
    assert b["nc1_before"] == pytest.approx(a["nc1_before"], rel=1e-9)
    assert b["tuned_layers"] == a["tuned_layers"]


def _n_val() -> int:
    recipe = load_recipe(None, FINETUNE)
    return len(build_data(recipe.data, _input_config(recipe), seed=recipe.seed).val)


def _input_config(recipe):
    from nctune.backbones import create_backbone

    return create_backbone(recipe.backbone).input_config


@pytest.mark.slow
@ONE_LAUNCH
def test_finetune_on_two_processes_matches_one(one_process_run, two):
    job = two["finetune"]
    job.ok()
    assert_same_run(_report(one_process_run), _report(job.folder / "run"), _n_val())
    # exactly one set of artefacts: the one-process files, nothing else beside them
    files = sorted(p.name for p in (job.folder / "run").iterdir())
    assert files == sorted(p.name for p in one_process_run.iterdir())
    assert sorted(p.name for p in job.folder.iterdir()) == ["run"]


@pytest.mark.slow
def test_killed_after_epoch_one_resumes_on_one_process(tmp_path, one_process_run):
    out = tmp_path / "run"
    # the ranks as torchrun starts them, but in one process group of ours (torchrun puts
    # each worker in its own session, out of reach of a kill of torchrun's group)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = launch(
        "finetune", *sets(*FINETUNE), "--out", "run", cwd=tmp_path, one_group=True, **quiet
    )
    group = ranks[0]
    ckpt = out / "checkpoint.pt"
    deadline = time.monotonic() + 240
    try:
        while not ckpt.exists():  # written atomically at the end of epoch 1
            assert all(p.poll() is None for p in ranks), "a rank ended before the checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(group.pid, signal.SIGKILL)
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
        for p in ranks:
            p.wait()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and not (out / "report.json").exists()
    # the one process that resumes needs no interpreter of its own
    in_process("finetune", *sets(*FINETUNE), "--resume", str(out))
    assert not ckpt.exists()
    assert_same_run(_report(one_process_run), _report(out), _n_val())


@pytest.mark.slow
@ONE_LAUNCH
def test_an_error_on_rank_one_ends_both_with_exit_2(two):
    folder, bad = shared_root() / "data" / "pngs", "3.png"  # png_folder_with_a_corrupt_file
    recipe = load_recipe(None, [*PNGS, f"data.path={folder}"])
    splits = build_data(recipe.data, _input_config(recipe))
    index = [Path(p).name for p in splits.train.paths].index(bad)
    assert index % 2 == 1  # the corrupt image is in rank 1's shard alone
    job = two["error"]  # the batch's last job: a rank that hangs would have stopped the batch
    assert job.codes == [2, 2], job.stderr
    assert abs(job.ended[0] - job.ended[1]) < 5.0  # together, not after a timeout
    lines = job.stderr[0].splitlines()  # rank 0 prints the one line, naming rank 1's file
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad in lines[0], job.stderr[0]
    assert (job.stdout[1], job.stderr[1]) == ("", "")  # rank 1 stays quiet: one copy of the line
    assert not (job.folder / "out").exists()


@pytest.mark.slow
@ONE_LAUNCH
def test_sweep_deals_blocks_to_ranks_and_rank_zero_writes_one_table(tmp_path, two):
    args = ["sweep", *sets(*SWEEP), *SWEEP_GRID]
    one = in_process(*args, "--out", str(tmp_path / "one"), "--json")
    job = two["sweep"]
    job.ok()
    assert job.stdout[1] == ""  # rank 0 alone printed
    a, b = json.loads(one.stdout), json.loads(job.stdout[0])
    # each run trains alone on the whole data: the very numbers of one process
    keys = ("block", "mode", "test_accuracy", "val_accuracy", "nc1_after")
    assert [[p[k] for k in keys] for p in a["points"]] == [
        [p[k] for k in keys] for p in b["points"]
    ]
    for p, q in zip(a["points"], b["points"], strict=True):  # the profile: summed shards
        assert q["nc1_before"] == pytest.approx(p["nc1_before"], rel=1e-9)
    assert (a["picks"], a["regret"]) == (b["picks"], b["regret"])
    assert sorted(p.name for p in (job.folder / "two").iterdir()) == [
        "layer_sweep.png",
        "recipe.yaml",
        "sweep.json",
    ]
