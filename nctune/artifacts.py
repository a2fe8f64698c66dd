"""Run folders and files that are never half-written.

Every file goes through a temporary sibling, ``fsync`` and ``os.replace`` (atomic on
POSIX and Windows), so a crash leaves the old file or the new one, never a torn one.
Whole result folders are staged (:func:`staged_dir`) and swapped in at the end, so a
command that fails on bad input leaves nothing behind in ``--out``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nctune.errors import ArtifactError


def _clean(obj: Any) -> Any:
    """JSON has no NaN/Inf: non-finite floats become null; paths become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON text (no NaN), indented, for result files and ``--json`` output."""
    return json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ArtifactError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ArtifactError(f"{path}: cannot write ({err.strerror or err})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON atomically."""
    return atomic_write_text(path, to_json(obj))


def check_writable(out: str | Path) -> Path:
    """Fail early, with one line, when ``out`` cannot be created or written.

    Probes the nearest existing ancestor with a real temporary file, which also catches
    read-only file systems and root-owned paths where permission bits say nothing.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out}: exists and is not a folder; pick another path")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ArtifactError(f"--out {out}: {parent} is a file, not a folder; pick another path")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ArtifactError(
            f"--out {out}: {parent} is not writable ({err.strerror or err}); pick a writable folder"
        ) from None
    return out


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out``.

    On any exception the temporary folder is removed and ``out`` is left as it was,
    so a failed command writes nothing. An existing ``out`` is replaced as a whole.
    """
    out = check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise ArtifactError(f"--out {out}: cannot create ({err.strerror or err})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        raise ArtifactError(f"--out {out}: cannot write ({err.strerror or err})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
