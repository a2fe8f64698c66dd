"""The schema of a fine-tuned model file's metadata: what
:func:`nctune.runs.artifacts.save_model` writes, read back by ``load_finetuned`` and by
``file:`` backbones (:mod:`nctune.backbones.weights`), so a damaged or hand-edited file fails
the same way on both sides, in one line naming the field.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nctune._section import (
    MAX_CLASSES,
    MAX_CROP_PCT,
    MAX_IMAGE_SIZE,
    MIN_CROP_PCT,
    MIN_IMAGE_SIZE,
)
from nctune.errors import ArtifactError
from nctune.runs._io import CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION


class _Meta(BaseModel):
    # JSON metadata: exact types (no "3" for 3), no unknown keys, NaN/inf refused
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


#: Resize filters an input config may name: torchvision's ``InterpolationMode`` values, what
#: every backbone source records. Another name would silently become bilinear.
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


class _InputConfigMeta(_Meta):
    # the bounds keep the eval transform's resize finite (see nctune._section)
    image_size: int = Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)
    mean: list[float] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    interpolation: Literal[INTERPOLATIONS] = "bilinear"  # type: ignore[valid-type]
    crop_pct: float = Field(1.0, ge=MIN_CROP_PCT, le=MAX_CROP_PCT)
    in_chans: int = Field(3, ge=1)
    crop_mode: Literal["center", "squash"] = "center"

    @model_validator(mode="after")
    def _per_channel(self) -> _InputConfigMeta:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std {len(self.std)}")
        if len(self.mean) not in (1, 3):  # what the eval transform takes (per_channel)
            raise ValueError(f"mean and std need 1 or 3 values, got {len(self.mean)}")
        return self


class _BackboneMeta(_Meta):
    model_config = ConfigDict(strict=True, extra="allow")  # Backbone.metadata() may grow
    spec: str = Field(min_length=1)
    num_classes: str = Field(pattern=r"^[0-9]+$")  # safetensors metadata values are strings
    model_kwargs: str = "{}"  # a JSON object: the model factory's keyword arguments

    @field_validator("num_classes")
    @classmethod
    def _bounded(cls, v: str) -> str:
        if int(v) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} classes, got {v:.20}")
        return v

    @field_validator("model_kwargs")
    @classmethod
    def _mapping(cls, v: str) -> str:
        try:
            kwargs = json.loads(v)
        except ValueError:
            kwargs = None
        if not isinstance(kwargs, dict):
            raise ValueError(f"must be a mapping of keyword arguments (got {v!r:.40})")
        return v


class _ConfigMeta(_Meta):
    """The ``config`` a :class:`~nctune.training.strategies.TunedModel` saves (``model.config``)."""

    backbone: _BackboneMeta
    backbone_spec: str | None = None
    classifier_name: str | None = None
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    skip_block: str | None
    token_pool: Literal["cls", "mean"]
    head_dropout: float = Field(ge=0.0, lt=1.0)
    input_config: _InputConfigMeta


def parse_run_metadata(
    file: Path, meta: Mapping[str, str]
) -> tuple[dict[str, Any], list[str] | None]:
    """Validate a fine-tuned model's safetensors metadata against the run-config schema.

    Args:
        file: the model file (for messages).
        meta: its safetensors metadata (string values; JSON under :data:`CONFIG_KEY` and
            ``classes``).

    Returns:
        ``(config, classes)``: the config as plain data (``backbone`` with every key it
        was saved with), and the class names or None.

    Raises:
        ArtifactError: not an nctune fine-tuned model, a format version other than
            :data:`FORMAT_VERSION`, bad JSON, a class name listed twice, or a field that is
            missing, unknown, of the wrong type or out of range (an image side or crop the
            eval transform could not allocate, an unknown ``interpolation``): one line
            naming it.
    """
    if meta.get("kind", "finetuned") != "finetuned" or CONFIG_KEY not in meta:
        raise ArtifactError(
            f"{file}: not an nctune fine-tuned model (its metadata has no nctune 'config'); "
            "pass the model.safetensors of an nctune finetune run"
        )
    version = meta.get(FORMAT_KEY)
    if version is None:
        raise ArtifactError(
            f"{file}: not an nctune fine-tuned model (its metadata has no {FORMAT_KEY}); "
            "pass the model.safetensors of an nctune finetune run"
        )
    if version != FORMAT_VERSION:  # another layout would be read wrongly, not refused
        raise ArtifactError(
            f"{file}: damaged metadata: {FORMAT_KEY} is {version!r:.20}, not the "
            f"{FORMAT_VERSION!r} this nctune reads; restore the original file or fine-tune again"
        )
    fields: dict[str, Any] = {}
    for key in (CONFIG_KEY, "classes"):
        if key in meta:
            try:
                fields[key] = json.loads(meta[key])
            except ValueError as err:
                raise ArtifactError(
                    f"{file}: damaged metadata: {key} is not valid JSON ({err.msg}); restore the original file or fine-tune again"
                ) from None
    if not isinstance(fields[CONFIG_KEY], dict):
        raise ArtifactError(
            f"{file}: not an nctune fine-tuned model (its metadata config is a "
            f"{type(fields[CONFIG_KEY]).__name__}, not a mapping)"
        )
    try:
        config = _ConfigMeta.model_validate(fields[CONFIG_KEY]).model_dump()
        classes = fields.get("classes")
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        ):
            raise ArtifactError(
                f"{file}: damaged metadata: classes must be a list of names, got {classes!r:.60}"
            )
        twice = [c for c, n in collections.Counter(classes or ()).items() if n > 1]
        if twice:  # two indices, one label: a prediction could not say which class it is
            raise ArtifactError(
                f"{file}: damaged metadata: classes names {twice[0]!r:.40} twice; restore the "
                "original file or fine-tune again"
            )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in ("config", *first["loc"]))
        msg = first["msg"].lower().split(" or instance of ")[0]  # no private class names
        shown = f" (got {first.get('input')!r:.40})"
        if first["type"] in ("missing", "value_error"):
            msg, shown = msg.removeprefix("value error, "), ""
        raise ArtifactError(
            f"{file}: damaged metadata: {where}: {msg}{shown}; restore the original file or fine-tune again"
        ) from None
    if classes is not None and len(classes) != config["num_classes"]:
        raise ArtifactError(
            f"{file}: damaged metadata: classes lists {len(classes)} names but "
            f"config.num_classes is {config['num_classes']}; restore the original file or fine-tune again"
        )
    config["backbone"] = dict(fields[CONFIG_KEY]["backbone"])  # with any extra keys
    return config, classes
