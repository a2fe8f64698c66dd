"""nctune.runs._lock: one command per result folder, stale locks taken over, orphans recovered."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nctune.errors import ArtifactError
from nctune.runs import _lock
from nctune.runs._lock import FolderBusyError, FolderClaim, claim_folder, lock_path, recover_orphans

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from nctune.runs._lock import FolderClaim
FolderClaim(sys.argv[1], command="nctune finetune held-by-test").acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that claims ``folder`` and keeps it until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_file_sits_next_to_the_folder_and_records_the_holder(tmp_path):
    out = tmp_path / "runs" / "a"
    with claim_folder(out, command="nctune analyze r.yaml") as claim:
        assert claim.held and lock_path(out) == tmp_path / "runs" / ".a.lock"
        doc = json.loads(lock_path(out).read_text())
        assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname()
        assert doc["command"] == "nctune analyze r.yaml" and doc["started"] <= time.time()
        assert not out.exists()  # the folder itself is not created
    assert not lock_path(out).exists()
    assert not (tmp_path / "runs").exists()  # parents made only for the lock are removed


def test_a_live_holder_in_another_process_refuses_with_its_pid_and_command(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        with pytest.raises(FolderBusyError) as err:
            FolderClaim(out).acquire()
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "held-by-test" in msg and str(out) in msg
        assert "\n" not in msg
    finally:
        proc.kill()
        proc.wait()
    # SIGKILL leaves the file; the kernel lock went with the process: taken over
    assert json.loads(lock_path(out).read_text())["pid"] == proc.pid
    with claim_folder(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_stale_lock_of_a_dead_pid_is_taken_over_even_without_kernel_locks(tmp_path, monkeypatch):
    monkeypatch.setattr(_lock, "_flock", lambda fd: None)  # e.g. a file system without flock
    out = tmp_path / "out"
    doc = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "x", "started": 0}
    lock_path(out).write_text(json.dumps(doc))
    with claim_folder(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    # ... and a live pid on this host is respected
    doc["pid"] = os.getppid()
    lock_path(out).write_text(json.dumps(doc))
    with pytest.raises(FolderBusyError, match=f"pid {os.getppid()}"):
        FolderClaim(out).acquire()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    doc = {"pid": 1, "host": "elsewhere.example", "command": "nctune sweep", "started": 0}
    lock_path(out).write_text(json.dumps(doc))
    with pytest.raises(FolderBusyError, match="elsewhere.example.*delete .*\\.out\\.lock"):
        FolderClaim(out).acquire()
    assert lock_path(out).exists()


def test_an_empty_lock_file_is_young_then_stale(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text("")  # a writer between creating and filling it
    with pytest.raises(FolderBusyError, match="still starting"):
        FolderClaim(out).acquire()
    old = time.time() - 60
    os.utime(lock_path(out), (old, old))  # ... that died there
    with claim_folder(out):
        pass


def test_recover_restores_a_set_aside_run_when_the_new_folder_holds_nothing(tmp_path):
    out = tmp_path / "run"
    old = tmp_path / ".run.old-999999"
    old.mkdir()
    (old / "model.safetensors").write_text("old weights")
    out.mkdir()
    (out / "recipe.yaml").write_text("new recipe")  # killed before its first checkpoint
    stage = tmp_path / ".run.abc123.tmp"
    stage.mkdir()
    with pytest.warns(UserWarning, match="restored the earlier run from .run.old-999999"):
        assert recover_orphans(out) == []
    assert (out / "model.safetensors").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_recover_points_at_the_set_aside_run_when_the_new_one_has_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    old = tmp_path / ".run.old-999999"
    old.mkdir()
    (old / "model.safetensors").write_text("old weights")
    out.mkdir()
    (out / "checkpoint.pt").write_text("new checkpoint")
    with pytest.warns(UserWarning, match=f"still in {old}"):
        assert recover_orphans(out) == [old]
    assert (old / "model.safetensors").exists() and (out / "checkpoint.pt").exists()


# ------------------------------------------------------------------ links (issue 20, item 4)
def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_left_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's data")
    os.utime(victim, (0, 0))  # an old file: no lock being filled right now
    (tmp_path / "runs").mkdir()
    lock_path(tmp_path / "runs" / "g").symlink_to(victim)
    with pytest.raises(ArtifactError, match=r"\.g\.lock is a symbolic link") as err:
        FolderClaim(tmp_path / "runs" / "g").acquire()
    assert "\n" not in str(err.value)
    assert victim.read_text() == "someone's data"  # not truncated, not overwritten
    # a dangling link is no lock either (O_EXCL refuses to create through it)
    lock_path(tmp_path / "runs" / "h").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match="symbolic link"):
        FolderClaim(tmp_path / "runs" / "h").acquire()
    assert not (tmp_path / "nowhere").exists()


def test_a_lock_planted_as_a_hard_link_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's data")
    os.utime(victim, (0, 0))
    os.link(victim, lock_path(tmp_path / "g"))
    with pytest.raises(ArtifactError, match="hard link"):
        FolderClaim(tmp_path / "g").acquire()
    assert victim.read_text() == "someone's data"


# ------------------------------------------------------------------ shared claims (tune)
def test_shared_claims_live_together_and_exclude_an_exclusive_one(tmp_path):
    out = tmp_path / "search"
    first = FolderClaim(out, shared=True, command="nctune tune a").acquire()
    second = FolderClaim(out, shared=True, command="nctune tune b").acquire()
    try:
        assert json.loads(lock_path(out).read_text())["shared"] is True
        with pytest.raises(FolderBusyError, match="in use by another nctune run.*nctune tune"):
            FolderClaim(out).acquire()
        first.release()
        assert lock_path(out).exists()  # the second still holds it
        with pytest.raises(FolderBusyError):
            FolderClaim(out).acquire()
    finally:
        first.release()
        second.release()
    assert not lock_path(out).exists()  # the last one out removes it
    with claim_folder(out), pytest.raises(FolderBusyError, match="in use by another nctune"):
        FolderClaim(out, shared=True).acquire()


def test_a_shared_claim_in_another_process_excludes_an_exclusive_one(tmp_path):
    out = tmp_path / "search"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.replace('held-by-test")', 'held-by-test", shared=True)'), out],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusyError, match=f"pid {proc.pid}"):
            FolderClaim(out).acquire()
        with claim_folder(out, shared=True):
            pass
        assert lock_path(out).exists()  # still the other process's
    finally:
        proc.kill()
        proc.wait()
    with claim_folder(out):  # its kernel lock went with it: stale, taken over
        assert "shared" not in json.loads(lock_path(out).read_text())
