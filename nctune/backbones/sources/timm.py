"""``timm:<name>`` (or a bare name): any timm model.

Pretrained weights come from the local Hugging Face / torch hub cache, else the hub (only
when the network answers within about a second).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import huggingface_hub.constants as hfc
import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

import nctune.backbones.hub as hub
from nctune.backbones.backbone import Backbone
from nctune.backbones.factory import (
    SOURCES,
    factory_call,
    finish,
    split_num_classes,
    suggest,
    timm_input_config,
)
from nctune.backbones.weights import load_state_dict_file
from nctune.errors import BackboneError


def _check_name(name: str) -> None:
    if ":" in name:  # hf-hub:org/repo, local-dir:/path: timm resolves those itself
        return
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        raise BackboneError(
            f"backbone.name: unknown timm model {name!r}{suggest(arch, timm.list_models())}"
        )


def _create_pretrained(name: str, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(pretrained=True)`` that fails in about a second when offline."""
    hub_name = name.startswith(("hf-hub:", "hf_hub:"))
    cfg = None
    if ":" not in name:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as err:  # invalid pretrained tag
            raise BackboneError(f"backbone.name: {spec}: {err}") from None
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):
            raise BackboneError(
                f"backbone.name: timm has no pretrained weights for {spec}; set "
                "backbone.pretrained=false or pass backbone.weights=PATH"
            )
    if hub_name or (cfg is not None and cfg.hf_hub_id):
        # A cached copy loads instantly in offline mode; only a miss needs the network, and
        # timm's own retry loop takes ~47 s to give up when there is none.
        try:
            with hub.hf_offline():
                return factory_call(timm.create_model, spec, name, pretrained=True, **kwargs)
        except hub.HF_CACHE_MISSES:
            pass
        endpoint = str(getattr(hfc, "ENDPOINT", "https://huggingface.co"))
        offline = hub.env_true("HF_HUB_OFFLINE") or bool(hfc.HF_HUB_OFFLINE)
        if offline or not hub.reachable(endpoint):
            host = urlparse(endpoint).hostname or endpoint
            raise hub.no_weights(spec, f"Hugging Face cache {hfc.HF_HUB_CACHE}", host) from None
    elif cfg is not None and cfg.url and not cfg.file:
        cache_dir = kwargs.get("cache_dir") or os.path.join(torch.hub.get_dir(), "checkpoints")
        cached = os.path.join(cache_dir, os.path.basename(urlparse(cfg.url).path))
        if not os.path.exists(cached) and not hub.reachable(cfg.url):
            raise hub.no_weights(
                spec, f"torch hub cache {cache_dir}", urlparse(cfg.url).hostname or ""
            )
    try:
        return factory_call(timm.create_model, spec, name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # download / hub failures while online
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackboneError(
            f"backbone.name: cannot load pretrained weights for {spec}: {first}"
        ) from None


def _arch(model: nn.Module, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or name.split(".", 1)[0])


@SOURCES.register("timm")
def create_timm(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    """A timm model: pretrained from the cache/hub, from ``weights``, or randomly initialised."""
    spec = f"timm:{name}"
    _check_name(name)
    num_classes = None
    if pretrained and weights is None:
        model = _create_pretrained(name, spec, kwargs)
    else:
        build_kwargs, num_classes = split_num_classes(kwargs, loading=weights is not None)
        model = factory_call(timm.create_model, spec, name, pretrained=False, **build_kwargs)
    backbone = Backbone(
        model,
        spec=spec,
        source="timm",
        arch=_arch(model, name),
        input_config=timm_input_config(model, kwargs),
        model_kwargs=kwargs,
    )
    if weights is not None:
        where = f"backbone.weights: {weights}"
        backbone.load_weights(load_state_dict_file(weights), where=where)
    return finish(backbone, num_classes)
