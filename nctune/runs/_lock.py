"""Claiming a result folder for one command at a time (ground floor: stdlib + errors).

Two ``nctune`` processes writing the same ``--out`` would lose one run's results: each
checks that the folder is free, works for minutes, then moves the other's folder aside.
A command therefore *claims* its folder first and holds the claim for its whole life::

    with claim_folder(out, option="--out"):
        ...  # prepare, train, write results, swap staged folders in

The claim is a lock file next to the folder, ``PARENT/.NAME.lock`` (next to it, not in it,
because ``analyze``/``sweep``/``--overwrite`` swap the whole folder). It is created with
``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) and opened with
``O_NOFOLLOW``: a symbolic link, hard link or anything but a plain file at that name is
refused, never written through (on a shared machine it could point at someone's file). It
holds one JSON line
``{"pid", "host", "command", "started"}`` for the message a second command prints, and is
``flock``-ed for as long as the claim lives, so the kernel releases it when the process
dies, SIGKILL included. A lock file left by a dead process is *stale*: found when the
``flock`` can be taken and the recorded pid no longer runs on this host (or the file is
empty or unreadable: its writer died between creating and filling it); a stale lock is
taken over in place. A lock recorded on another host is never taken over: nctune cannot
see that host's processes, so the message names the file to delete by hand.

Every command that writes a result folder uses it: ``analyze``, ``sweep``, ``rank``,
``finetune`` (``--out`` and ``--resume``) and ``tune``: the CLI claims the folder right after
validating the recipe and before the first check of what is in it. ``tune`` workers share
their search folder with each other (several workers, one study), so theirs is a *shared*
claim (``flock`` ``LOCK_SH``, ``"shared": true`` in the record): any number of shared claims
live together, and an exclusive claim (every other command) is refused while one lives, and
the other way round.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import socket
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from nctune.errors import ArtifactError

try:  # POSIX; elsewhere the pid check alone decides staleness
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Seconds an empty lock file counts as being filled by a live process, not left by a dead one.
_FILL_GRACE_S = 5.0

#: Result files that mark a folder as holding something worth keeping.
_KEEP_MARKERS = (
    "checkpoint.pt",
    "model.safetensors",
    "report.json",
    "analysis.json",
    "sweep.json",
    "ranking.json",
    "search.json",
    "study.db",
)

#: Never open a lock file through a symbolic link (0 where the platform has no such flag).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: Opening a FIFO planted at the lock's name must not block.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class FolderBusyError(ArtifactError):
    """Another live ``nctune`` process holds the claim on the result folder."""


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``PARENT/.NAME.lock``, from the absolute path.

    Args:
        folder: the result folder (it need not exist).

    Returns:
        The lock file's path.
    """
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _flock(fd: int) -> bool | None:
    """Try the exclusive kernel lock: True taken, False held elsewhere, None not available."""
    return _try_flock(fd, shared=False)


def _flock_shared(fd: int) -> bool | None:
    """Try the shared kernel lock (``tune`` workers): as :func:`_flock`."""
    return _try_flock(fd, shared=True)


def _try_flock(fd: int, shared: bool) -> bool | None:
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        return None  # e.g. ENOLCK/EOPNOTSUPP on some network or FUSE file systems
    return True


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_holder(fd: int) -> dict | None:
    """The holder record in the open lock file ``fd`` (read through the descriptor, never
    by name: the name may have been swapped for a link meanwhile)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        doc = json.loads(os.read(fd, 65536).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
        return None
    return doc


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "a process that is still starting"
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return (
        f"pid {holder['pid']} on {holder.get('host', '?')}, since {when}: "
        f"{holder.get('command', '?')}"
    )


class FolderClaim:
    """An exclusive claim on a result folder; see the module docstring.

    Args:
        folder: the result folder to claim (it need not exist; missing parent folders are
            created, and removed again on release when they are still empty).
        option: how messages name the folder (``--out``, ``--resume``).
        command: what the lock file records as the holder's command (default: this
            process's command line).
        shared: a shared claim (``tune`` workers of one search): shared claims live
            together; an exclusive one is refused while any lives, and the other way round.
    """

    def __init__(
        self,
        folder: str | Path,
        option: str = "--out",
        command: str | None = None,
        *,
        shared: bool = False,
    ):
        self.folder = Path(folder)
        self.option = option
        self.shared = shared
        if not Path(os.path.abspath(folder)).name:  # "/" (or a drive): no name, no sibling
            raise ArtifactError(
                f"{option} {folder}: a file-system root cannot be a result folder; pick a folder in it"
            )
        self.path = lock_path(folder)
        self.command = command or shlex.join(["nctune", *sys.argv[1:]])
        self._fd: int | None = None
        self._made: list[Path] = []

    @property
    def held(self) -> bool:
        """Whether this object holds the claim now."""
        return self._fd is not None

    def _record(self) -> bytes:
        doc = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": time.time(),
        }
        if self.shared:
            doc["shared"] = True
        return (json.dumps(doc) + "\n").encode("utf-8")

    def _make_parents(self) -> None:
        missing, p = [], self.path.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ArtifactError(
                f"{self.option} {self.folder}: cannot create ({err.strerror or err}); pick a writable folder"
            ) from None
        self._made = missing  # deepest first: the order to remove them in

    def acquire(self) -> FolderClaim:
        """Take the claim, or fail at once naming the holder.

        Returns:
            ``self``.

        Raises:
            FolderBusyError: a live process holds it (or one on another host, whose
                liveness cannot be checked).
            ArtifactError: the lock file cannot be created.
        """
        if self.held:
            return self
        self._make_parents()
        try:
            for _ in range(20):  # each round either claims, refuses, or saw a file vanish
                if self._try_create() or self._try_take_over():
                    return self
            raise FolderBusyError(  # pragma: no cover - only under pathological churn
                f"{self.option} {self.folder}: its lock {self.path} keeps changing; try again"
            )
        except BaseException:
            self._remove_made()
            raise

    def _lock_fd(self, fd: int) -> bool | None:
        return _flock_shared(fd) if self.shared else _flock(fd)

    def _cannot(self, what: str, err: OSError) -> ArtifactError:
        return ArtifactError(
            f"{self.option} {self.folder}: cannot {what} its lock file {self.path} "
            f"({err.strerror or err}); pick a writable folder"
        )

    def _try_create(self) -> bool:
        try:
            fd = os.open(
                self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | _NOFOLLOW | _NONBLOCK, 0o644
            )
        except FileExistsError:  # a lock file, or a link planted at its name: see _open
            return False
        except OSError as err:
            raise self._cannot("create", err) from None
        if self._lock_fd(fd) is False:
            # another claimant opened the new, empty file and locked it first: it is theirs
            # (they find it empty and young; the next round here names whoever holds it)
            os.close(fd)
            return False
        os.write(fd, self._record())
        os.fsync(fd)
        self._fd = fd
        return True

    def _open(self) -> int | None:
        """Open the existing lock file for reading and writing, refusing anything but a plain
        file with one name: a symbolic link is not followed (``O_NOFOLLOW``), and a hard
        link or a device is not written to. None when it vanished meanwhile."""
        try:
            fd = os.open(self.path, os.O_RDWR | _NOFOLLOW | _NONBLOCK)
        except FileNotFoundError:  # released meanwhile: try creating again
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                self._not_a_lock("a symbolic link")
            raise self._cannot("read", err) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            self._not_a_lock("not a plain file" if info.st_nlink == 1 else "a hard link")
        return fd

    def _not_a_lock(self, what: str) -> None:
        raise ArtifactError(
            f"{self.option} {self.folder}: its lock file {self.path} is {what}, which nctune "
            "never writes (nor through); delete it if it is yours, or pick another folder"
        )

    def _try_take_over(self) -> bool:
        fd = self._open()
        if fd is None:
            return False
        keep = False
        try:
            locked = self._lock_fd(fd)
            if locked is False:
                holder = _read_holder(fd)
                if self.shared and (holder is None or holder.get("shared")):
                    # a shared holder releasing the file (it locks it alone to delete it),
                    # or one still writing its record: look again shortly
                    time.sleep(0.05)
                    return False
                self._refuse(holder)
            # The file we opened must still be the lock file (its holder may have released,
            # i.e. unlinked, it between our open and flock).
            try:
                if os.stat(self.path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
            holder = _read_holder(fd)
            together = self.shared and holder is not None and bool(holder.get("shared"))
            if holder is None:
                # empty or torn: its writer died while filling it, or is filling it right now
                if time.time() - os.fstat(fd).st_mtime < _FILL_GRACE_S:
                    if self.shared and locked:  # no exclusive holder: a sharer is writing
                        time.sleep(0.05)
                        return False
                    self._refuse(None)
            elif holder.get("host") != socket.gethostname() and not together:
                self._refuse(holder, other_host=True)  # cannot see that host's processes
            elif (
                locked is None
                and not together
                and holder["pid"] != os.getpid()
                and _pid_alive(holder["pid"])
            ):
                self._refuse(holder)  # no kernel lock here: the pid decides
            # With the kernel lock taken, its holder is gone (a live pid is a reused one).
            # stale: its process is gone (or never finished writing it); take it over. A live
            # sharer's record stays: rewriting it would show others a torn file meanwhile.
            if not (
                together
                and holder.get("host") == socket.gethostname()
                and _pid_alive(holder["pid"])
            ):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, self._record())
                os.fsync(fd)
            self._fd, keep = fd, True
            return True
        finally:
            if not keep:
                os.close(fd)

    def _refuse(self, holder: dict | None, other_host: bool = False) -> None:
        hint = (
            f"if that run is gone, delete {self.path}"
            if other_host
            else "wait for it to finish, stop it, or pick another folder"
        )
        raise FolderBusyError(
            f"{self.option} {self.folder}: in use by another nctune run ({_describe(holder)}); {hint}"
        )

    def release(self) -> None:
        """Give the claim up: the lock file is removed, then unlocked. Idempotent."""
        if self._fd is None:
            return
        # before unlocking: a waiter then sees a vanished file. A shared claim removes it only
        # when it is the last one (it can then lock the file alone).
        if not self.shared or _flock(self._fd):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for p in self._made:  # folders created only to hold the lock, if still empty
            with contextlib.suppress(OSError):
                p.rmdir()
        self._made = []

    def __enter__(self) -> FolderClaim:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claim_folder(
    folder: str | Path, option: str = "--out", command: str | None = None, *, shared: bool = False
) -> Iterator[FolderClaim]:
    """Hold an exclusive claim on ``folder`` for the ``with`` block (see :class:`FolderClaim`).

    Args:
        folder: the result folder.
        option: how messages name the folder (``--out``, ``--resume``).
        command: the holder's command line recorded in the lock file.
        shared: a shared claim (see :class:`FolderClaim`).

    Yields:
        The held :class:`FolderClaim`.

    Raises:
        FolderBusyError: another live process holds the folder.
        ArtifactError: the lock file cannot be created.
    """
    claim = FolderClaim(folder, option, command, shared=shared)
    with claim:
        yield claim


def _is_keepable(folder: Path) -> bool:
    """A folder holding a checkpoint or a finished result (not just a recipe.yaml)."""
    return folder.is_dir() and any((folder / name).exists() for name in _KEEP_MARKERS)


def recover_orphans(folder: str | Path, option: str = "--out") -> list[Path]:
    """Deal with what a killed command left next to ``folder``; call it holding the claim.

    A command replacing ``NAME`` first moves the old folder aside as ``.NAME.old-<pid>`` and
    stages the new one as ``.NAME.<random>.tmp``. SIGKILL between the two steps (or during a
    ``finetune --overwrite`` run) leaves them behind. Holding the claim, none of them can
    belong to a live command, so:

    * ``.NAME.old-<pid>`` when ``NAME`` is missing, or holds neither a checkpoint nor a
      finished result (a replacing run killed before its first checkpoint): the old folder
      is put back as ``NAME``, with a warning saying so;
    * ``.NAME.old-<pid>`` when ``NAME`` holds a checkpoint or a result: both are kept, and a
      warning says exactly where the old one is;
    * staging folders ``.NAME.*.tmp``: incomplete by construction, removed.

    Args:
        folder: the result folder.
        option: how warnings name the folder.

    Returns:
        The set-aside folders still present after the call.
    """
    folder = Path(os.path.abspath(folder))
    parent = folder.parent
    if not parent.is_dir():
        return []
    prefix = f".{folder.name}."
    left: list[Path] = []
    try:
        siblings = sorted(p for p in parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
    for p in siblings:
        rest = p.name[len(prefix) :]
        if p.is_symlink():  # nctune never makes links here: not ours to move or delete
            continue
        if rest.endswith(".tmp") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif rest.startswith("old-") and p.is_dir():
            if rest == f"old-{os.getpid()}":
                continue  # ours: set aside by this very process
            if not _is_keepable(folder):
                try:
                    if folder.exists():
                        shutil.rmtree(folder)
                    os.replace(p, folder)
                except OSError as err:
                    warnings.warn(
                        f"{option} {folder}: an earlier run set aside by a killed command is in {p} "
                        f"and could not be restored ({err.strerror or err}); move it back by hand",
                        stacklevel=2,
                    )
                    left.append(p)
                    continue
                warnings.warn(
                    f"{option} {folder}: restored the earlier run from {p.name} (the command that "
                    "was replacing it was killed before saving anything)",
                    stacklevel=2,
                )
            else:
                warnings.warn(
                    f"{option} {folder}: the earlier run it replaced is still in {p}; "
                    "delete that folder once you no longer need it",
                    stacklevel=2,
                )
                left.append(p)
    return left
