"""The library half of ``nctune finetune``: recipe → profile → selection → strategy → RunResult."""

from __future__ import annotations

import pytest
import torch

from nctune.config import load_recipe
from nctune.errors import BackboneError
from nctune.finetune import finetune, prepare
from nctune.training.train import evaluate
from tests.test_train import TINY


def test_auto_selects_a_block_from_the_profile_and_trains_only_it():
    recipe = load_recipe(None, [*TINY, "strategy.name=auto", "train.epochs=2"])
    result = finetune(recipe)
    assert result.strategy == "scl" and len(result.tuned_layers) == 1
    assert result.selection is not None and result.selection["layers"] == result.tuned_layers
    assert result.selection["rule"] == "knee"  # the default rule, from the recipe side
    assert 0 < result.trainable_params < result.total_params
    assert len(result.history) == 2 and result.best_epoch in (1, 2)
    assert result.nc1_before is not None and result.nc1_after is not None
    # the reported test accuracy is the kept model's, measured again here
    model = result.model
    assert not model.training
    _, splits, _, device = prepare(recipe)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=16)
    assert evaluate(model, loader, device)[0] == pytest.approx(result.test_accuracy, abs=1e-12)


def test_linear_needs_no_profile_and_trains_the_head_only():
    recipe = load_recipe(None, [*TINY, "strategy.name=linear", "train.epochs=1"])
    result = finetune(recipe)
    assert result.tuned_layers == [] and result.selection is None
    head = sum(p.numel() for p in result.model.head.parameters())
    assert result.trainable_params == head


def test_prepare_refuses_unknown_layers_before_anything_runs():
    recipe = load_recipe(None, [*TINY, "strategy.name=layers", "strategy.layers=[nope.1]"])
    with pytest.raises(BackboneError, match="strategy.layers"):
        prepare(recipe)
