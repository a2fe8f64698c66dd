"""The training state: saved to a checkpoint and restored from it, field for field."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nctune.config import load_recipe
from nctune.data import DataSplits
from nctune.finetune import prepare
from nctune.training.checkpoint import CHECKPOINT, load_checkpoint
from nctune.training.optim import make_optimizer, no_weight_decay_ids
from nctune.training.state import EpochSums, TrainState
from nctune.training.strategies import apply_strategy
from nctune.training.train import EpochStats, safe_nc1
from tests.test_train import TINY


def fresh_state(seed: int) -> tuple[TrainState, DataSplits]:
    recipe = load_recipe(None, TINY)
    backbone, splits, _, device = prepare(recipe)
    torch.manual_seed(seed)
    applied = apply_strategy(backbone, "scl", splits.num_classes, layers=["layer3.0"])
    state = TrainState(applied, applied.model, device, torch.amp.GradScaler("cuda", enabled=False))
    params = applied.parameters()
    state.optimizer = make_optimizer(params, recipe.train, 0.01, no_weight_decay_ids(state.model))
    return state, splits


def test_save_then_restore_gives_back_the_same_state(tmp_path):
    state, splits = fresh_state(seed=0)
    x, y = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=8)))
    logits, feats = state.model(x, return_features=True)
    F.cross_entropy(logits, y).backward()
    state.optimizer.step()  # the optimizer now has moments worth restoring
    stats = EpochStats(1, "main", 2.0, 0.25, 0.5, 3.0, 0.01, 1.5)
    state.end_epoch(stats, tmp_path)  # history, best epoch, boundary checkpoint
    state.epoch, state.step = 1, 2  # then a stop request two steps into epoch 2
    sums = EpochSums.start(splits.num_classes, track=True, partial=None)
    sums.add(logits.detach(), feats.detach(), y, 2.5, distributed=False)
    state.save(tmp_path, partial=sums)

    other, _ = fresh_state(seed=1)  # another initialisation: every weight differs
    ckpt = load_checkpoint(tmp_path)
    other.restore(ckpt, tmp_path / CHECKPOINT)
    other.restore_optimizer("main")
    assert (other.epoch, other.step, other.history) == (1, 2, [stats])
    assert (other.best.acc, other.best.epoch, other.best.bad_epochs) == (0.5, 1, 0)
    for key, value in state.best.state.items():
        torch.testing.assert_close(other.best.state[key], value, rtol=0, atol=0)
    for key, value in state.model.state_dict().items():
        torch.testing.assert_close(other.model.state_dict()[key], value, rtol=0, atol=0)
    mine, theirs = state.optimizer.state_dict(), other.optimizer.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for slot, values in mine["state"].items():
        for name, value in values.items():
            torch.testing.assert_close(theirs["state"][slot][name], value, rtol=0, atol=0)
    back = EpochSums.start(splits.num_classes, track=True, partial=ckpt.partial)
    assert (back.loss_sum, back.correct, back.seen) == (sums.loss_sum, sums.correct, sums.seen)
    assert safe_nc1(back.stats) == safe_nc1(sums.stats) is not None
    # the restored state saves the very document the original saved
    assert other.checkpoint(back).keys() == state.checkpoint(sums).keys()
    assert other.checkpoint(back)["history"] == state.checkpoint(sums)["history"]
