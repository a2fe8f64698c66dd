"""Atomic file replacement, shared by every module that writes files.

A file is written to a temporary sibling, flushed to disk (``fsync``) and renamed over
its target (``os.replace``, atomic on POSIX and Windows): a crash leaves the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nctune.errors import ArtifactError, NctuneError


def _read_umask() -> int:
    # The umask can only be read by setting it: done once at import rather than per file,
    # so a library never flips the process umask while the user's threads create files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def make_public(path: str | Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp entry (0600/0700) the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


@contextlib.contextmanager
def replacing(path: Path, error: type[NctuneError] = ArtifactError) -> Iterator[str]:
    """Yield a temporary sibling of ``path`` to write; when the block succeeds it is
    fsynced and replaces ``path``.

    Any failure removes the temporary file; an ``OSError`` (disk full, no permission)
    becomes one ``error`` line naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise error(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may not have synced (safetensors does not)
            os.fsync(f.fileno())
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise error(f"{path}: cannot write ({err.strerror or err})") from None
        raise
