"""Layer selection: rules that turn a :class:`~nctune.profile.CollapseProfile` into blocks.

Every rule sees the tunable blocks shallow → deep and returns module paths in the form
PEFT's ``target_modules`` accepts. Rules are registered by name (timm-style registry),
so a recipe says ``strategy.rule: knee`` and a user can add their own with
:func:`register_rule`.

Why these rules (Li et al., arXiv 2212.12206): NC1 falls with depth, and fine-tuning
helps exactly where the pretrained blocks stop collapsing the downstream classes.

* ``last`` — the deepest block: the classic "unfreeze the top" baseline.
* ``knee`` — the block after which NC1 stops falling by more than ``threshold``
  (relative, block over block): the last block that still does collapsing work on this
  data. Deeper blocks add little, so this is where a tuned block has most to gain from
  the pretrained features up to it.
* ``min_nc1`` — the block whose features are already most collapsed.
* ``max_ncc`` — the block whose features give the best held-out nearest-class-centre
  accuracy: the most linearly usable representation, measured rather than assumed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nctune._registry import Registry
from nctune.errors import ConfigError

if TYPE_CHECKING:
    from nctune.profile import CollapseProfile, LayerCollapse

#: The rule used when a recipe names none, chosen from the evidence in docs/evidence.md: on
#: the offline default its pick lands 0.42 points (SCL-FT) below the best single block of
#: the layer sweep, needs no validation split, and picks a small block (3.5 % of the
#: parameters); max_ncc's pick was best in the sweep but moved with the noise of the
#: validation estimate, to a 14.5 % block 1.7 points worse in the strategy benchmark.
DEFAULT_RULE = "knee"


@dataclass(frozen=True)
class Selection:
    """Which blocks to tune, and why.

    Attributes:
        rule: the rule's registered name.
        layers: module paths, shallow → deep.
        reason: one sentence a report can print.
    """

    rule: str
    layers: list[str]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Rule = Callable[..., Selection]
#: Selection rules by name: ``fn(blocks, **params) -> Selection``.
RULES: Registry[Rule] = Registry("rule", field="strategy.rule")
#: Decorator: make ``fn(blocks, **params) -> Selection`` available as ``name``.
register_rule = RULES.register


def list_rules() -> list[str]:
    """Registered rule names, sorted."""
    return sorted(RULES)


@register_rule("last")
def _last(blocks: list[LayerCollapse]) -> Selection:
    b = blocks[-1]
    return Selection("last", [b.name], f"{b.name} is the deepest block")


def _undefined(rule: str, blocks: list[LayerCollapse]) -> Selection | None:
    """The deepest block when no block has a finite NC1 (class means coincide everywhere)."""
    if any(math.isfinite(b.nc1) for b in blocks):
        return None
    b = blocks[-1]
    return Selection(
        rule,
        [b.name],
        f"NC1 is undefined on every block (the class means coincide: do the images differ?); "
        f"using the deepest, {b.name}",
    )


@register_rule("knee")
def _knee(blocks: list[LayerCollapse], threshold: float = 0.1) -> Selection:
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"strategy.threshold: must be in [0, 1), got {threshold}")
    if undefined := _undefined("knee", blocks):
        return undefined
    # NaN/inf NC1 (coinciding class means) compare false: never a significant drop
    # NC1 is 0 when every class has one sample (or collapsed fully): nothing left to fall
    drops = [
        (prev.nc1 - cur.nc1) / prev.nc1 if prev.nc1 > 0 else 0.0
        for prev, cur in itertools.pairwise(blocks)
    ]
    significant = [i + 1 for i, d in enumerate(drops) if d > threshold]
    if not significant:
        b = blocks[-1]
        return Selection(
            "knee",
            [b.name],
            f"NC1 never falls by more than {threshold:.0%} per block; using the deepest, {b.name}",
        )
    b = blocks[significant[-1]]
    return Selection(
        "knee",
        [b.name],
        f"NC1 stops falling by more than {threshold:.0%} per block after {b.name} (NC1 {b.nc1:.3g})",
    )


@register_rule("min_nc1")
def _min_nc1(blocks: list[LayerCollapse]) -> Selection:
    if undefined := _undefined("min_nc1", blocks):
        return undefined
    b = min((b for b in blocks if not math.isnan(b.nc1)), key=lambda layer: layer.nc1)
    return Selection("min_nc1", [b.name], f"{b.name} has the lowest NC1 ({b.nc1:.3g})")


@register_rule("max_ncc")
def _max_ncc(blocks: list[LayerCollapse]) -> Selection:
    scored = [b for b in blocks if b.ncc_accuracy is not None]
    if not scored:
        raise ConfigError(
            "strategy.rule: max_ncc needs a validation split (set data.val_fraction > 0)"
        )
    # Ties go to the deeper block: the same accuracy with more pretrained computation.
    b = max(reversed(scored), key=lambda layer: layer.ncc_accuracy)
    return Selection(
        "max_ncc", [b.name], f"{b.name} has the best held-out NCC accuracy ({b.ncc_accuracy:.1%})"
    )


def resolve_rule(rule: str | None = None) -> str:
    """The rule :func:`select_layers` applies: ``rule``, else :data:`DEFAULT_RULE`."""
    return rule or DEFAULT_RULE


def select_layers(profile: CollapseProfile, rule: str | None = None, **params: Any) -> Selection:
    """Apply a registered selection rule to a profile.

    Args:
        profile: the layer-wise collapse of the backbone on the downstream data.
        rule: a name from :func:`list_rules`; default :data:`DEFAULT_RULE` (``knee``).
        **params: the rule's parameters (e.g. ``threshold`` for ``knee``).

    Returns:
        The selected block(s) and the reason.
    """
    name = resolve_rule(rule)
    fn = RULES.get(name)
    blocks = profile.blocks
    if not blocks:
        raise ConfigError("strategy.rule: the profile has no tunable blocks to choose from")
    try:
        return fn(blocks, **params)
    except TypeError as err:
        raise ConfigError(f"strategy.rule: bad parameters for rule {name!r}: {err}") from None


def rank_blocks(
    profile: CollapseProfile, rule: str | None = None, k: int = 3, **params: Any
) -> list[str]:
    """The rule's ``k`` best blocks, best first: the candidates of a collapse probe.

    The first is :func:`select_layers`' pick; each next one is the rule's pick among the
    blocks not taken yet — what the rule would choose if the earlier picks did not exist
    (``last``: the deepest blocks in turn; ``min_nc1``/``max_ncc``: by their score;
    ``knee``: the knee, then the knees of the profile without it: the deeper blocks first).

    Args:
        profile: the layer-wise collapse of the backbone on the downstream data.
        rule: a name from :func:`list_rules`; default :data:`DEFAULT_RULE`.
        k: how many blocks at most (fewer when the profile has fewer).
        **params: the rule's parameters.

    Returns:
        Up to ``k`` module paths, without duplicates, in the rule's order.

    Raises:
        ValueError: ``k < 1``.
        ConfigError: an unknown rule, bad parameters, or no tunable block.
    """
    if k < 1:
        raise ValueError(f"rank_blocks: k must be at least 1, got {k}")
    name = resolve_rule(rule)
    fn = RULES.get(name)
    remaining = list(profile.blocks)
    if not remaining:
        raise ConfigError("strategy.rule: the profile has no tunable blocks to choose from")
    ranked: list[str] = []
    while remaining and len(ranked) < k:
        try:
            picked = fn(remaining, **params).layers
        except TypeError as err:
            raise ConfigError(f"strategy.rule: bad parameters for rule {name!r}: {err}") from None
        ranked += [n for n in picked if n not in ranked]
        left = [b for b in remaining if b.name not in picked]
        if len(left) == len(remaining):  # a rule that names no block of its input: stop
            break
        remaining = left
    return ranked[:k]
