"""``torchvision:<name>``: ``torchvision.models.get_model``; pretrained = the DEFAULT weights."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm

import nctune.backbones.hub as hub
from nctune.backbones.backbone import IMAGENET_INPUT, Backbone, InputConfig
from nctune.backbones.factory import (
    SOURCES,
    factory_call,
    finish,
    requested_size,
    split_num_classes,
    suggest,
)
from nctune.backbones.weights import load_state_dict_file
from nctune.errors import BackboneError

_INTERP_NAMES = {"bilinear", "bicubic", "nearest", "nearest-exact", "lanczos", "box", "hamming"}


def _input_config(weights_enum: Any, kwargs: dict[str, Any]) -> InputConfig:
    cfg = IMAGENET_INPUT
    if weights_enum is not None:
        try:
            t = weights_enum.transforms()
            crop = int(t.crop_size[0])
            resize = int(t.resize_size[0])
            interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
            cfg = InputConfig(
                image_size=crop,
                mean=tuple(float(v) for v in t.mean),  # type: ignore[arg-type]
                std=tuple(float(v) for v in t.std),  # type: ignore[arg-type]
                interpolation=interp if interp in _INTERP_NAMES else "bilinear",
                crop_pct=crop / resize if resize else 1.0,
            )
        except (AttributeError, TypeError, IndexError, ValueError):
            pass  # non-classification transforms: ImageNet defaults
    size = requested_size(kwargs, "torchvision")
    if size:  # e.g. torchvision ViT built for another resolution
        cfg = dataclasses.replace(cfg, image_size=size)
    return cfg


@SOURCES.register("torchvision")
def create_torchvision(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    """A torchvision model: its DEFAULT weights (cache/hub), ``weights``, or random init."""
    spec = f"torchvision:{name}"
    known = tvm.list_models()
    if name.lower() not in known:
        raise BackboneError(
            f"backbone.name: unknown torchvision model {name!r}{suggest(name.lower(), known)}"
        )
    name = name.lower()
    try:
        weights_enum = tvm.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        weights_enum = None
    use_hub = pretrained and weights is None
    build_kwargs, num_classes = split_num_classes(kwargs, loading=pretrained or weights is not None)
    if use_hub:
        if weights_enum is None:
            raise BackboneError(
                f"backbone.name: torchvision has no pretrained weights for {spec}; set "
                "backbone.pretrained=false or pass backbone.weights=PATH"
            )
        cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        cached = os.path.join(cache_dir, os.path.basename(urlparse(weights_enum.url).path))
        if not os.path.exists(cached) and not hub.reachable(weights_enum.url):
            host = urlparse(weights_enum.url).hostname or weights_enum.url
            raise hub.no_weights(spec, f"torch hub cache {cache_dir}", host)
    try:
        model = factory_call(
            tvm.get_model, spec, name, weights=weights_enum if use_hub else None, **build_kwargs
        )
    except (OSError, RuntimeError) as err:  # download failures while online
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackboneError(
            f"backbone.name: cannot load pretrained weights for {spec}: {first}"
        ) from None
    except ValueError as err:  # torchvision validates kwargs against the weights' meta
        raise BackboneError(f"backbone.model_kwargs: {spec}: {err}") from None
    backbone = Backbone(
        model,
        spec=spec,
        source="torchvision",
        arch=name,
        input_config=_input_config(weights_enum, kwargs),
        model_kwargs=kwargs,
    )
    if weights is not None:
        backbone.load_weights(load_state_dict_file(weights), where=f"backbone.weights: {weights}")
    return finish(backbone, num_classes)
