"""The training kit's recipe fields: augmentation policies, random erasing, mixup/cutmix,
gradient accumulation, EMA, layer-wise lr decay, class weighting and balanced sampling.

Each is a field definition (help text, bounds, validator) that
:mod:`nctune.recipe_sections` places in its ``data`` or ``train`` section with one line;
every default leaves training exactly as it was. Light on purpose (pydantic only): a
recipe is validated before torch or timm are imported.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

#: Spellings of on/off a YAML value or ``--set`` may carry as a string.
_ON, _OFF = {"true", "on", "yes"}, {"false", "off", "no", "none", ""}

#: timm's augmentation policy strings (timm.data.create_transform's ``auto_augment``):
#: RandAugment ``rand-m9-mstd0.5``, AugMix ``augmix-m5-w4-d2``, AutoAugment ``original``,
#: ``originalr``, ``v0``, ``v0r``, ``3a`` (each with ``-key value`` options), and
#: torchvision's TrivialAugmentWide as ``trivialaugment``.
_POLICY = re.compile(r"^(rand|augmix|original|originalr|v0|v0r|3a)(-[a-z]+[0-9.]*)*$")


def _augment(v: Any) -> Any:
    """``data.augment``: a boolean (today's light crop + flip) or a timm policy string."""
    if isinstance(v, str):
        text = v.strip().lower()
        if text in _ON | _OFF:
            return text in _ON
        if text == "trivialaugment" or _POLICY.match(text):
            return text
        raise ValueError(
            f"{v!r} is no augmentation: use true/false, a timm policy such as "
            "'rand-m9-mstd0.5', 'augmix-m5-w4-d2' or 'original', or 'trivialaugment'"
        )
    return v


Augment = Annotated[bool | str, BeforeValidator(_augment)]

AUGMENT = Field(
    False,
    description=(
        "Random augmentation of the training split: false (off; lets frozen prefixes be "
        "cached), true (random resized crop + horizontal flip), or a timm policy applied "
        "after them: 'rand-m9-mstd0.5' (RandAugment), 'augmix-m5-w4-d2' (AugMix), "
        "'original' (AutoAugment), 'trivialaugment' (TrivialAugmentWide)."
    ),
)
RANDOM_ERASE = Field(
    0.0,
    ge=0.0,
    le=1.0,
    description="Probability that a training image gets a random rectangle of noise (timm RandomErasing, per-pixel mode; 0: off). Turns the prefix cache off.",
)
BALANCED_SAMPLER = Field(
    False,
    description="Draw training samples with weights 1/(class size), with replacement, so each class is drawn about equally often (WeightedRandomSampler; seeded per epoch; under torchrun every process draws the same global batches).",
)

ACCUMULATE_STEPS = Field(
    1,
    ge=1,
    description="Gradient accumulation: the optimizer steps every k batches (effective batch k × data.batch_size); warm-up and schedule count optimizer steps.",
)
EMA = Field(
    False,
    description="Keep an exponential moving average of the weights (timm ModelEmaV3); validation, the kept epoch, the test accuracy and the saved model use the averaged weights.",
)
EMA_DECAY = Field(
    0.999,
    gt=0.0,
    lt=1.0,
    description="train.ema: θ_ema ← decay·θ_ema + (1 − decay)·θ after every optimizer step.",
)
LAYER_DECAY = Field(
    None,
    gt=0.0,
    le=1.0,
    description="Layer-wise lr decay: block i of L trains at lr·decay^(L+1−i), the stem at lr·decay^(L+1), the head at lr (timm's param_groups_layer_decay over the backbone's block order; null: off).",
)
CLASS_WEIGHTS = Field(
    None,
    description="auto: weight the cross-entropy by inverse class frequency of the training split, w_k = N/(K·n_k); null: unweighted.",
)
MIXUP = Field(
    0.0,
    ge=0.0,
    description="Mixup alpha (timm Mixup; 0: off): soft-target cross-entropy with train.label_smoothing folded into the targets. Turns the prefix cache off.",
)
CUTMIX = Field(
    0.0,
    ge=0.0,
    description="CutMix alpha (timm Mixup; 0: off); with mixup too, each batch uses one of the two. Turns the prefix cache off.",
)
AMP = Field(
    True,
    description="Mixed precision: true = autocast (+ gradient scaling for float16) on CUDA, nothing on CPU; 'bf16' = bfloat16 autocast of the training forward on CPU and CUDA (no scaling); false: float32.",
)


def _amp(v: Any) -> Any:
    """``train.amp``: a boolean or ``'bf16'``."""
    if not isinstance(v, str):
        return v
    text = v.strip().lower()
    if text in _ON | _OFF:
        return text in _ON
    if text != "bf16":
        raise ValueError(f"{v!r} is no precision: use true (CUDA mixed), 'bf16' or false")
    return text


Amp = Annotated[bool | Literal["bf16"], BeforeValidator(_amp)]
ClassWeights = Literal["auto"] | None
