"""Suite-wide test settings."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(items):
    # Heavy first: under xdist each worker takes the next test as it finishes one, so the
    # slow tests (5–30 s each: processes of their own, kills and resumes), started last in
    # file order, left one worker finishing alone; started first, the short ones even the
    # end out (the two workers ended 10 s apart before, within 1 s after).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def pytest_collection_finish(session):
    # The objects of every import and of ~1,600 collected tests, frozen out of the cycle
    # collector: the full collections a test triggers (Optuna's after each trial of a
    # search, `gc_after_trial`; pytest's at exit) then walk what the tests made, not torch's
    # and timm's import-time heap (~0.35 s each otherwise; the tune tests ran a third faster).
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the
    # OpenMP threads of concurrent processes spin against each other (forward passes ran
    # ~100x slower). One thread keeps test times stable; subprocess tests set
    # OMP_NUM_THREADS=1 for the same reason.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """``tiny_runs(strategy)`` → the folder of a finished tiny fine-tune (cached per strategy).

    An image folder with train/val/test splits of non-square PNGs (so resize and crop
    matter), fine-tuned at ``data.image_size: 32`` — not the backbone's default 224 — with
    a random-init resnet10t on CPU in a few seconds. The run folder holds what
    ``nctune finetune`` writes; the data stay next to it for predict and export.
    """
    from tests.runs import make_tiny_run

    root = tmp_path_factory.mktemp("tiny_runs")
    cache: dict[str, object] = {}

    def get(strategy: str = "scl"):
        if strategy not in cache:
            cache[strategy] = make_tiny_run(root, strategy)
        return cache[strategy]

    return get


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL 15 server on a loopback port, as an unprivileged user."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (apt install postgresql-15)")
    pytest.importorskip("psycopg", reason="psycopg is in the test extra: pip install -e .[test]")
    root = Path(tempfile.mkdtemp(prefix="nctune-pg-"))
    root.chmod(0o777)  # initdb refuses root: the server runs as nobody
    user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    data, port = root / "data", _free_port()
    run = dict(check=True, capture_output=True, timeout=120)
    try:
        subprocess.run(
            [*user, PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres"], **run
        )
        subprocess.run(
            [
                *user,
                PG_BIN / "pg_ctl",
                "-D",
                data,
                "-l",
                root / "log",
                "-w",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "start",
            ],
            **run,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*user, PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
