"""Files that are never half-written, shared by every module that writes files.

A file is written to a temporary sibling, flushed to disk (``fsync``) and renamed over
its target (``os.replace``, atomic on POSIX and Windows): a crash leaves the old file or
the new one, never a torn one. Temporary files are created new (``O_CREAT | O_EXCL``) and
never through a symbolic link (``O_NOFOLLOW``: ``tempfile.mkstemp`` does both, and so does
:func:`partial_file`), so a link planted at a temporary name cannot make nctune write
someone else's file. Whole result folders are staged (:func:`staged_dir`) and
swapped in at the end, so a command that fails on bad input leaves nothing in ``--out``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from nctune.errors import ArtifactError, NctuneError


def _read_umask() -> int:
    # The umask can only be read by setting it: done once at import rather than per file,
    # so a library never flips the process umask while the user's threads create files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()

#: Never open a file through a symbolic link (0 where the platform has no such flag).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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


def jsonable(obj: Any) -> Any:
    """JSON has no NaN/Inf: non-finite floats become null; paths become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON text (no NaN), indented, for result files and ``--json`` output.

    Args:
        obj: JSON-like data; non-finite floats become ``null``, paths and dict keys strings,
            tuples lists.

    Returns:
        The JSON text, indented by two spaces, ending in a newline.
    """
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename).

    Args:
        path: the file to write; missing parent folders are created.
        data: the bytes to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: the file cannot be written (one line naming it).
    """
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: the file to write.
        text: the text, encoded as UTF-8.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: the file cannot be written.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (:func:`to_json`) atomically.

    Args:
        path: the file to write.
        obj: JSON-like data.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: the file cannot be written.
    """
    return atomic_write_text(path, to_json(obj))


def check_writable(out: str | Path) -> Path:
    """Fail early, with one line, when ``out`` cannot be created or written.

    Probes the nearest existing ancestor with a real temporary file, which also catches
    read-only file systems and root-owned paths where permission bits say nothing.
    Nothing is created.

    Args:
        out: the ``--out`` folder (it need not exist yet).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: ``out`` exists and is not a folder, its nearest existing ancestor is
            a file, or that ancestor is not writable.
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


def check_replaceable(out: Path, result_file: str) -> Path:
    """Refuse an ``--out`` folder that holds anything but an earlier result of the command.

    Re-running a command replaces its own earlier results (recognised by ``result_file``);
    a folder the user filled with other files is never deleted. A missing or empty
    folder passes.

    Args:
        out: the ``--out`` folder.
        result_file: the file name the command writes into ``out`` (e.g. ``report.json``).

    Returns:
        ``out``, unchanged.

    Raises:
        ArtifactError: ``out`` is a non-empty folder without ``result_file``.
    """
    if out.is_dir() and any(out.iterdir()) and not (out / result_file).is_file():
        raise ArtifactError(
            f"--out {out}: holds other files (no {result_file} of an earlier run); pick another folder or empty it"
        )
    return out


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out``.

    On any exception the temporary folder is removed and ``out`` is left as it was,
    so a failed command writes nothing. An existing ``out`` is replaced as a whole
    (moved aside, the new folder renamed in, then the old one deleted).

    Args:
        out: the result folder; checked first with :func:`check_writable`.

    Yields:
        The temporary folder to fill.

    Raises:
        ArtifactError: ``out`` is not writable, the temporary folder cannot be created, or
            the final swap fails (the old ``out`` is put back).
    """
    out = check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        make_public(tmp, directory=True)
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


def write_result_folder(
    out: str | Path,
    result_file: str,
    doc: Any,
    recipe_yaml: str,
    figures: Mapping[str, Callable[[Path], Any]] | None = None,
) -> Path:
    """Write a command's result folder as a whole (staged: a failure leaves ``out`` as it
    was): ``result_file`` (strict JSON of ``doc``), ``recipe.yaml``, and each figure, written
    by ``figures[name](path)``. Raises ArtifactError when something cannot be written."""
    with staged_dir(out) as tmp:
        atomic_write_json(tmp / result_file, doc)
        atomic_write_text(tmp / RECIPE_FILE, recipe_yaml)
        for name, draw in (figures or {}).items():
            draw(tmp / name)
    return Path(out)


def partial_path(out: str | Path) -> Path:
    """Where :func:`partial_file` grows ``out``: the hidden sibling ``.NAME.partial-<pid>``."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


@contextlib.contextmanager
def partial_file(out: str | Path) -> Iterator[IO[str]]:
    """Yield a text file (UTF-8, ``newline=""``) that becomes ``out`` when the block succeeds.

    The rows go to :func:`partial_path`, created new (``O_EXCL``) and never through a link
    (``O_NOFOLLOW``; whatever sits at that name is removed first, a link's target left
    alone), and are fsynced and renamed over ``out`` at the end. A ``KeyboardInterrupt``
    keeps the partial file (the rows finished so far); any other failure removes it, an
    ``OSError`` (a full disk) becoming one ArtifactError line naming ``out``.
    """
    out = Path(out)
    path = partial_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # an interrupted earlier run's rows, or a link planted there
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    except OSError as err:
        raise ArtifactError(f"--out {out}: cannot write ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(path, out)
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(err, OSError):  # e.g. the disk filled up: one line, no torn --out
            raise ArtifactError(f"--out {out}: cannot write ({err.strerror or err})") from None
        raise


# ------------------------------------------------------------------ nctune file names
# Shared by the side that writes run folders (nctune.runs.artifacts) and the side that reads
# them back as file: backbones (nctune.backbones), which must not import the writer.
#: a run folder's fine-tuned model and its resolved recipe
MODEL_FILE = "model.safetensors"
RECIPE_FILE = "recipe.yaml"
#: safetensors metadata key and value marking a file nctune wrote
FORMAT_KEY = "nctune_format"
FORMAT_VERSION = "1"
#: metadata key of a fine-tuned model's config (JSON), and the config keys a rebuild reads
CONFIG_KEY = "config"
RUN_CONFIG_KEYS = (
    "backbone",
    "num_classes",
    "skip_block",
    "token_pool",
    "head_dropout",
    "input_config",
)
