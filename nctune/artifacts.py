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

from nctune._io import make_public, replacing
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
    """Strict JSON text (no NaN), indented, for result files and ``--json`` output.

    Args:
        obj: JSON-like data; non-finite floats become ``null``, paths and dict keys strings,
            tuples lists.

    Returns:
        The JSON text, indented by two spaces, ending in a newline.
    """
    return json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"


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


# ------------------------------------------------------------------ fine-tuned runs
MODEL_FILE = "model.safetensors"
REPORT_FILE = "report.json"
RECIPE_FILE = "recipe.yaml"
# what load_finetuned reads from a saved TunedModel's config metadata
_CONFIG_KEYS = (
    "backbone",
    "num_classes",
    "skip_block",
    "token_pool",
    "head_dropout",
    "input_config",
)


def save_model(model, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a :class:`~nctune.strategies.TunedModel` as safetensors (weights + how to rebuild).

    The metadata holds the model's ``config`` (backbone architecture, head, skip block,
    input config) as JSON, so :func:`load_finetuned` needs no pickle and no network.
    The file is written atomically.

    Args:
        model: the :class:`~nctune.strategies.TunedModel` (LoRA already merged, e.g. from
            :meth:`~nctune.strategies.AppliedStrategy.export`).
        path: the ``.safetensors`` file to write.
        extra: more metadata, each value stored as JSON under its key (e.g. ``classes``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: the file cannot be written.
    """
    from safetensors.torch import save_model as st_save_model

    path = Path(path)
    meta = {"nctune_format": "1", "kind": "finetuned", "config": json.dumps(_clean(model.config))}
    for key, value in (extra or {}).items():
        meta[key] = json.dumps(_clean(value))
    with replacing(path) as tmp:
        st_save_model(model, tmp, metadata=meta)
    return path


def load_finetuned(path: str | Path, device: str = "cpu"):
    """Rebuild a fine-tuned model from a run folder (or its ``model.safetensors``).

    No pickle and no download: the architecture is rebuilt from the safetensors metadata
    with random weights, then every tensor is loaded strictly.

    Args:
        path: an ``nctune finetune`` output folder, or the ``model.safetensors`` in it.
        device: where to put the model.

    Returns:
        The :class:`~nctune.strategies.TunedModel` in eval mode, with ``classes`` (label
        names, or None when the file records none) and ``input_config`` (image size and
        normalisation) attached.

    Raises:
        ArtifactError: no model file at ``path``, a file that is not an nctune fine-tuned
            model (unreadable, or its metadata lacks a field), or weights that do not fit
            the recorded architecture.
        BackboneError: the recorded architecture cannot be rebuilt.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    from nctune.backbones import InputConfig, rebuild_architecture
    from nctune.strategies import TunedModel

    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(
            f"{file}: no fine-tuned model here (expected {MODEL_FILE} from nctune finetune)"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta["config"])
        # every key the rebuild reads, checked here so a damaged file fails as one line
        missing = [k for k in _CONFIG_KEYS if k not in config]
        if missing or not isinstance(config["backbone"], dict):
            raise KeyError(missing[0] if missing else "backbone")
    except (KeyError, TypeError, ValueError, OSError, SafetensorError) as err:
        # SafetensorError: not a safetensors file at all (truncated, corrupted, other format)
        raise ArtifactError(
            f"{file}: not an nctune fine-tuned model ({err.__class__.__name__})"
        ) from None
    backbone = rebuild_architecture(config["backbone"], where=str(file))
    backbone.spec = config.get("backbone_spec", backbone.spec)
    model = TunedModel(
        backbone,
        config["num_classes"],
        skip_block=config["skip_block"],
        token_pool=config["token_pool"],
        head_dropout=config["head_dropout"],
    )
    try:
        load_model(model, str(file), strict=True, device=str(device))
    except (RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0]
        raise ArtifactError(
            f"{file}: weights do not match the recorded architecture ({first[:200]})"
        ) from None
    model.input_config = InputConfig(
        **{
            **config["input_config"],
            "mean": tuple(config["input_config"]["mean"]),
            "std": tuple(config["input_config"]["std"]),
        }
    )
    model.classes = json.loads(meta["classes"]) if "classes" in meta else None
    return model.to(device).eval()


def save_run(run_dir: str | Path, result, recipe_yaml: str | None = None) -> Path:
    """Write a finished run: ``model.safetensors``, ``report.json``, ``training.png``.

    Each file is atomic; ``recipe.yaml`` (already written when the run started) is
    rewritten only when ``recipe_yaml`` is given.

    Args:
        run_dir: the run folder (created if missing).
        result: the finished run (a :class:`~nctune.finetune.RunResult`): its
            ``model``, ``classes`` and ``to_dict()`` are saved, and it is plotted.
        recipe_yaml: the resolved recipe to write as ``recipe.yaml``, or None to keep
            the existing one.

    Returns:
        ``run_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: a file cannot be written.
    """
    from nctune.report import plot_training

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe_yaml is not None:
        atomic_write_text(run_dir / RECIPE_FILE, recipe_yaml)
    save_model(result.model, run_dir / MODEL_FILE, extra={"classes": result.classes})
    atomic_write_json(run_dir / REPORT_FILE, result.to_dict())
    plot_training(result, run_dir / "training.png")
    return run_dir
