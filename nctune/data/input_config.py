"""The input config a run uses, resolved in one place (timm's ``resolve_data_config``).

A backbone says how its weights expect images (:class:`nctune.backbones.InputConfig`:
side ``T``, mean, std, interpolation, crop); a recipe may ask for another side
(``data.image_size``). :func:`resolve_input_config` is the one function that combines the
two, so every consumer sees the same values:

    data.image_size ─┐
                     ├─► resolve_input_config ─► build_data's transforms (analyze, rank, …)
    backbone config ─┘                          ─► finetune: saved with the weights
                                                   └─► load_finetuned ─► predict, export

:func:`resize_side` and :func:`per_channel` say what the crop and the normalisation of a
config mean, for the transforms here and for the preprocessing an export writes down.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nctune._section import MIN_IMAGE_SIZE
from nctune.errors import ConfigError

if TYPE_CHECKING:
    from nctune.data.section import DataSection

__all__ = [
    "MIN_IMAGE_SIZE",
    "InputConfigLike",
    "per_channel",
    "resize_side",
    "resolve_input_config",
]


class InputConfigLike(Protocol):
    """What :func:`~nctune.data.build_data` needs from a backbone (``nctune.backbones.InputConfig``)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float


C = TypeVar("C")


def resolve_input_config(
    input_config: C, data: DataSection | None = None, *, image_size: int | None = None
) -> C:
    """The input config a run uses: the backbone's, at the side the recipe asks for.

    ``T`` = ``image_size`` if given, else ``data.image_size`` if set, else the backbone's
    ``input_config.image_size``; mean, std, interpolation and crop are the backbone's (the
    recipe has no fields for them: the pretrained weights fix them).

    Args:
        input_config: a backbone's input config (a dataclass such as
            :class:`nctune.backbones.InputConfig`).
        data: the recipe's ``data`` section (only ``image_size`` is read).
        image_size: an explicit side, overriding ``data.image_size``.

    Returns:
        ``input_config`` itself when the side is its own, else a copy with ``image_size = T``.

    Raises:
        ConfigError: ``T`` is below :data:`~nctune._section.MIN_IMAGE_SIZE` (the same bound
            the recipe puts on ``data.image_size`` and a saved run on its input config).
    """
    requested = image_size or (data.image_size if data is not None else None)
    size = int(requested or input_config.image_size)  # type: ignore[attr-defined]
    if size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"data.image_size: an input side of {size} px is below the smallest nctune "
            f"takes ({MIN_IMAGE_SIZE}); set data.image_size to at least {MIN_IMAGE_SIZE}"
        )
    if size == input_config.image_size:  # type: ignore[attr-defined]
        return input_config
    return dataclasses.replace(input_config, image_size=size)  # type: ignore[type-var]


def per_channel(values: Any, what: str) -> tuple[float, float, float]:
    """A config's ``mean`` or ``std`` as three floats (one value stands for all channels).

    Raises:
        ValueError: neither 1 nor 3 values.
    """
    out = tuple(float(v) for v in values)
    if len(out) == 1:
        out = out * 3
    if len(out) != 3:
        raise ValueError(f"input config {what} needs 1 or 3 values, got {out}")
    return out  # type: ignore[return-value]


def crop_fraction(input_config: Any) -> float:
    """The eval crop fraction: ``crop_pct`` (unset or 0 → 1), above 1 counting as 1."""
    return min(float(getattr(input_config, "crop_pct", 1.0) or 1.0), 1.0)


def resize_side(input_config: Any) -> int:
    """The side images are resized to before the centre crop: ``floor(T / crop_pct)``."""
    return math.floor(int(input_config.image_size) / crop_fraction(input_config))
