"""Recipes: typed, validated run configuration loaded from YAML.

A recipe is a YAML mapping whose sections mirror the data flow (backbone → data →
analysis → …). Every field carries help text and is validated when the recipe is
built (PEFT-style configs); unknown keys are rejected with their path. Overrides use
dotted paths, ``--set data.batch_size=32``, their values parsed as YAML scalars.

The sections themselves live in :mod:`nctune.recipe_sections` (and ``search`` in
:mod:`nctune.search_config`); this module assembles them into :class:`Recipe`, loads it,
applies overrides and turns validation errors into one line. Every section class stays
importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from nctune._section import MAX_SEED, Section, closest_key
from nctune.errors import ConfigError
from nctune.recipe_sections import (
    AnalysisConfig,
    BackboneConfig,
    DataConfig,
    RankConfig,
    StrategyConfig,
    TrainConfig,
)
from nctune.search_config import SearchConfig, set_root

__all__ = [
    "AnalysisConfig",
    "BackboneConfig",
    "DataConfig",
    "RankConfig",
    "Recipe",
    "Section",
    "StrategyConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
]


class Recipe(Section):
    """A whole nctune run: every section, plus the seed and the device."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    search: SearchConfig = Field(
        default_factory=SearchConfig, description="What `nctune tune` searches, and how."
    )
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed for splits, sampling, initialisation and order (0 to 2**32 - 1).",
    )
    device: str = Field(
        "auto", description="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op CPU threads (torch.set_num_threads; null: torch's default, one per core). Same as --threads. DataLoader worker processes are data.num_workers.",
    )

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (paths as strings), loadable by :func:`load_recipe`.

        Returns:
            Every field, defaults included, in declaration order.
        """
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


set_root(Recipe)  # search.space paths are checked against the whole recipe


# --------------------------------------------------------------------- loading
def _format_error(
    err: ValidationError, source: str, overridden: frozenset[str] = frozenset()
) -> str:
    """One line: ``source: field.path: message`` (+ how many more).

    ``source`` is the recipe file, or ``--set`` when the field came from an override.
    """
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    # the field itself, one inside it, or a section --set created (seed.x=1 makes seed a dict)
    if any(
        loc == key or loc.startswith(f"{key}.") or key.startswith(f"{loc}.") for key in overridden
    ):
        source = "--set"
    msg = first["msg"].split(" or instance of ")[0]  # no class names from the code
    if first["type"] == "extra_forbidden":
        close = closest_key(Recipe, first["loc"])
        msg = (
            f"unknown key; did you mean {close}? (see docs/recipes.md for the fields)"
            if close
            else "unknown key (check the spelling; see docs/recipes.md for the fields)"
        )
    elif first["type"] == "value_error":  # our validators' messages already name the value
        msg = msg.removeprefix("Value error, ")
    elif "input" in first and first["type"] not in ("missing",):
        shown = repr(first["input"])
        msg = f"{msg} (got {shown[:60]})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split one ``--set`` override: ``'data.batch_size=32'`` → ``(['data', 'batch_size'], 32)``.

    The value parses as YAML (``true``, ``1e-3``, ``null``, ``[a, b]``); text
    that is not valid YAML stays a string, and an empty value is ``''``.

    Args:
        text: ``key.path=value``.

    Returns:
        The dotted key split into its parts, and the parsed value.

    Raises:
        ConfigError: no ``=``, an empty key, or an empty part in the key path.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. data.batch_size=32")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key.path=value`` in a nested dict (unknown keys fail at validation).

    Overrides apply in order, so a later one wins; missing sections are created.

    Args:
        data: the recipe as a plain nested dict; modified in place.
        overrides: ``key.path=value`` strings (see :func:`parse_override`).

    Returns:
        ``data``, with the overrides applied.

    Raises:
        ConfigError: a malformed override, or one whose path runs through a value that is
            not a section.
    """
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def recipe_from_dict(
    data: dict[str, Any], source: str = "recipe", overridden: frozenset[str] = frozenset()
) -> Recipe:
    """Validate a plain dict into a :class:`Recipe` (errors become one-line ConfigError).

    Args:
        data: the recipe as a plain nested dict.
        source: what error messages name as the origin (usually the recipe file).
        overridden: dotted keys set by ``--set``, so their errors name ``--set``, not the
            file.

    Returns:
        The validated :class:`Recipe`.

    Raises:
        ConfigError: an unknown key or invalid value; one line ``source: field.path:
            message``, with a count of any further errors.
    """
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source, overridden)) from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe, apply ``key.path=value`` overrides and validate it.

    Args:
        path: recipe file; ``None`` starts from the defaults (Lite0 on Fashion-MNIST).
        overrides: dotted overrides, applied in order after the file.

    Returns:
        The validated :class:`Recipe`.

    Raises:
        ConfigError: unreadable file, malformed YAML, a top level that is not a mapping, a
            malformed override, unknown key or invalid value — the message is one line
            naming the file (or ``--set``) and the field.
    """
    data: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: recipe file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder; pass the recipe YAML file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read recipe ({err.__class__.__name__})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping of sections")
        data = loaded
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    overridden = frozenset(".".join(parse_override(o)[0]) for o in overrides)
    return recipe_from_dict(data, source, overridden)
