"""Run folders: save a finished fine-tuning run, and load its model back.

Every file is written through :mod:`nctune.runs._io` (temporary sibling, ``fsync``,
``os.replace``), so a crash leaves the old file or the new one, never a torn one. Nothing
here plots (loading a model must not import matplotlib): the training plot is written by
:meth:`nctune.runs.folder.RunFolder.commit`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from safetensors.torch import save_model as st_save_model
from torch import Tensor

from nctune.backbones import InputConfig, rebuild_architecture
from nctune.data import eval_transform
from nctune.errors import ArtifactError, one_line
from nctune.runs._io import (
    CONFIG_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    MODEL_FILE,
    RECIPE_FILE,
    atomic_write_json,
    atomic_write_text,
    jsonable,
    replacing,
)
from nctune.runs._model_meta import parse_run_metadata
from nctune.taps import resolve_device
from nctune.training.heads import TunedModel

REPORT_FILE = "report.json"


def non_finite_tensor(tensors: Mapping[str, Tensor | None]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, else None.

    Every tensor counts — parameters and buffers alike (a BatchNorm ``running_var`` of
    ``inf`` makes the model answer one class for every input): nothing nctune saves or
    loads may hold one. Integer tensors (``num_batches_tracked``) are exact; None is skipped.

    Args:
        tensors: a state dict (or any name → tensor mapping).

    Returns:
        The first offending name, in the mapping's order.
    """
    for name, t in tensors.items():
        if t is not None and t.is_floating_point() and not bool(t.isfinite().all()):
            return name
    return None


def _read_metadata(file: Path) -> tuple[dict[str, Any], list[str] | None]:
    """(``config``, ``classes``) of a saved model, validated by :func:`parse_run_metadata`."""
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as err:
        # not a safetensors file at all (truncated, corrupted, other format)
        raise ArtifactError(
            f"{file}: not an nctune fine-tuned model ({err.__class__.__name__})"
        ) from None
    return parse_run_metadata(file, meta)


def save_model(model: TunedModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a :class:`~nctune.training.strategies.TunedModel` as safetensors (weights + how to rebuild).

    The metadata holds the model's ``config`` (backbone architecture, head, skip block,
    input config) as JSON, so :func:`load_finetuned` needs no pickle and no network.
    The file is written atomically.

    Args:
        model: the :class:`~nctune.training.strategies.TunedModel` (LoRA already merged, e.g. from
            :meth:`~nctune.training.strategies.AppliedStrategy.export`).
        path: the ``.safetensors`` file to write.
        extra: more metadata, each value stored as JSON under its key (e.g. ``classes``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: a tensor of ``model`` (parameter or buffer) holds NaN or Inf (nothing
            is written), or the file cannot be written.
    """
    path = Path(path)
    bad = non_finite_tensor(model.state_dict())
    if bad is not None:  # the training loop stops first (diverged); this is the last guard
        raise ArtifactError(f"{path}: not saved: tensor {bad} is not finite (NaN or Inf)")
    meta = {
        FORMAT_KEY: FORMAT_VERSION,
        "kind": "finetuned",
        CONFIG_KEY: json.dumps(jsonable(model.config)),
    }
    for key, value in (extra or {}).items():
        meta[key] = json.dumps(jsonable(value))
    with replacing(path) as tmp:
        try:
            st_save_model(model, tmp, metadata=meta)
            with safe_open(tmp, framework="pt"):  # a short write must not become the model
                pass
        except SafetensorError as err:  # safetensors reports ENOSPC/EIO as its own error
            cause = str(err).split(": ")[-1].split(" (os error")[0] or "incomplete file"
            raise ArtifactError(f"{path}: cannot write ({cause})") from None
    return path


def load_finetuned(path: str | Path, device: str = "cpu") -> TunedModel:
    """Rebuild a fine-tuned model from a run folder (or its ``model.safetensors``).

    No pickle and no download: the architecture is rebuilt from the safetensors metadata
    with random weights, then every tensor is loaded strictly.

    Args:
        path: an ``nctune finetune`` output folder, or the ``model.safetensors`` in it.
        device: where to put the model (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``).

    Returns:
        The :class:`~nctune.training.strategies.TunedModel` in eval mode, with ``classes`` (label
        names, or None when the file records none), ``input_config`` (the image size,
        crop, interpolation and normalisation the run trained and evaluated with) and
        ``transform`` (:func:`nctune.data.eval_transform` of that config: PIL image →
        model input, exactly as the run's validation and test images) attached.
        ``nctune.load_finetuned`` (:func:`nctune.serving.inference.load_finetuned`) also binds
        ``predict``.

    Raises:
        ArtifactError: no model file at ``path``, a file that is not an nctune fine-tuned
            model (unreadable), metadata that does not match the schema :func:`save_model`
            writes (a missing, extra or mistyped field, a ``num_classes`` below 1 or above
            :data:`~nctune._section.MAX_CLASSES`, ``model_kwargs`` that are no mapping, bad JSON,
            another format version, an unknown ``interpolation``, a class named twice, an
            image side or ``crop_pct`` outside :mod:`nctune._section`'s bounds; the message
            names the field), weights that do not fit the recorded
            architecture, or a tensor holding NaN or Inf (named).
        BackboneError: the recorded architecture cannot be rebuilt, or ``device`` is CUDA
            on a machine without it.
        ConfigError: ``device`` is not a device (checked first, so it is not blamed on
            the file).
    """
    device = resolve_device(device)
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(
            f"{file}: no fine-tuned model here (expected {MODEL_FILE} from nctune finetune)"
        )
    config, classes = _read_metadata(file)
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
        raise ArtifactError(
            f"{file}: weights do not match the recorded architecture ({one_line(str(err), 200)})"
        ) from None
    bad = non_finite_tensor(model.state_dict())
    if bad is not None:  # it would answer NaN, or one class for every input
        raise ArtifactError(
            f"{file}: tensor {bad} is not finite (NaN or Inf): the file is damaged or the run "
            "diverged; fine-tune it again"
        )
    model.input_config = InputConfig(
        **{
            **config["input_config"],
            "mean": tuple(config["input_config"]["mean"]),
            "std": tuple(config["input_config"]["std"]),
        }
    )
    model.transform = eval_transform(model.input_config)
    model.classes = classes
    return model.to(device).eval()


def save_run(run_dir: str | Path, result: Any, recipe_yaml: str | None = None) -> Path:
    """Write a finished run's files: ``model.safetensors`` and ``report.json``.

    Each file is atomic; ``recipe.yaml`` (already written when the run started) is
    rewritten only when ``recipe_yaml`` is given. The training plot is not drawn here
    (this module never imports matplotlib): :meth:`nctune.runs.folder.RunFolder.commit`
    writes it next to them.

    Args:
        run_dir: the run folder (created if missing).
        result: the finished run (a :class:`~nctune.finetune.RunResult`): its
            ``model``, ``classes`` and ``to_dict()`` are saved.
        recipe_yaml: the resolved recipe to write as ``recipe.yaml``, or None to keep
            the existing one.

    Returns:
        ``run_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ArtifactError: a file cannot be written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe_yaml is not None:
        atomic_write_text(run_dir / RECIPE_FILE, recipe_yaml)
    save_model(result.model, run_dir / MODEL_FILE, extra={"classes": result.classes})
    atomic_write_json(run_dir / REPORT_FILE, result.to_dict())
    return run_dir
