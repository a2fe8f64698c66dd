"""load_finetuned validates the saved metadata with a schema: ArtifactError naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nctune.backbones import create_backbone
from nctune.errors import ArtifactError
from nctune.runs.artifacts import load_finetuned, save_model
from nctune.training.strategies import apply_strategy

CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    backbone = create_backbone("timm:test_resnet", pretrained=False)
    model = apply_strategy(backbone, "linear", len(CLASSES)).export().eval()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(model, path, extra={"classes": CLASSES})
    return path


def _edited(src: Path, dst: Path, edit) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    edit(meta, config)
    if "config" in meta and not isinstance(meta["config"], str):
        meta["config"] = json.dumps(meta["config"])
    elif "config" in meta and meta["config"] == "KEEP":
        meta["config"] = json.dumps(config)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def _set(path: list[str], value=None, delete: bool = False):
    def edit(meta, config):
        node = config
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        meta["config"] = "KEEP"

    return edit


def _meta(key: str, raw: str):
    def edit(meta, config):
        meta[key] = raw

    return edit


CASES = [
    ("missing-mean", _set(["input_config", "mean"], delete=True), "config.input_config.mean"),
    ("missing-num-classes", _set(["num_classes"], delete=True), "config.num_classes"),
    ("extra-input-key", _set(["input_config", "gamma"], 2.2), "config.input_config.gamma"),
    ("extra-config-key", _set(["head"], "mlp"), "config.head"),
    ("string-num-classes", _set(["num_classes"], "3"), "config.num_classes"),
    ("negative-num-classes", _set(["num_classes"], -3), "config.num_classes"),
    ("string-dropout", _set(["head_dropout"], "none"), "config.head_dropout"),
    ("string-image-size", _set(["input_config", "image_size"], "224"), "input_config.image_size"),
    ("zero-image-size", _set(["input_config", "image_size"], 0), "input_config.image_size"),
    ("zero-std", _set(["input_config", "std"], [0.0, 1.0, 1.0]), "input_config.std.0"),
    ("mean-std-lengths", _set(["input_config", "mean"], [0.5]), "input_config"),
    ("token-pool", _set(["token_pool"], "max"), "config.token_pool"),
    ("backbone-not-a-dict", _set(["backbone"], "resnet"), "config.backbone"),
    ("backbone-without-spec", _set(["backbone", "spec"], delete=True), "config.backbone.spec"),
    ("bad-json-classes", _meta("classes", "[ant, bee"), "classes is not valid JSON"),
    ("bad-json-config", _meta("config", "{oops"), "config is not valid JSON"),
    ("classes-not-names", _meta("classes", "[1, 2, 3]"), "classes must be a list of names"),
    ("classes-count", _meta("classes", '["a", "b"]'), "classes lists 2 names"),
]


@pytest.mark.parametrize(("edit", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_edited_metadata_is_an_artifact_error_naming_the_field(saved, tmp_path, edit, names):
    bad = _edited(saved, tmp_path / "model.safetensors", edit)
    with pytest.raises(ArtifactError) as err:
        load_finetuned(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and names in msg, msg


def test_the_untouched_file_loads_with_its_metadata(saved):
    model = load_finetuned(saved)
    assert model.classes == CLASSES and model.num_classes == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_the_metadata_schema_knows_every_input_config_field():
    # a field added to InputConfig must be added to the schema, or saved runs stop loading
    import dataclasses

    from nctune.backbones import InputConfig
    from nctune.runs._model_meta import _InputConfigMeta

    assert set(_InputConfigMeta.model_fields) == {f.name for f in dataclasses.fields(InputConfig)}
