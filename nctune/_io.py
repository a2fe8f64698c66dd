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
    """Give a mkstemp/mkdtemp entry (0600/0700) the usual umask-based mode.

    The mode becomes ``0o666 & ~umask`` for a file, ``0o777 & ~umask`` for a folder.

    Args:
        path: the file or folder to chmod.
        directory: ``path`` is a folder.

    Raises:
        OSError: the chmod fails (callers turn it into their own error type).
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


@contextlib.contextmanager
def replacing(path: Path, error: type[NctuneError] = ArtifactError) -> Iterator[str]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``.

    Creates ``path``'s parent folders if needed. When the block succeeds the temporary
    file is fsynced, given the umask-based mode and renamed over ``path``. Any failure
    removes the temporary file; an ``OSError`` (disk full, no permission) becomes one
    ``error`` line naming ``path``, and any other exception propagates unchanged.

    Args:
        path: the file to write.
        error: the :class:`~nctune.errors.NctuneError` subclass raised for an ``OSError``.

    Yields:
        The temporary file's path (a ``str``), for the caller to write.

    Raises:
        ArtifactError: (or ``error``) the folder or file cannot be created, written or
            renamed.
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
