"""From a ``'source:name'`` spec to a :class:`Backbone`: the source registry, spec
parsing, :func:`create_backbone`, :func:`rebuild_architecture`, and the helpers every
source shares.

:data:`SOURCES` lives here, below the source modules, so that each ``sources/<name>.py``
registers itself with ``@SOURCES.register(name)`` and :func:`rebuild_architecture` (which
the ``file`` source needs) dispatches through it, without an import cycle. The registry is
filled when :mod:`nctune.backbones.sources` is imported, which importing anything in
:mod:`nctune.backbones` does (the package imports it).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from torch import nn

# the recipe checks specs without torch: the prefixes and the parser live below it
from nctune._names import TIMM_PREFIXES, spec_source
from nctune._registry import Registry
from nctune.backbones.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, InputConfig
from nctune.errors import BackboneError


class BackboneSection(Protocol):
    """What :func:`create_backbone` reads from a recipe's ``backbone`` section
    (:class:`nctune.config.BackboneConfig` satisfies it; backbones never import the recipe)."""

    name: str
    pretrained: bool
    weights: Path | None
    model_kwargs: dict[str, Any]


__all__ = [
    "SOURCES",
    "SourceFn",
    "create_backbone",
    "list_sources",
    "parse_spec",
    "rebuild_architecture",
    "spec_source",
]

#: ``source(name, pretrained, weights, model_kwargs) -> Backbone``
SourceFn = Callable[[str, bool, "Path | None", dict[str, Any]], Backbone]

#: The ``source:`` prefixes of ``backbone.name``; each ``sources/<name>.py`` registers one.
SOURCES: Registry[SourceFn] = Registry("backbone source", field="backbone.name")


def list_sources() -> list[str]:
    """The known ``source:`` prefixes.

    Returns:
        The registered source names, sorted (``file``, ``packaged``, ``timm``,
        ``torchvision``).
    """
    return sorted(SOURCES.names())


# ======================================================================= shared by sources
def suggest(name: str, candidates: list[str]) -> str:
    """``' (did you mean X?)'`` for the closest candidate, or ``''``."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def factory_call(fn: Callable[..., nn.Module], label: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Call a model factory; a rejected keyword is a recipe error, not a crash."""
    try:
        return fn(*args, **kwargs)
    except TypeError as err:
        shown = {k: v for k, v in kwargs.items() if k != "pretrained"}  # ours, not the user's
        raise BackboneError(f"backbone.model_kwargs: {label} rejects {shown!r}: {err}") from None


def split_num_classes(kwargs: dict[str, Any], loading: bool) -> tuple[dict[str, Any], int | None]:
    """Hold back ``num_classes`` while weights load (they fix the class count); re-applied after."""
    kwargs = dict(kwargs)
    if not loading or kwargs.get("num_classes") is None:
        return kwargs, None
    return kwargs, int(kwargs.pop("num_classes"))


def finish(backbone: Backbone, num_classes: int | None) -> Backbone:
    """Apply a requested class count after pretrained loading, then switch to eval."""
    if num_classes is not None and num_classes != backbone.num_classes:
        backbone.reset_classifier(num_classes)
    backbone.model.eval()
    return backbone


#: The factory keyword that builds a model for another input side, in each library's own
#: spelling: ``backbone.model_kwargs`` reaches the factory unchanged, so the recipe spells
#: it the library's way too (``timm.create_model(img_size=…)``,
#: ``torchvision.models.get_model(image_size=…)``).
SIZE_KWARG = {"timm": "img_size", "torchvision": "image_size"}


def requested_size(kwargs: Mapping[str, Any], library: str) -> int | None:
    """The input side ``backbone.model_kwargs`` builds the model for, or None.

    Args:
        kwargs: the model factory's keyword arguments.
        library: ``'timm'`` (packaged models are timm's too) or ``'torchvision'``.

    Returns:
        ``kwargs[SIZE_KWARG[library]]``; of timm's ``(H, W)`` the last entry (nctune
        feeds square images).
    """
    size = kwargs.get(SIZE_KWARG[library])
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return int(size) if size else None


def timm_input_config(model: nn.Module, kwargs: dict[str, Any]) -> InputConfig:
    """The input config a timm model's ``pretrained_cfg`` (and ``img_size``/``in_chans``) give."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = requested_size(kwargs, "timm") or (cfg.get("input_size") or (3, 224, 224))[-1]
    return InputConfig(
        image_size=int(size),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation") or "bicubic"),
        crop_pct=float(cfg.get("crop_pct") or 1.0),
        in_chans=int(kwargs.get("in_chans") or (cfg.get("input_size") or (3,))[0]),
        crop_mode=str(cfg.get("crop_mode") or "center"),
    )


# ======================================================================= entry points
def parse_spec(text: str) -> tuple[str, str]:
    """``'timm:resnet18'`` → ``('timm', 'resnet18')``; a bare name means timm.

    Raises:
        BackboneError: an unregistered source, or no model name after the prefix.
    """
    text = str(text).strip()
    source, sep, name = text.partition(":")
    key = spec_source(text)
    if not sep or source.strip().lower() in TIMM_PREFIXES:
        return "timm", text
    if key not in SOURCES:
        raise BackboneError(
            f"backbone.name: unknown source {source!r} in {text!r} (use "
            f"{', '.join(s + ':' for s in list_sources())} or a bare timm name)"
        )
    if not name.strip():
        raise BackboneError(f"backbone.name: {text!r} names no model after '{source}:'")
    return key, name.strip()


def rebuild_architecture(
    meta: Mapping[str, str], *, where: str = "metadata", **kwargs: Any
) -> Backbone:
    """The architecture :meth:`Backbone.metadata` describes, randomly initialised (no download).

    Args:
        meta: ``spec``, ``num_classes`` and ``model_kwargs`` as written by :meth:`Backbone.save`.
        where: file name for error messages.
        **kwargs: extra model factory arguments (override the recorded ones).

    Returns:
        A :class:`Backbone` with random weights and ``num_classes`` outputs, in eval mode.

    Raises:
        BackboneError: the metadata lacks ``spec`` or ``num_classes`` or holds an invalid
            value, its spec is a ``file:`` one, or the architecture cannot be built.
    """
    try:
        build_kwargs = {**json.loads(meta.get("model_kwargs") or "{}"), **kwargs}
        build_spec = meta["spec"]
        num_classes = int(meta["num_classes"])
    except (KeyError, ValueError) as err:
        raise BackboneError(f"{where}: damaged nctune metadata ({err})") from None
    build_kwargs.pop("num_classes", None)
    source, inner = parse_spec(build_spec)
    if source == "file":
        raise BackboneError(f"{where}: metadata spec {build_spec!r} points at another file")
    built = SOURCES.get(source)(inner, False, None, build_kwargs)
    if built.num_classes != num_classes:
        built.reset_classifier(num_classes)
    return built


def create_backbone(
    spec: BackboneSection | str,
    *,
    pretrained: bool | None = None,
    weights: str | Path | None = None,
    **model_kwargs: Any,
) -> Backbone:
    """Build a backbone from a ``'source:name'`` spec or a recipe's ``BackboneConfig``.

    Args:
        spec: ``timm:<name>`` (or a bare timm name), ``torchvision:<name>``,
            ``packaged:efficientnet_lite0|lite1|lite2`` or ``file:<path>``; or a
            ``BackboneConfig`` whose fields the other arguments override.
        pretrained: load pretrained weights (default True): from ``weights``, else the local
            hub cache, else the hub when it is reachable.
        weights: a local ``.safetensors``/``.pth``/``.pt``/``.bin`` file for the architecture
            (implies pretrained; wrappers and ``module.`` prefixes are unwrapped; a file with
            another class count resizes the classifier unless ``num_classes`` is given).
        **model_kwargs: forwarded to the model factory (``num_classes`` is applied after
            loading pretrained weights, with a fresh classifier).

    Returns:
        A :class:`Backbone` in eval mode.

    Raises:
        BackboneError: unknown source or model, unusable weights file, or pretrained weights
            that are neither cached nor downloadable (fails in about a second offline).
    """
    if isinstance(spec, str):
        text, cfg_pretrained, cfg_weights, kwargs = spec, True, None, {}
    else:
        text, cfg_pretrained = spec.name, spec.pretrained
        cfg_weights, kwargs = spec.weights, dict(spec.model_kwargs)
    kwargs.update(model_kwargs)
    use_pretrained = cfg_pretrained if pretrained is None else pretrained
    weights_path = weights if weights is not None else cfg_weights
    path = Path(weights_path).expanduser() if weights_path is not None else None
    source, name = parse_spec(text)
    return SOURCES.get(source)(name, bool(use_pretrained), path, kwargs)
