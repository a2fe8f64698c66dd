"""Fine-tuning strategies: what trains, and the head on top.

``apply_strategy`` turns a :class:`~nctune.backbones.Backbone` into a
:class:`~nctune.training.heads.TunedModel` (backbone + a fresh classifier head) with exactly
the parameters the strategy trains left ``requires_grad``. It is a plain library call, so
it drops into any training loop::

    applied = apply_strategy(backbone, "scl", num_classes=10, layers=["layer3.1"])
    optimizer = torch.optim.AdamW(applied.parameters(), lr=1e-3)
    for x, y in loader:
        loss = F.cross_entropy(applied.model(x), y)
        ...

Strategies (Li et al., arXiv 2212.12206 for ``scl``):

=========  ====================================================================
``linear`` the head only (linear probe on frozen features)
``full``   every parameter
``layers`` the named blocks + the head
``scl``    one block + a head fed by [pooled block output, penultimate features]
           (skip-connection layer fine-tuning); everything else frozen
``lora``   PEFT LoRA adapters on the chosen modules, plus the head
``lp-ft``  linear probe first, then everything at a lower rate (Kumar et al. 2022)
``auto``   the NC profile picks the block (``strategy.rule``), then ``scl``
=========  ====================================================================

The registry is the one place that knows a strategy by name: everywhere else asks an
entry's flags (``selects_layers``, ``skip``, ``probe_first``, ``adapters``, …), and the
recipe's checks, ``--help`` and docs/recipes.md list the names and their ``help`` lines
from it (:func:`strategies_help`). Importing this module loads no torch (the CLI's help
reads it); the model is built by :mod:`nctune.training.heads` when a strategy is applied.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nctune._registry import Registry
from nctune.errors import ConfigError, one_line
from nctune.selection import select_layers

if TYPE_CHECKING:
    from torch import nn

    from nctune.backbones import Backbone
    from nctune.profile import CollapseProfile
    from nctune.selection import Selection
    from nctune.training.heads import TunedModel


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: which blocks it needs and what it leaves trainable.

    Attributes:
        name: the ``strategy.name`` it answers to.
        freeze: ``freeze(model, layers, options) -> (model, tuned)``: sets
            ``requires_grad`` on the fresh :class:`TunedModel` (or wraps it, as LoRA does)
            and returns the model to train and the tuned layer names for the report.
        selects_layers: needs blocks, given by ``layers`` or chosen by a rule from a profile.
        skip: tunes exactly one block and feeds it to the head (SCL).
        reports_as: the name written to reports (``auto`` runs ``scl``).
        probe_first: trains the head alone first, then everything (lp-ft's two phases).
        adapters: trains PEFT adapters on modules chosen by ``strategy.lora_targets``.
        head_only: trains the head alone (nothing in the backbone: the cache is the
            pre-logits features the profile pass already computes).
        probes: chooses its block by a short collapse probe of the rule's best candidates
            (``strategy.probe_blocks``; :mod:`nctune.training.probe`) when none is named.
        help: one line on what trains, for ``--help``, the recipe field's description
            and docs/recipes.md.
    """

    name: str
    freeze: Callable[[TunedModel, list[str] | None, dict[str, Any]], tuple[nn.Module, list[str]]]
    selects_layers: bool = False
    skip: bool = False
    reports_as: str | None = None
    probe_first: bool = False
    adapters: bool = False
    probes: bool = False
    head_only: bool = False
    help: str = ""


#: Strategies by name, in the order docs and tables list them.
STRATEGY_REGISTRY: Registry[Strategy] = Registry("strategy", field="strategy.name")


def register_strategy(
    name: str,
    *,
    selects_layers: bool = False,
    skip: bool = False,
    reports_as: str | None = None,
    help: str = "",
    **flags: bool,
) -> Callable[[Callable], Callable]:
    """Decorator: register ``freeze(model, layers, options)`` as strategy ``name`` (``flags``:
    :class:`Strategy`'s other flags, e.g. ``probe_first=True``)."""

    def deco(fn: Callable) -> Callable:
        strategy = Strategy(name, fn, selects_layers, skip, reports_as, help=help, **flags)
        STRATEGY_REGISTRY.register(name)(strategy)
        return fn

    return deco


@dataclass
class AppliedStrategy:
    """The outcome of :func:`apply_strategy`.

    Attributes:
        model: the model to train (a :class:`TunedModel`, or a PEFT model wrapping one).
        strategy: the strategy name as resolved (``auto`` is reported as ``scl``).
        tuned_layers: backbone module paths that train besides the head (for ``lora``,
            the ones adapted); ``["*"]`` means all of them, ``[]`` none.
        selection: the NC-guided selection, when a rule picked the layers.
        trainable_params: parameters with ``requires_grad`` (the largest phase for lp-ft).
        total_params: all parameters of ``model``.
        phase: ``'main'``, or for lp-ft ``'probe'`` then ``'full'``.
    """

    model: nn.Module
    strategy: str
    tuned_layers: list[str]
    selection: Selection | None = None
    trainable_params: int = 0
    total_params: int = 0
    phase: str = "main"
    _lora: bool = field(default=False, repr=False)

    def parameters(self):
        """The trainable parameters (hand these to the optimizer).

        Returns:
            The parameters of ``model`` with ``requires_grad``, in module order.
        """
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def tuned(self) -> TunedModel:
        """The :class:`TunedModel` (unwrapped from PEFT when LoRA is used)."""
        m = self.model
        return m.get_base_model() if self._lora else m

    def start_full_phase(self) -> None:
        """lp-ft: after the probe, unfreeze every parameter.

        Sets ``phase`` to ``'full'`` and recounts ``trainable_params``.
        """
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.phase = "full"
        self.trainable_params = count_params(self.model, trainable=True)

    def export(self) -> TunedModel:
        """A plain :class:`TunedModel` for saving/inference (LoRA merged into the weights).

        Returns:
            ``model`` itself, or for LoRA the base model with the adapters merged in
            (PEFT's ``merge_and_unload``, which modifies the wrapped model).
        """
        if self._lora:
            return self.model.merge_and_unload()
        return self.model


def count_params(model: nn.Module, trainable: bool = False) -> int:
    """Number of (trainable) parameters.

    Args:
        model: any module.
        trainable: count only parameters with ``requires_grad``.

    Returns:
        The number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def _freeze_all_but(model: TunedModel, layers: list[str]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for name in layers:
        for p in model.backbone.get_submodule(name).parameters():
            p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)


def _adaptable(mod: nn.Module) -> bool:
    """LoRA (PEFT) can wrap it at any rank: an ``nn.Linear`` or an ungrouped ``nn.Conv2d``."""
    from torch import nn

    return isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1)


def lora_targets(
    backbone: nn.Module, layers: list[str] | None, explicit: list[str] | None
) -> list[str]:
    """Module paths (inside ``backbone``) LoRA will wrap.

    Default: every ``nn.Linear`` and ungrouped ``nn.Conv2d`` inside ``layers`` (or the
    whole backbone). Depthwise/grouped convolutions are skipped by default because PEFT
    needs the rank to be divisible by the groups; naming one explicitly is an error.

    Args:
        backbone: the backbone ``nn.Module``.
        layers: block paths that bound the default search (None: the whole backbone).
        explicit: module paths or ``fnmatch`` globs (``strategy.lora_targets``); a glob
            keeps only the adaptable layers it reaches, an exact path must be one.

    Returns:
        Module paths inside ``backbone``, without duplicates: in pattern order for
        ``explicit``, else in module order.

    Raises:
        ConfigError: a pattern matches no (adaptable) module, names a module that is not
            ``nn.Linear``/``nn.Conv2d`` or is a grouped convolution, or nothing is left
            to adapt.
    """
    from torch import nn

    named = dict(backbone.named_modules())
    if explicit:
        out = []
        for pattern in explicit:
            hits = [n for n in named if n and (n == pattern or fnmatch.fnmatchcase(n, pattern))]
            if not hits:
                raise ConfigError(
                    f"strategy.lora_targets: {pattern!r} matches no module of the backbone"
                )
            if any(c in pattern for c in "*?["):
                # a glob ('blocks.3.*') means the adaptable layers it reaches; only a module
                # named exactly must itself be one
                hits = [n for n in hits if _adaptable(named[n])]
                if not hits:
                    raise ConfigError(
                        f"strategy.lora_targets: {pattern!r} matches no nn.Linear or ungrouped nn.Conv2d layer"
                    )
            for n in hits:
                mod = named[n]
                if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                    raise ConfigError(
                        f"strategy.lora_targets: {n} is a {type(mod).__name__}; LoRA wraps nn.Linear and nn.Conv2d layers (name leaf layers, e.g. '{n}.*')"
                    )
                if isinstance(mod, nn.Conv2d) and mod.groups > 1:
                    raise ConfigError(
                        f"strategy.lora_targets: {n} is a grouped/depthwise convolution (groups={mod.groups}); PEFT LoRA cannot wrap it at this rank — leave it out"
                    )
                out.append(n)
    else:
        roots = layers or [""]
        out = [
            n
            for n, mod in named.items()
            if any(n == r or n.startswith(r + ".") or r == "" for r in roots) and _adaptable(mod)
        ]
    if not out:
        raise ConfigError(
            "strategy.lora_targets: no nn.Linear or ungrouped nn.Conv2d layer to adapt in the chosen layers"
        )
    return list(dict.fromkeys(out))


def apply_strategy(
    backbone: Backbone,
    strategy: str,
    num_classes: int,
    *,
    layers: list[str] | None = None,
    profile: CollapseProfile | None = None,
    rule: str | None = None,
    rule_params: dict[str, Any] | None = None,
    token_pool: str = "cls",
    head_dropout: float = 0.0,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target_patterns: list[str] | None = None,
) -> AppliedStrategy:
    """Build the model a strategy trains, with everything else frozen.

    Args:
        backbone: the pretrained backbone (its model is reused, not copied).
        strategy: a registered name (:data:`STRATEGIES`).
        num_classes: K of the downstream task (size of the fresh head).
        layers: blocks to tune (module paths or globs). ``scl`` takes exactly one. When
            omitted for ``layers``/``scl``/``auto``, ``rule`` picks them from ``profile``.
        profile: the backbone's collapse profile on the downstream data (for rules).
        rule: selection rule name (default :data:`nctune.selection.DEFAULT_RULE`).
        rule_params: the rule's parameters (e.g. ``{"threshold": 0.1}``).
        token_pool: pooling of token maps for the SCL skip.
        head_dropout: dropout before the head.
        lora_rank, lora_alpha, lora_dropout: LoRA hyper-parameters.
        lora_target_patterns: module paths/globs for LoRA (default: every Linear and ungrouped
            Conv2d in ``layers``, or in the whole backbone).

    Returns:
        An :class:`AppliedStrategy` whose ``model`` is ready to train.

    Raises:
        ConfigError: an unknown strategy, no ``layers`` and no ``profile`` for
            ``layers``/``scl``/``auto``, other than one block for ``scl``/``auto``, an
            unknown rule or bad rule parameters, or LoRA targets PEFT cannot wrap.
        BackboneError: a ``layers`` entry matches no module of the backbone.
    """
    spec = STRATEGY_REGISTRY.get(strategy)
    selection = None
    names = backbone.resolve_layers(layers, field="strategy.layers") if layers else None
    if spec.selects_layers and names is None:
        if profile is None:
            raise ConfigError(
                f"strategy.layers: strategy {strategy!r} needs layers, or a collapse profile to select them from"
            )
        selection = select_layers(profile, rule, **(rule_params or {}))
        names = selection.layers
    if spec.skip and len(names) != 1:
        raise ConfigError(
            f"strategy.layers: scl tunes exactly one block, got {len(names)}: {', '.join(names)}"
        )

    from nctune.training.heads import TunedModel  # torch, loaded when a model is built

    model = TunedModel(
        backbone,
        num_classes,
        skip_block=names[0] if spec.skip else None,
        token_pool=token_pool,
        head_dropout=head_dropout,
    )
    options = {
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "lora_target_patterns": lora_target_patterns,
    }
    trained, tuned = spec.freeze(model, names, options)
    applied = AppliedStrategy(
        model=trained,
        strategy=spec.reports_as or strategy,
        tuned_layers=tuned,
        selection=selection,
        trainable_params=count_params(trained, trainable=True),
        total_params=count_params(trained),
        phase="probe" if spec.probe_first else "main",
        _lora=trained is not model,
    )
    if spec.probe_first:  # report the larger, full phase
        applied.trainable_params = applied.total_params
    return applied


@register_strategy(
    "linear", head_only=True, help="the head only, a linear probe on frozen features"
)
def _linear(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    _freeze_all_but(model, [])
    return model, []


@register_strategy("full", help="everything")
def _full(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    return model, ["*"]


@register_strategy("layers", selects_layers=True, help="the named blocks + the head")
def _layers(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    _freeze_all_but(model, layers)
    return model, list(layers)


register_strategy(
    "scl",
    selects_layers=True,
    skip=True,
    help="one block + a head fed by that block and the penultimate features",
)(_layers)


@register_strategy("lora", adapters=True, help="PEFT LoRA adapters + the head")
def _lora_adapters(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    # peft imports transformers and accelerate (seconds), and is an optional extra: only
    # LoRA runs pay for it
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(
            "strategy.name: lora needs the peft package: pip install 'nctune[lora]'"
        ) from None

    targets = [
        f"backbone.{n}"
        for n in lora_targets(model.backbone, layers, options["lora_target_patterns"])
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    # The head trains as a plain module, not through PEFT's modules_to_save: that
    # matches by name suffix, so "head" would also wrap (and unfreeze) the backbone's
    # own "head" (timm ConvNeXt's norm + pooling, ViT's emptied classifier slot).
    config = LoraConfig(
        r=options["lora_rank"],
        lora_alpha=options["lora_alpha"],
        lora_dropout=options["lora_dropout"],
        target_modules=targets,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(
            f"strategy.lora_targets: PEFT refused the targets: {one_line(str(err))}"
        ) from None
    peft_model.get_base_model().head.requires_grad_(True)
    return peft_model, layers or ["*"]


@register_strategy("lp-ft", probe_first=True, help="probe, then full at a lower rate")
def _lp_ft(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    _freeze_all_but(model, [])  # the probe phase; start_full_phase unfreezes the rest
    return model, ["*"]


register_strategy(
    "auto",
    selects_layers=True,
    skip=True,
    reports_as="scl",
    probes=True,
    help="NC-guided block choice (the rule's best blocks, probed briefly), then scl",
)(_layers)

#: Registered strategy names, in registration order.
STRATEGIES = tuple(STRATEGY_REGISTRY.names())


def strategies_help(sep: str = ", ") -> str:
    """Every registered strategy with its help line: ``'linear (the head only …), full
    (everything), …'`` — the text of ``strategy.name``'s description and the CLI's help.

    Args:
        sep: what joins the entries.
    """
    return sep.join(f"{s.name} ({s.help})" for s in map(STRATEGY_REGISTRY.get, STRATEGIES))


def __getattr__(name: str) -> Any:
    # TunedModel lived here before it had its own module; it loads torch, so on first use
    if name == "TunedModel":
        from nctune.training.heads import TunedModel

        return TunedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
