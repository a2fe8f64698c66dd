"""The search space: recipe paths → distributions, profile-ranked blocks, trial recipes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import optuna

from nctune.config import Recipe, recipe_from_dict
from nctune.search_config import _wants_list
from nctune.selection import select_layers

_PRIMITIVE = (type(None), bool, int, float, str)


def rank_blocks(profile, strategy, k: int) -> list[str]:
    """The ``k`` blocks the recipe's selection rule ranks best, best first.

    The rule picks a block from the profile's blocks; the pick is removed and the rule
    applied again to the rest, ``k`` times: ``last`` yields the deepest blocks,
    ``min_nc1`` the most collapsed, ``knee`` successive knees of the NC1 curve.

    Args:
        profile: the backbone's :class:`~nctune.profile.CollapseProfile` on the data.
        strategy: the recipe's ``strategy`` section (``rule``, ``threshold``).
        k: how many blocks (fewer when the profile has fewer).

    Returns:
        Block module paths, in the order the rule ranks them.
    """
    rule, params = strategy.selection_rule()
    left = list(profile.blocks)
    ranked: list[str] = []
    while left and len(ranked) < k:
        view = type(profile)(left, profile.num_samples, profile.num_classes, 0.0)
        pick = select_layers(view, rule, **params).layers[0]
        ranked.append(pick)
        left = [b for b in left if b.name != pick]
    return ranked


def _encode(value: Any) -> Any:
    return value if isinstance(value, _PRIMITIVE) else json.dumps(value)


def resolved_space(recipe: Recipe, profile_of: Callable[[Recipe], Any]) -> dict[str, dict]:
    """Dotted path → ``{'kind', 'low', 'high', 'log', 'step', 'choices'}`` for the sampler."""
    out: dict[str, dict] = {}
    for path, d in recipe.search.space.items():
        if d.kind == "blocks_from_profile":
            blocks = rank_blocks(profile_of(recipe), recipe.strategy, d.blocks_from_profile)
            out[path] = {"kind": "choice", "choices": blocks}
        elif d.kind == "choice":
            out[path] = {"kind": "choice", "choices": list(d.choice)}
        else:
            lo, hi = d.float_ or d.int_
            out[path] = {"kind": d.kind, "low": lo, "high": hi, "log": d.log, "step": d.step}
    return out


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """The trial's value for every searched path (decoded: lists come back as lists)."""
    values = {}
    for path, d in space.items():
        if d["kind"] == "float":
            values[path] = trial.suggest_float(
                path, d["low"], d["high"], log=d["log"], step=d["step"]
            )
        elif d["kind"] == "int":
            step = int(d["step"]) if d["step"] else 1
            values[path] = trial.suggest_int(path, d["low"], d["high"], log=d["log"], step=step)
        else:
            encoded = [_encode(c) for c in d["choices"]]
            got = trial.suggest_categorical(path, encoded)
            values[path] = d["choices"][encoded.index(got)]
    return values


def trial_recipe(recipe: Recipe, values: dict[str, Any], source: str = "trial") -> Recipe:
    """``recipe`` with each dotted path set to its value (a string for a list field, such as
    ``strategy.layers``, becomes a one-item list), validated.

    Raises:
        ConfigError: the combination is not a valid recipe (named by ``source``).
    """
    data = recipe.model_dump(mode="json")
    for path, value in values.items():
        *sections, leaf = path.split(".")
        node = data
        for part in sections:
            node = node[part]
        model: Any = Recipe
        for part in sections:
            model = model.model_fields[part].annotation
        wants_list = _wants_list(model.model_fields[leaf].annotation)
        node[leaf] = [value] if wants_list and isinstance(value, str) else value
    return recipe_from_dict(data, source)


def grid(space: dict[str, dict]) -> dict[str, list]:
    """Every value the grid sampler visits, per path (float ranges need a step)."""
    grid = {}
    for path, d in space.items():
        if d["kind"] == "choice":
            grid[path] = [_encode(c) for c in d["choices"]]
        elif d["kind"] == "int":
            grid[path] = list(range(d["low"], d["high"] + 1, int(d["step"] or 1)))
        else:
            n = math.floor((d["high"] - d["low"]) / d["step"] + 1e-9)
            grid[path] = [d["low"] + i * d["step"] for i in range(n + 1)]
    return grid
