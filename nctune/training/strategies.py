"""Fine-tuning strategies: what trains, and the head on top.

``apply_strategy`` turns a :class:`~nctune.backbones.Backbone` into a :class:`TunedModel`
(backbone + a fresh classifier head) with exactly the parameters the strategy trains
left ``requires_grad``. It is a plain library call, so it drops into any training loop::

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
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nctune._registry import Registry
from nctune.errors import ConfigError, one_line
from nctune.selection import select_layers
from nctune.taps import pool

if TYPE_CHECKING:
    from nctune.backbones import Backbone
    from nctune.profile import CollapseProfile
    from nctune.selection import Selection


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
    """

    name: str
    freeze: Callable[[TunedModel, list[str] | None, dict[str, Any]], tuple[nn.Module, list[str]]]
    selects_layers: bool = False
    skip: bool = False
    reports_as: str | None = None


#: Strategies by name, in the order docs and tables list them.
STRATEGY_REGISTRY: Registry[Strategy] = Registry("strategy", field="strategy.name")


def register_strategy(
    name: str, *, selects_layers: bool = False, skip: bool = False, reports_as: str | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: register ``freeze(model, layers, options)`` as strategy ``name``."""

    def deco(fn: Callable) -> Callable:
        STRATEGY_REGISTRY.register(name)(Strategy(name, fn, selects_layers, skip, reports_as))
        return fn

    return deco


class TunedModel(nn.Module):
    """A backbone whose classifier is replaced by a fresh head, with an optional skip.

    ``forward(x)`` returns logits; ``forward(x, return_features=True)`` returns
    ``(logits, features)`` where ``features`` is exactly what the head sees: the
    penultimate (pre-logits) features, or for SCL the concatenation
    ``[pool(skip block output), penultimate]``.

    Attributes:
        backbone: the timm/torchvision model, its classifier set to ``nn.Identity``.
        head: ``nn.Linear(in_features, num_classes)``.
        head_drop: ``nn.Dropout(head_dropout)`` before the head.
        skip_block: module path (inside ``backbone``) feeding the skip connection, or None.
        in_features: the head's input width: the penultimate width, plus the skip
            block's pooled width for SCL.
        num_classes: K, the head's output count.
        config: JSON-ready description :func:`nctune.runs.artifacts.load_finetuned` rebuilds from.
        input_config: the backbone's :class:`~nctune.backbones.InputConfig`.

    Args:
        backbone: the pretrained backbone; its model is reused (not copied) and loses its
            classifier.
        num_classes: K.
        skip_block: a block of ``backbone`` whose pooled output also feeds the head (SCL).
        token_pool: ``'cls'`` or ``'mean'``: how the skip block's token maps are pooled.
        head_dropout: dropout probability before the head.

    Raises:
        ConfigError: ``skip_block`` is not one of the backbone's blocks.
        BackboneError: the backbone's blocks cannot be measured, or its metadata cannot
            be recorded.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        skip_block: str | None = None,
        token_pool: str = "cls",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_features = backbone.num_features  # read before the classifier is removed
        #: JSON-ready description that :func:`nctune.runs.artifacts.load_finetuned` rebuilds from.
        self.config = {
            "backbone": backbone.metadata(),
            "backbone_spec": backbone.spec,
            "classifier_name": backbone.classifier_name,
            "num_classes": num_classes,
            "skip_block": skip_block,
            "token_pool": token_pool,
            "head_dropout": head_dropout,
            "input_config": dataclasses.asdict(backbone.input_config),
        }
        self.input_config = backbone.input_config
        self.backbone = backbone.model
        self.backbone.set_submodule(backbone.classifier_name, nn.Identity())
        self.skip_block = skip_block
        self.num_classes = num_classes
        self._token_pool = token_pool
        self._prefix_tokens = backbone.num_prefix_tokens
        self._skip_feats: torch.Tensor | None = None
        skip_dim = 0
        if skip_block is not None:
            info = {b.name: b for b in backbone.blocks()}
            if skip_block not in info:
                raise ConfigError(
                    f"strategy.layers: {skip_block!r} is not a block of {backbone.spec}"
                )
            skip_dim = info[skip_block].dim
            self._skip_layout = info[skip_block].layout
            self.backbone.get_submodule(skip_block).register_forward_hook(self._capture)
        self.in_features = num_features + skip_dim
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.in_features, num_classes)

    def set_input_config(self, input_config: Any) -> None:
        """Record the input config the model is trained and evaluated with.

        The backbone's default size is not always the one used (``data.image_size``
        overrides it); what is recorded here is saved with the weights, so a reloaded
        model preprocesses new images exactly as its validation and test images were.

        Args:
            input_config: a :class:`~nctune.backbones.InputConfig`.
        """
        self.input_config = input_config
        self.config["input_config"] = dataclasses.asdict(input_config)

    def _capture(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._skip_feats = pool(output, self._skip_layout, self._token_pool, self._prefix_tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head sees, ``(B, in_features)``.

        Args:
            x: an image batch.

        Returns:
            The penultimate features, or for SCL ``[pool(skip block output),
            penultimate]`` concatenated along the feature axis.
        """
        feats = self.backbone(x).flatten(1)  # 1x1-conv heads leave (B, C, 1, 1)
        if self.skip_block is not None:
            skip, self._skip_feats = self._skip_feats, None
            feats = torch.cat([skip.to(feats.dtype), feats], dim=1)
        return feats

    def train(self, mode: bool = True) -> TunedModel:
        """Train mode, except frozen BatchNorm layers stay in eval mode.

        A frozen BatchNorm in train mode would still normalise with batch statistics and
        update its running averages: the "frozen" features would drift with the batch
        composition (harmful with small downstream batches) and a cached prefix would no
        longer be a fixed function of the image. A BatchNorm without affine parameters
        stays in eval mode when no backbone parameter trains.

        Args:
            mode: True for training mode, False for eval mode (as ``nn.Module.train``).

        Returns:
            ``self``.
        """
        super().train(mode)
        if mode:
            nothing_trains = not any(p.requires_grad for p in self.backbone.parameters())
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    own = list(m.parameters(recurse=False))
                    if (own and not any(p.requires_grad for p in own)) or (
                        not own and nothing_trains
                    ):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits for an image batch: ``head(dropout(features(x)))``.

        Args:
            x: an image batch ``(B, C, T, T)``.
            return_features: also return what the head sees.

        Returns:
            ``logits`` ``(B, num_classes)``, or ``(logits, features)`` with
            ``return_features`` (features ``(B, in_features)``).
        """
        feats = self.features(x)
        logits = self.head(self.head_drop(feats))
        return (logits, feats) if return_features else logits


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
        phase="probe" if strategy == "lp-ft" else "main",
        _lora=trained is not model,
    )
    if strategy == "lp-ft":  # report the larger, full phase
        applied.trainable_params = applied.total_params
    return applied


@register_strategy("linear")
def _linear(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    _freeze_all_but(model, [])
    return model, []


@register_strategy("full")
def _full(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    return model, ["*"]


@register_strategy("layers", selects_layers=True)
def _layers(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    _freeze_all_but(model, layers)
    return model, list(layers)


register_strategy("scl", selects_layers=True, skip=True)(_layers)


@register_strategy("lora")
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


@register_strategy("lp-ft")
def _lp_ft(
    model: TunedModel, layers: list[str] | None, options: dict
) -> tuple[nn.Module, list[str]]:
    _freeze_all_but(model, [])  # the probe phase; start_full_phase unfreezes the rest
    return model, ["*"]


register_strategy("auto", selects_layers=True, skip=True, reports_as="scl")(_layers)

#: Registered strategy names, in registration order.
STRATEGIES = tuple(STRATEGY_REGISTRY.names())
