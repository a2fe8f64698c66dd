"""The base every recipe section shares: no unknown keys, finite floats, integers C APIs take.

Ground floor (pydantic only), so the recipe (:mod:`nctune.config`) and the sections that
live in their own modules (:mod:`nctune.search_config`) apply one set of rules.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

#: Largest seed: numpy's legacy seeding (DataLoader workers, user code) takes 32 bits;
#: torch takes 64, and the per-epoch seeds derived from it (seed · 100003 + epoch) must fit.
MAX_SEED = 2**32 - 1

#: Largest value of any other integer field (counts, sizes, epochs): a C int.
MAX_INT = 2**31 - 1

#: Smallest input side in pixels, wherever one is set or read: the recipe's
#: ``data.image_size``, the side :func:`nctune.data.input_config.resolve_input_config`
#: gives a run, and the input config a saved run records (``nctune.runs._model_meta``).
MIN_IMAGE_SIZE = 8

#: Largest input side in pixels: the recipe's ``data.image_size`` and the input config a
#: saved run records. timm's largest pretrained input is 1024 px; a tampered or mistyped
#: side (100000) would make the eval transform resize every image to gigapixels before the
#: crop — a MemoryError, or the kernel's OOM killer.
MAX_IMAGE_SIZE = 4096

#: Bounds of a saved input config's ``crop_pct`` (resize the shorter side to
#: ``floor(T / crop_pct)``, then centre-crop ``T``). Every timm pretrained config lies in
#: [0.875, 1.15] and torchvision's weights in [0.87, 1]; 0.5 leaves room for custom
#: backbones while the resized side stays at most ``2 T`` (8192 px at
#: :data:`MAX_IMAGE_SIZE`), where ``crop_pct = 1e-6`` would ask for a million times ``T``.
#: Above 1 (timm's VOLO models use 1.15) the eval transform counts it as 1, so 2 refuses
#: only nonsense.
MIN_CROP_PCT = 0.5
MAX_CROP_PCT = 2.0

#: Most classes a saved model's classifier (and its backbone's recorded head) may have:
#: ImageNet-22k has 21,843; at 10^5 rows a 2048-wide head is 0.8 GB. A tampered count
#: (10^11) would make rebuilding the model allocate a classifier no machine holds.
MAX_CLASSES = 100_000


class Section(BaseModel):
    """Base of every recipe section: no unknown keys, validated on assignment too.

    Every float field refuses NaN and ±inf (``allow_inf_nan=False``): YAML reads ``.inf``
    and ``.nan`` as floats, and a non-finite rate or weight would train a NaN model.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _int_fits(cls, v: Any, info: ValidationInfo) -> Any:
        # Counts and sizes end in C APIs (DataLoader's islice, tensor shapes) that take at
        # most a C long: 10**20 would pass ge=1 and crash there. seed has its own bound.
        if type(v) is int and v > MAX_INT and info.field_name != "seed":
            raise ValueError(f"must be at most {MAX_INT}, got {v}")
        return v


def _models_in(annotation: Any) -> list[Any]:
    """The annotations a value of ``annotation`` may hold, unions and ``None`` unwrapped."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def closest_key(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """The dotted path of the field closest to an unknown key, for a "did you mean".

    Walks ``loc`` down from ``root`` through sections, mappings (``search.space``'s values)
    and lists, then matches the last part against the field names (and aliases) found
    there with :func:`difflib.get_close_matches`.

    Args:
        root: the model the path starts from (the ``Recipe``).
        loc: the path of the unknown key, e.g. ``('train', 'epoch')``.

    Returns:
        e.g. ``'train.epochs'``, or None when nothing is close or the path leaves the models.
    """
    if not loc:
        return None
    current: list[Any] = [root]
    for part in loc[:-1]:
        found: list[Any] = []
        for ann in current:
            origin = typing.get_origin(ann)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                field = ann.model_fields.get(str(part)) or next(
                    (f for f in ann.model_fields.values() if f.alias == part), None
                )
                if field is not None:
                    found += _models_in(field.annotation)
            elif origin is dict:  # a key of a mapping: the values' type continues the path
                found += _models_in(typing.get_args(ann)[1])
            elif origin in (list, tuple) and isinstance(part, int):
                found += _models_in(typing.get_args(ann)[0])
        current = found
    names = [
        name
        for ann in current
        if isinstance(ann, type) and issubclass(ann, BaseModel)
        for key, field in ann.model_fields.items()
        for name in (field.alias or key,)
    ]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return ".".join([*(str(p) for p in loc[:-1]), close[0]]) if close else None
