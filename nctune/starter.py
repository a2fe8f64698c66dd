"""A commented starter recipe for the user's own image folder (``nctune init``).

The text is written from a validated :class:`~nctune.config.Recipe`, each key with its
field's own description (:mod:`nctune.recipe_fields`) as the comment, and then checked on
the spot: it must load back into the same recipe, and the image folder must give at least
two classes with images (the real data source's listing; no weights are loaded).

The starter also proposes what costs time, from the data itself (:class:`Proposal`):

* ``data.image_size`` = ``min(T_b, ⌈UPSCALE · s / STRIDE⌉ · STRIDE)`` within
  [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE], where ``s`` is the median shorter side of the folder's
  images (PIL headers of up to :data:`SIDE_SAMPLE` files) and ``T_b`` the backbone's own
  side: 8 px digits get 32 px, 28 px images 64 px, photos the backbone's 224 px. A
  backbone that takes no other side (a ViT built for one) keeps ``T_b``.
* ``train.epochs`` from the number of training images ``n`` (:data:`EPOCHS_BY_SIZE`):
  fewer images, more passes, so a small set still gets a few hundred updates.

Then :func:`measure_cost` times a few batches of the real data at that side on the
recipe's device, with random weights (the time does not depend on them), and scales
them to one ``analyze`` and one training epoch. The recipe is validated before torch
loads: a typo in ``--set`` costs no import.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nctune._names import TIMM_PREFIXES
from nctune._section import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from nctune.config import Recipe, apply_overrides, parse_override, recipe_from_dict
from nctune.cost import Cost, measure_cost
from nctune.errors import BackboneError, ConfigError
from nctune.recipe_fields import field_rows

#: Proposed side = this multiple of the data's median side (then rounded up to STRIDE):
#: some room for the pretrained filters, without the backbone's full side on tiny images.
UPSCALE = 2
#: Proposed sides are multiples of this, the total stride of common CNN backbones (and a
#: multiple of a ViT's 16 px patches), so the last feature map is whole.
STRIDE = 32
#: At most this many files' headers are read for the median side (seeded sample).
SIDE_SAMPLE = 200
#: ``(fewest training images, epochs)``, first match wins: fewer images, more epochs.
EPOCHS_BY_SIZE: tuple[tuple[int, int], ...] = ((10_000, 5), (2_000, 10), (500, 20), (0, 30))


def build_data(data: Any, input_config: Any, *, seed: int = 0) -> Any:
    """:func:`nctune.data.build_data`, imported when called: torch loads after the check."""
    from nctune.data import build_data as build

    return build(data, input_config, seed=seed)


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
        images: images found, every split together.
        proposal: the proposed image side and epochs, and why.
        cost: the measured time estimate, or None (not asked for, or it could not run).
    """

    text: str
    recipe: Recipe
    classes: list[str]
    images: int
    proposal: Proposal = field(default_factory=lambda: Proposal())
    cost: Cost | None = None


@dataclass
class Proposal:
    """What ``nctune init`` proposes for the fields that cost time, and why.

    Attributes:
        image_size: the proposed ``data.image_size``; None when ``--set`` gave one.
        epochs: the proposed ``train.epochs``; None when ``--set`` gave one.
        median_side: the median shorter side of the images read, in pixels (None: none read).
        backbone_size: the backbone's own input side.
        size_reason: one line: why this side.
        epochs_reason: one line: why this many epochs.
    """

    image_size: int | None = None
    epochs: int | None = None
    median_side: float | None = None
    backbone_size: int | None = None
    size_reason: str = ""
    epochs_reason: str = ""


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
    import torch

    from nctune.backbones import create_backbone, list_sources
    from nctune.backbones.factory import parse_spec

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


def propose_image_size(median_side: float | None, backbone_size: int) -> int:
    """The starter's ``data.image_size``: the data's own side, a little enlarged, never
    above the backbone's.

    .. math:: T = \\operatorname{clip}\\big(\\min(T_b,\\ \\lceil u\\,s / k \\rceil k),\\
        T_{\\min},\\ T_{\\max}\\big)

    with ``s`` the median shorter side, ``u`` = :data:`UPSCALE`, ``k`` = :data:`STRIDE`,
    ``T_b`` the backbone's side and the bounds :data:`~nctune._section.MIN_IMAGE_SIZE`,
    :data:`~nctune._section.MAX_IMAGE_SIZE`.

    Args:
        median_side: median shorter side of the images in pixels; None (unknown) gives
            ``backbone_size``.
        backbone_size: the side the backbone was trained at.

    Returns:
        The side in pixels: 8 px images → 32, 28 px → 64, 300 px → 224 (for ``T_b = 224``).
    """
    side = backbone_size
    if median_side is not None and median_side > 0:
        side = min(backbone_size, math.ceil(UPSCALE * median_side / STRIDE) * STRIDE)
    return max(MIN_IMAGE_SIZE, min(MAX_IMAGE_SIZE, int(side)))


def propose_epochs(train_images: int) -> int:
    """The starter's ``train.epochs`` for ``train_images`` training images
    (:data:`EPOCHS_BY_SIZE`: under 500 → 30, under 2,000 → 20, under 10,000 → 10, else 5)."""
    return next(epochs for least, epochs in EPOCHS_BY_SIZE if train_images >= least)


def _epochs_rule() -> str:
    """:data:`EPOCHS_BY_SIZE` in words: ``'under 500 → 30 epochs, under 2,000 → 20, …'``."""
    steps = sorted(EPOCHS_BY_SIZE)  # ascending: (0, 30), (500, 20), …
    parts = [f"under {hi:,} → {epochs}" for (_, epochs), (hi, _) in itertools.pairwise(steps)]
    parts[0] += " epochs"
    return f"{', '.join(parts)}, else {steps[-1][1]}"


def median_side(folder: str | Path, sample: int = SIDE_SAMPLE, seed: int = 0) -> float | None:
    """Median shorter side of the images under ``folder``, from the headers of a seeded
    sample of at most ``sample`` files (PIL reads the size without decoding).

    Returns:
        Pixels, or None when no file could be read.
    """
    from PIL import Image

    from nctune.data import list_images

    paths = list_images(folder)
    if len(paths) > sample:
        paths = random.Random(seed).sample(paths, sample)
    sides = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):  # an unreadable file: the listing's check reports it
            continue
    return float(statistics.median(sides)) if sides else None


def _accepts(model: Any, size: int, device: Any) -> bool:
    """Whether ``model`` runs on ``size``-px inputs (a ViT built for one side does not)."""
    import torch

    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size, device=device))
    except Exception:  # the model's own complaint (an assert, a shape error): not this side
        return False
    return True


def _propose_size(recipe: Recipe, backbone: Any, device: Any, proposal: Proposal) -> int:
    default = int(backbone.input_config.image_size)
    proposal.backbone_size = default
    if recipe.data.source == "imagefolder" and recipe.data.path is not None:
        proposal.median_side = median_side(recipe.data.path, seed=recipe.seed)
    if proposal.median_side is None:
        proposal.size_reason = f"the backbone's own side ({default} px)"
        return default
    size = propose_image_size(proposal.median_side, default)
    seen = f"your images' median side is {proposal.median_side:g} px"
    if size != default and not _accepts(backbone.model, size, device):
        proposal.size_reason = f"{seen}, but this backbone takes only its own {default} px"
        return default
    if size >= default:
        proposal.size_reason = f"{seen}; the backbone's own side ({default} px) is the cap"
    else:
        proposal.size_reason = (
            f"{seen}: {UPSCALE}x that, rounded up to a multiple of {STRIDE}, instead of the "
            f"backbone's {default} px (each step up costs time; set it to {default} to compare)"
        )
    return size


def starter_recipe(
    data: str | Path,
    backbone: str = "packaged:efficientnet_lite0",
    overrides: list[str] | None = None,
    *,
    backbone_named: str = "backbone.name",
    estimate: bool = True,
) -> Starter:
    """Write and check a commented recipe that fine-tunes ``backbone`` on an image folder.

    The image side and the epochs are proposed from the data (see the module docstring)
    unless ``overrides`` set them; ``estimate`` times a few batches (:func:`measure_cost`).

    Args:
        data: a folder of class folders (or with ``train/`` and ``val/``/``test/`` inside).
        backbone: ``source:name`` (default: the packaged Lite0, which needs no download).
        overrides: ``key.path=value`` strings applied on top of the starter values.
        backbone_named: how an unknown backbone is named in the error (the CLI: its
            ``--backbone`` option).
        estimate: measure the time of ``analyze`` and of one epoch on this machine.

    Returns:
        The :class:`Starter`.

    Raises:
        ConfigError: an invalid override or backbone source (before torch is imported).
        BackboneError: a model its source does not know (:func:`check_backbone`).
        DataError: the folder is missing or has fewer than two classes with images.
    """
    overrides = list(overrides or [])
    base: dict[str, Any] = {
        "backbone": {"name": backbone},
        "data": {
            # a save_to_disk folder is a Hugging Face dataset (the files
            # nctune.data.sources.hf.is_saved_dataset looks for; importing it would load torch)
            "source": "hf" if _saved_dataset(Path(data).expanduser()) else "imagefolder",
            "path": str(Path(data).expanduser().resolve()),
            "test_fraction": 0.1,
        },
    }

    def build(extra: dict[str, Any]) -> Recipe:
        merged = {**base, "data": {**base["data"], **extra.get("data", {})}}
        if "train" in extra:
            merged["train"] = dict(extra["train"])
        return recipe_from_dict(apply_overrides(merged, overrides), "nctune init")

    recipe = build({})  # every typo is refused here, before torch loads
    check_backbone(recipe, backbone_named)
    given = {".".join(parse_override(o)[0]) for o in overrides}
    net, device = _random_backbone(recipe)
    proposal = Proposal()
    extra: dict[str, Any] = {}
    if net is not None and "data.image_size" not in given and "data" not in given:
        proposal.image_size = _propose_size(recipe, net, device, proposal)
        extra["data"] = {"image_size": proposal.image_size}
        recipe = build(extra)
    from nctune.backbones import IMAGENET_INPUT

    # the listing (and the timed batches) at the recipe's side; no weights are loaded
    splits = build_data(recipe.data, net.input_config if net else IMAGENET_INPUT, seed=recipe.seed)
    train_images = len(splits.train)
    if "train.epochs" not in given and "train" not in given:
        proposal.epochs = propose_epochs(train_images)
        proposal.epochs_reason = f"{train_images} training images: {_epochs_rule()}"
        extra["train"] = {"epochs": proposal.epochs}
        recipe = build(extra)
    text = _recipe_text(recipe, proposal)
    images = sum(len(s) for s in (splits.train, splits.val, splits.test) if s is not None)
    cost = measure_cost(net, splits, recipe, device) if estimate and net else None
    return Starter(text, recipe, list(splits.classes), images, proposal, cost)


def _saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _random_backbone(recipe: Recipe) -> tuple[Any, Any]:
    """The recipe's architecture with random weights on its device (no download: the
    proposal needs its input side and its speed, not its weights), or ``(None, None)``
    when it cannot be built here (a hub-only name offline, a device this machine lacks:
    the recipe may be meant for another one), and nothing is proposed from it."""
    from nctune.backbones import create_backbone
    from nctune.errors import NctuneError
    from nctune.taps import resolve_device

    try:
        device = resolve_device(recipe.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = create_backbone(recipe.backbone, pretrained=False)
        net.model.to(device).eval()
    except (NctuneError, OSError, RuntimeError):
        return None, None
    return net, device


def _recipe_text(recipe: Recipe, proposal: Proposal) -> str:
    dumped = recipe.model_dump(mode="json")
    rows = {r.key: r for r in field_rows()}
    notes = {
        "data.image_size": proposal.image_size is not None and proposal.size_reason,
        "train.epochs": proposal.epochs is not None and proposal.epochs_reason,
    }
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
            dotted = f"{section}.{key}" if section else key
            lines.append(f"{pad}# {_comment(rows[dotted].description)}")
            if notes.get(dotted):
                lines.append(f"{pad}# proposed by nctune init: {notes[dotted]}")
            lines.append(f"{pad}{key}: {_value(node[key])}")
    text = "\n".join(lines) + "\n"
    # The check: the text loads back into the very recipe it was written from.
    back = recipe_from_dict(yaml.safe_load(text) or {}, "nctune init")
    if back != recipe:  # pragma: no cover - a bug in the writer, not bad input
        raise ConfigError("nctune init: the starter recipe did not load back as written")
    return text
