"""The recipe's ``search`` section: what ``nctune tune`` searches, validated like the rest.

Dotted paths in ``search.space`` are checked against the recipe model itself, which
:mod:`nctune.config` hands over with :func:`set_root` once ``Recipe`` exists (this module sits
below it and cannot import it).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nctune._section import Section, closest_key

_ROOT: dict[str, type[BaseModel]] = {}

#: Most points a grid search may hold: every point is a fine-tuning run, and the grid is
#: listed in memory before the first trial (``int: [1, 2147483647]`` would be 2**31 values).
MAX_GRID = 10_000


def set_root(recipe: type[BaseModel]) -> None:
    """Name the model whose fields ``search.space`` paths address (``nctune.config.Recipe``)."""
    _ROOT["recipe"] = recipe


class Distribution(Section):
    """One searched field: exactly one of ``float``, ``int``, ``choice``, ``blocks_from_profile``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    float_: tuple[float, float] | None = Field(
        None, alias="float", description="[lo, hi]: a real number between lo and hi."
    )
    int_: tuple[int, int] | None = Field(
        None, alias="int", description="[lo, hi]: an integer from lo to hi, both included."
    )
    choice: list[Any] | None = Field(None, description="One of these values.")
    blocks_from_profile: int | None = Field(
        None,
        ge=1,
        description="strategy.layers only: one of the N blocks the recipe's rule ranks best on the collapse profile.",
    )
    log: bool = Field(False, description="float/int: sample on a log scale (needs lo > 0).")
    step: float | None = Field(
        None, gt=0, description="float/int: sample on this grid (int: a whole number)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        kinds = [
            k
            for k, v in (
                ("float", self.float_),
                ("int", self.int_),
                ("choice", self.choice),
                ("blocks_from_profile", self.blocks_from_profile),
            )
            if v is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of float: [lo, hi], int: [lo, hi], choice: [...], blocks_from_profile: N"
            )
        bounds = self.float_ or self.int_
        if bounds is not None:
            lo, hi = bounds
            if not lo < hi:
                raise ValueError(f"empty range [{lo}, {hi}]: lo must be below hi")
            if self.log and lo <= 0:
                raise ValueError(f"log: true needs lo > 0 (got [{lo}, {hi}])")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot be combined")
            if self.int_ is not None and self.step is not None and self.step != int(self.step):
                raise ValueError(
                    f"step: {self.step:g} is not a whole number; an int range steps by whole "
                    "numbers (e.g. step: 2), a fractional step needs float: [lo, hi]"
                )
        elif self.log or self.step is not None:
            raise ValueError(f"log/step apply to float and int ranges, not to {kinds[0]}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: give at least one value")
        return self

    def points(self) -> float:
        """How many values a grid search visits here (float: may be huge, never listed)."""
        if self.choice is not None:
            return len(self.choice)
        if self.blocks_from_profile is not None:
            return self.blocks_from_profile
        lo, hi = self.float_ or self.int_ or (0, 0)
        step = self.step or 1
        return math.floor((hi - lo) / step + 1e-9) + 1

    @property
    def kind(self) -> str:
        """``'float'``, ``'int'``, ``'choice'`` or ``'blocks_from_profile'``."""
        for k in ("float_", "int_", "choice", "blocks_from_profile"):
            if getattr(self, k) is not None:
                return k.rstrip("_")
        raise AssertionError("validated: one kind is set")


def _check_space_path(path: str, dist: Distribution) -> None:
    """Refuse a dotted path that names no recipe field, or values the field would reject."""
    parts = path.split(".")
    model: type[BaseModel] = _ROOT["recipe"]
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None or part == "search":
            close = closest_key(_ROOT["recipe"], parts[: i + 1])
            hint = f"; did you mean {close!r}?" if close and close != "search" else ""
            raise ValueError(f"{path}: no recipe field {'.'.join(parts[: i + 1])!r}{hint}")
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        if i != len(parts) - 1:
            raise ValueError(f"{path}: {'.'.join(parts[: i + 1])} is a value, not a section")
        break
    else:
        raise ValueError(f"{path}: is a section; name one of its fields")
    if dist.kind == "blocks_from_profile":
        if path != "strategy.layers":
            raise ValueError(f"{path}: blocks_from_profile only applies to strategy.layers")
        return
    if dist.kind == "float" and ann in (int, int | None):
        raise ValueError(f"{path}: wrong type: an integer field; use int: [lo, hi]")
    values = (dist.choice or []) if dist.kind == "choice" else list(dist.float_ or dist.int_ or ())
    probe = model.model_construct()
    for value in values:
        try:
            setattr(probe, part, [value] if _wants_list(ann) and isinstance(value, str) else value)
        except ValidationError as err:
            first = err.errors()[0]
            raise ValueError(f"{path}: wrong type or range for {value!r}: {first['msg']}") from None


def _wants_list(annotation: Any) -> bool:
    """A list-valued field (e.g. strategy.layers): a searched string means a one-item list."""
    return "list[" in str(annotation)


class SearchConfig(Section):
    """What `nctune tune` searches (Optuna), and how."""

    trials: int = Field(
        20, ge=1, description="Finished (complete or pruned) trials the study should hold."
    )
    timeout: float | None = Field(
        None, gt=0, description="Stop starting new trials after this many seconds (per worker)."
    )
    metric: Literal["val_accuracy", "nc1_after"] = Field(
        "val_accuracy",
        description="What a trial scores: val_accuracy (the best validation accuracy, maximised) or nc1_after (NC1 of the head input after training, on the training split, minimised). tune warns before its first trial when the validation split holds under 20 images a class, too few to rank trials by val_accuracy.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: maximize val_accuracy, minimize nc1_after."
    )
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="TPE, random or grid (grid needs choice or int/float with step, at most 10,000 points, each run once); seeded by the recipe's seed.",
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="Stop poor trials early from their per-epoch validation accuracy (nc1_after: the epoch's head-input NC1 from the training pass).",
    )
    startup_trials: int = Field(
        2, ge=0, description="median pruner: trials that always finish before any is pruned."
    )
    warmup_epochs: int = Field(
        1, ge=0, description="median pruner: epochs of every trial that are never pruned."
    )
    keep: Literal["best", "all"] = Field(
        "best", description="Keep model weights of the best trial only, or of every trial."
    )
    heartbeat: int = Field(
        30,
        ge=1,
        description="Seconds between a running trial's heartbeats (SQL storages); a trial silent for 'grace' is failed and retried once.",
    )
    grace: int | None = Field(
        None,
        ge=1,
        description="Seconds without a heartbeat before a trial counts as dead (default: 4 × heartbeat).",
    )
    space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Recipe field (dotted path) → distribution: {float: [lo, hi], log: true}, {int: [lo, hi]}, {choice: [...]}, {blocks_from_profile: N}.",
    )

    @field_validator("space")
    @classmethod
    def _paths(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for path, dist in space.items():
            _check_space_path(path, dist)
        return space

    @model_validator(mode="after")
    def _grid(self) -> SearchConfig:
        if self.sampler != "grid":
            return self
        for path, dist in self.space.items():
            if dist.kind == "float" and dist.step is None:
                raise ValueError(f"space: {path}: the grid sampler needs a step for a float range")
        sizes = {path: dist.points() for path, dist in self.space.items()}
        total = math.prod(sizes.values())
        if total > MAX_GRID:
            path = max(sizes, key=sizes.__getitem__)  # the field to shrink first
            part = f" ({sizes[path]:,.0f} of them its values)" if len(sizes) > 1 else ""
            raise ValueError(
                f"space: {path}: the grid holds {total:,.0f} points{part}, over the "
                f"{MAX_GRID:,} a grid search may run; give it a larger step or fewer values, "
                "or use sampler: tpe or random"
            )
        return self
