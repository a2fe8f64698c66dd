"""The recipe's fields as rows: type, default, description — one source for every listing.

``docs/recipes.md`` (``scripts/gen_recipe_docs.py``), ``nctune init --fields`` and the
comments of the starter recipe (:mod:`nctune.starter`) all read the pydantic models of
:mod:`nctune.config` through this module, so they cannot drift from the code or from
each other.
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nctune.config import Recipe


@dataclass(frozen=True)
class FieldRow:
    """One recipe field.

    Attributes:
        section: the section (``'data'``, ``'train'``, …), or ``''`` at the top level.
        name: the field's name; ``key`` is the dotted path ``--set`` takes.
        type: a short rendering of its type (``integer or null``, ``\\`adamw\\` | \\`sgd\\```).
        default: its default, as Markdown code (``\\`64\\```, ``null``).
        description: the help text, with the bounds pydantic enforces (``(≥ 1)``).
    """

    section: str
    name: str
    type: str
    default: str
    description: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def type_name(annotation: Any) -> str:
    """A short, readable rendering of a field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        # Literal[...] | str (the device field): any string, the literals are examples
        if str in parts:
            parts = [str]
        out = " or ".join(type_name(a) for a in parts)
        return out + (" or null" if type(None) in args else "")
    if origin in (list, tuple, set):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " | ".join(f"`{m.value}`" for m in annotation)
        if issubclass(annotation, Path):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def default_text(field: Any) -> str:
    """The field's default as Markdown code (``null`` for None)."""
    if field.default_factory is not None:
        value = field.default_factory()
        return "`{}`" if value == {} else ("`[]`" if value == [] else f"`{value!r}`")
    value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def constraints(field: Any) -> str:
    """``ge``/``gt``/``le``/``lt`` bounds pydantic enforces, as a short suffix."""
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    found = []
    for meta in field.metadata:
        for attr, sign in marks.items():
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return f" ({', '.join(found)})" if found else ""


def sections() -> list[tuple[str, type[BaseModel] | None]]:
    """``(name, model)`` of each recipe section in declaration order; ``('', None)`` last
    stands for the top-level fields."""
    out: list[tuple[str, type[BaseModel] | None]] = []
    for name, field in Recipe.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.append((name, annotation))
    return [*out, ("", None)]


def field_rows(section: str | None = None) -> list[FieldRow]:
    """Every recipe field (or one section's, ``''`` for the top level), in declaration order.

    Args:
        section: a section name; None lists all sections, then the top level.

    Returns:
        One :class:`FieldRow` per field.
    """
    rows = []
    for name, model in sections():
        if section is not None and name != section:
            continue
        if model is None:  # the top level: the fields that are not sections
            items = [
                (n, f)
                for n, f in Recipe.model_fields.items()
                if n not in {s for s, m in sections() if m is not None}
            ]
        else:
            items = list(model.model_fields.items())
        for fname, field in items:
            rows.append(
                FieldRow(
                    name,
                    fname,
                    type_name(field.annotation),
                    default_text(field),
                    (field.description or "") + constraints(field),
                )
            )
    return rows
