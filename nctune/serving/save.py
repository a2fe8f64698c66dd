"""Save a model trained in your own loop as a run folder: :func:`save_finetuned`, the
counterpart of :func:`~nctune.serving.inference.load_finetuned`.

Own training loops (``examples/own_loop.py``) train ``nctune.apply_strategy(...).model``;
this writes it the way ``nctune finetune`` does, so everything that reads a run folder's
model (``load_finetuned``, ``nctune predict``, ``evaluate``, ``export``) reads it too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from nctune.errors import ConfigError
from nctune.runs._io import MODEL_FILE
from nctune.runs.artifacts import save_model

__all__ = ["save_finetuned"]


def _tuned(model: Any) -> nn.Module:
    """The plain TunedModel to save: an AppliedStrategy's model, a PEFT model's merged copy."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model  # an AppliedStrategy
    if hasattr(model, "merge_and_unload"):  # LoRA: merged into a copy, training goes on
        model = copy.deepcopy(model).merge_and_unload()
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "config", None), dict):
        raise ConfigError(
            f"model: expected the model of nctune.apply_strategy(...) (a TunedModel), got "
            f"{type(model).__name__}"
        )
    return model


def save_finetuned(
    model: Any,
    folder: str | Path,
    *,
    classes: Sequence[str] | None = None,
    input_config: Any = None,
) -> Path:
    """Save a model trained in your own loop as a run folder that :func:`load_finetuned`,
    ``nctune predict``, ``nctune evaluate`` and ``nctune export`` read.

    Writes ``folder/model.safetensors`` atomically: the weights (no pickle) and, as
    metadata, how to rebuild the architecture, the class names and the input config — the
    image size, crop, interpolation and normalisation a reloaded model's ``transform``
    applies (``x ↦ (crop(resize(x)) / 255 − mean) / std``), so it must be the one the
    model was trained and validated with.

    Args:
        model: ``applied.model`` (or ``applied`` itself) from :func:`nctune.apply_strategy`;
            a LoRA model is saved merged, from a copy (the model you train is unchanged).
        folder: the run folder to write (created if missing; an earlier model in it is
            replaced).
        classes: the class names in label order (``len == num_classes``, unique); None
            records none (a reloaded model then names classes ``"0"``, ``"1"``, …).
        input_config: the :class:`~nctune.backbones.InputConfig` the images were
            preprocessed with (e.g. ``dataclasses.replace(backbone.input_config,
            image_size=64)``); None keeps the model's own (the backbone's, unless
            ``set_input_config`` was called); set on the model saved, as
            ``set_input_config`` does.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``model`` is not an nctune model, ``classes`` of the wrong length or
            with a name twice, or an ``input_config`` that is not an input config.
        ArtifactError: a tensor of the model is NaN or Inf, or the file cannot be written.
    """
    tuned = _tuned(model)
    extra: dict[str, Any] = {}
    if classes is not None:
        names = [str(c) for c in classes]
        k = int(tuned.num_classes)
        if len(names) != k or len(set(names)) != k:
            raise ConfigError(
                f"classes: need {k} distinct names (the model's num_classes), got "
                f"{len(names)} ({len(set(names))} distinct)"
            )
        extra["classes"] = names
    if input_config is not None:
        if not dataclasses.is_dataclass(input_config) or not hasattr(input_config, "image_size"):
            raise ConfigError(
                "input_config: expected an InputConfig (e.g. backbone.input_config), got "
                f"{type(input_config).__name__}"
            )
        tuned.set_input_config(input_config)
    folder = Path(folder)
    save_model(tuned, folder / MODEL_FILE, extra=extra)
    return folder
