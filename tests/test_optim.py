"""Learning-rate schedule, per-epoch sample order, weight-decay groups."""

from __future__ import annotations

import itertools
import math

import pytest

from nctune.config import TrainConfig, load_recipe
from nctune.finetune import prepare
from nctune.training.optim import EpochSampler, lr_at, make_optimizer, no_weight_decay_ids
from nctune.training.strategies import apply_strategy
from tests.test_train import TINY


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, schedule="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, 10, cfg, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # monotone decay
    assert lrs[-1] > 0.1 - 1e-9
    const = TrainConfig(lr=1.0, schedule="constant")
    assert lr_at(50, 100, 0, const, 0.5) == 0.5


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    a = list(EpochSampler(50, seed=3, epoch=2))
    assert a == list(EpochSampler(50, seed=3, epoch=2))
    assert a != list(EpochSampler(50, seed=3, epoch=1))
    assert sorted(a) == list(range(50))
    assert list(EpochSampler(50, seed=3, epoch=2, start=20)) == a[20:]


def test_tokens_and_position_embeddings_get_no_weight_decay():
    recipe = load_recipe(
        None, [*TINY, "backbone.name=timm:test_vit", "backbone.model_kwargs={img_size: 32}"]
    )
    backbone, splits, _, _ = prepare(recipe)
    applied = apply_strategy(backbone, "full", splits.num_classes)
    model = applied.model
    opt = make_optimizer(applied.parameters(), recipe.train, 1e-3, no_weight_decay_ids(model))
    decayed, kept = ({id(p) for p in g["params"]} for g in opt.param_groups)
    vit = model.backbone
    assert {id(vit.cls_token), id(vit.pos_embed)} <= kept
    assert id(vit.patch_embed.proj.weight) in decayed and id(model.head.weight) in decayed
    assert all(id(p) in kept for p in model.parameters() if p.ndim < 2)
    assert len(decayed) + len(kept) == len(applied.parameters())
