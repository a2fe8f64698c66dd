"""``file:<path>``: a ``.safetensors`` written by :meth:`Backbone.save`, a timm ``train.py``
checkpoint, or an nctune run folder (its fine-tuned ``model.safetensors``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from nctune.backbones.backbone import Backbone, InputConfig
from nctune.backbones.factory import SOURCES, finish, rebuild_architecture
from nctune.backbones.weights import read_file, read_run_model, unwrap_state_dict
from nctune.errors import ArtifactError, BackboneError
from nctune.runs._io import FORMAT_KEY, MODEL_FILE, RECIPE_FILE

_TRUNK = "backbone."  # a fine-tuned model's backbone tensors; its head's are "head.*"
_HEAD = ("head.weight", "head.bias")


@SOURCES.register("file")
def create_file(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    """The backbone saved at ``name``: a Backbone file, a timm checkpoint or a run folder."""
    path = Path(name).expanduser()
    where = f"backbone.name: {path}"
    if weights is not None:
        raise BackboneError(
            "backbone.weights: not used with file: backbones (the file holds the weights)"
        )
    kwargs = dict(kwargs)
    num_classes = kwargs.pop("num_classes", None)  # applied after loading, like other sources
    if path.is_dir():
        if (path / MODEL_FILE).is_file() and (path / RECIPE_FILE).is_file():
            return finish(_load_run_folder(path), num_classes)
        raise BackboneError(
            f"{where}: a folder, but not an nctune run folder (needs {MODEL_FILE} and {RECIPE_FILE})"
        )
    obj, meta = read_file(path, where)
    if meta.get(FORMAT_KEY):
        built = rebuild_architecture(meta, where=where, **kwargs)
        build_spec = built._build_spec
        built.load_weights(unwrap_state_dict(obj, where), where=where, adopt_num_classes=False)
    elif (
        isinstance(obj, Mapping)
        and isinstance(obj.get("arch"), str)
        and isinstance(obj.get("state_dict"), Mapping)
    ):
        # timm train.py checkpoint: {'arch', 'state_dict', 'epoch', 'args', 'optimizer', ...}
        built = SOURCES.get("timm")(obj["arch"], False, None, dict(kwargs))
        built.load_weights(unwrap_state_dict(obj["state_dict"], where), where=where)
        build_spec = built.spec
    else:
        raise BackboneError(
            f"{where}: unknown checkpoint format (expected a .safetensors saved by nctune or a "
            "timm train.py checkpoint with 'arch' and 'state_dict'; for plain weights use "
            "backbone.name=timm:<arch> with backbone.weights=PATH)"
        )
    built.spec = f"file:{path}"
    built.source = "file"
    built._build_spec = build_spec
    return finish(built, num_classes)


def _load_run_folder(path: Path) -> Backbone:
    """The backbone of an ``nctune finetune`` run folder, with its fine-tuned weights.

    Rebuilt from the run's own architecture record, so a model fine-tuned from it saves and
    reloads like one fine-tuned from the original source. A plain linear head on the
    penultimate features becomes the classifier again; an SCL head also reads a block, so it
    cannot be one: the backbone then gets a fresh classifier for the run's classes.

    Raises:
        ArtifactError: the model file is damaged or its tensors do not fit the recorded
            architecture (the lines :func:`nctune.runs.artifacts.load_finetuned` gives).
        BackboneError: the recorded architecture cannot be rebuilt.
    """
    file = path / MODEL_FILE
    tensors, config, _ = read_run_model(file)
    built = rebuild_architecture(config["backbone"], where=str(file))
    built.reset_classifier(config["num_classes"])
    # the saved model's backbone holds an Identity where the classifier was
    head_prefix = f"{built.classifier_name}."
    own = {k: v for k, v in built.model.state_dict().items() if not k.startswith(head_prefix)}
    trunk = {k[len(_TRUNK) :]: v for k, v in tensors.items() if k.startswith(_TRUNK)}
    missing = [f"{_TRUNK}{k}" for k in own if k not in trunk] + [
        k for k in _HEAD if k not in tensors
    ]
    unexpected = [
        k
        for k in tensors
        if k not in _HEAD and not (k.startswith(_TRUNK) and k[len(_TRUNK) :] in own)
    ]
    shapes = [f"{_TRUNK}{k}" for k, v in trunk.items() if k in own and v.shape != own[k].shape]
    bad = missing or unexpected or shapes
    if bad:
        raise ArtifactError(
            f"{file}: weights do not match the recorded architecture ({bad[0]} does not fit)"
        )
    head_w, head_b = tensors["head.weight"], tensors["head.bias"]
    classifier = built.model.get_submodule(built.classifier_name)
    if (
        config["skip_block"] is None
        and isinstance(classifier, nn.Linear)
        and classifier.weight.shape == head_w.shape
    ):
        classifier.load_state_dict({"weight": head_w, "bias": head_b})
    built.model.load_state_dict(trunk, strict=False)
    built.spec, built.source = f"file:{path}", "file"
    ic = config["input_config"]
    built.input_config = InputConfig(**{**ic, "mean": tuple(ic["mean"]), "std": tuple(ic["std"])})
    return built
