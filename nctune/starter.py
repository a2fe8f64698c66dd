"""A commented starter recipe for the user's own image folder (``nctune init``).

The text is written from a validated :class:`~nctune.config.Recipe`, each key with its
field's own description (:mod:`nctune.recipe_fields`) as the comment, and then checked on
the spot: it must load back into the same recipe, and the image folder must give at least
two classes with images (the real data source's listing; no image is decoded and no
weights are loaded).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nctune.backbones import IMAGENET_INPUT, create_backbone, list_sources
from nctune.backbones.factory import TIMM_PREFIXES, parse_spec
from nctune.config import Recipe, apply_overrides, recipe_from_dict
from nctune.data import build_data
from nctune.errors import BackboneError, ConfigError
from nctune.recipe_fields import field_rows

#: The keys the starter spells out, per section (everything else keeps its default and
#: is listed by ``nctune init --fields`` and docs/recipes.md).
STARTER_KEYS: dict[str, list[str]] = {
    "backbone": ["name", "pretrained"],
    "data": [
        "source",
        "path",
        "image_size",
        "batch_size",
        "val_fraction",
        "test_fraction",
        "augment",
        "num_workers",
    ],
    "strategy": ["name", "layers"],
    "train": ["epochs", "lr", "optimizer", "early_stopping", "tensorboard"],
    "": ["device", "threads", "seed"],
}


@dataclass
class Starter:
    """A starter recipe and what the check found.

    Attributes:
        text: the commented YAML.
        recipe: the validated recipe it loads as.
        classes: the class names found in the image folder.
        images: training images found (before any validation/test hold-out).
    """

    text: str
    recipe: Recipe
    classes: list[str]
    images: int


def _value(v: Any) -> str:
    return (
        yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    )


def _comment(description: str) -> str:
    first = description.split(". ")[0].rstrip(".")
    return " ".join(first.split())


def check_backbone(recipe: Recipe, named: str = "backbone.name") -> None:
    """Refuse a backbone its source does not know, without weights, memory or network.

    The architecture is built by its own source with random weights on PyTorch's ``meta``
    device (shapes only), so an unknown model name (``nonsense`` is an unknown timm model)
    or rejected ``model_kwargs`` fail now rather than at the first ``analyze``. Names only a
    hub can resolve (timm's ``hf-hub:``/``local-dir:``) are checked when used; a build that
    fails for any other reason than the name (a model that cannot live on ``meta``) is left
    to the real build too.

    Args:
        recipe: the starter's validated recipe.
        named: how the message names the backbone (``--backbone`` for ``nctune init``).

    Raises:
        BackboneError: one line naming ``named``, the source's reason and the known sources.
    """
    try:
        _, inner = parse_spec(recipe.backbone.name)
        if inner.partition(":")[0].strip().lower() in TIMM_PREFIXES:
            return
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # a file's weights copied onto meta tensors
            create_backbone(recipe.backbone, pretrained=False)
    except BackboneError as err:
        detail = str(err).removeprefix("backbone.name: ")
        if detail == str(err):  # not the name: e.g. backbone.model_kwargs, already named
            raise
        sources = ", ".join(f"{s}:" for s in list_sources())
        raise BackboneError(
            f"{named}: {detail} (known sources: {sources}; a bare name is a timm model)"
        ) from None
    except Exception:  # not the name's fault (a model that cannot live on meta): the real
        return  # build tells, when the recipe is used


def starter_recipe(
    data: str | Path,
    backbone: str = "packaged:efficientnet_lite0",
    overrides: list[str] | None = None,
    *,
    backbone_named: str = "backbone.name",
) -> Starter:
    """Write and check a commented recipe that fine-tunes ``backbone`` on an image folder.

    Args:
        data: a folder of class folders (or with ``train/`` and ``val/``/``test/`` inside).
        backbone: ``source:name`` (default: the packaged Lite0, which needs no download).
        overrides: ``key.path=value`` strings applied on top of the starter values.
        backbone_named: how an unknown backbone is named in the error (the CLI: its
            ``--backbone`` option).

    Returns:
        The :class:`Starter`.

    Raises:
        ConfigError: an invalid override or backbone source.
        BackboneError: a model its source does not know (:func:`check_backbone`).
        DataError: the folder is missing or has fewer than two classes with images.
    """
    base: dict[str, Any] = {
        "backbone": {"name": backbone},
        "data": {
            "source": "imagefolder",
            "path": str(Path(data).expanduser().resolve()),
            "test_fraction": 0.1,
        },
    }
    recipe = recipe_from_dict(apply_overrides(base, list(overrides or [])), "nctune init")
    check_backbone(recipe, backbone_named)
    dumped = recipe.model_dump(mode="json")
    rows = {r.key: r for r in field_rows()}
    lines = [
        "# nctune recipe for your own images, written by `nctune init`.",
        "# Every field: docs/recipes.md or `nctune init --fields`; any of them can be",
        "# overridden with --set key.path=value. Next:",
        "#   nctune analyze THIS_FILE    # which blocks are already collapsed on your data",
        "#   nctune finetune THIS_FILE   # fine-tune; report NC1 before/after and accuracy",
    ]
    if recipe.backbone.pretrained and recipe.backbone.name.split(":")[0] in ("timm", "torchvision"):
        lines.append(
            "# Pretrained timm/torchvision weights download on first use (network or the local hub cache)."
        )
    for section, keys in STARTER_KEYS.items():
        lines.append("")
        if section:
            lines.append(f"{section}:")
        node = dumped[section] if section else dumped
        pad = "  " if section else ""
        for key in keys:
            row = rows[f"{section}.{key}" if section else key]
            lines.append(f"{pad}# {_comment(row.description)}")
            lines.append(f"{pad}{key}: {_value(node[key])}")
    text = "\n".join(lines) + "\n"
    # The check: the text loads back into the very recipe it was written from.
    back = recipe_from_dict(yaml.safe_load(text) or {}, "nctune init")
    if back != recipe:  # pragma: no cover - a bug in the writer, not bad input
        raise ConfigError("nctune init: the starter recipe did not load back as written")
    # The folder, through the real imagefolder source (lists files; decodes nothing, so no
    # backbone is built: ImageNet's input config stands in, data.image_size still resolved).
    splits = build_data(recipe.data, IMAGENET_INPUT, seed=recipe.seed)
    images = sum(len(s) for s in (splits.train, splits.val, splits.test) if s is not None)
    return Starter(text, recipe, list(splits.classes), images)
