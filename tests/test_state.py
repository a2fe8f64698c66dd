"""The training state: saved to a checkpoint and restored from it, field for field."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nctune.config import load_recipe
from nctune.data import DataSplits
from nctune.errors import ArtifactError
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


def _stepped_checkpoint(tmp_path) -> dict:
    """The document of a state whose optimizer (AdamW) took one step."""
    state, splits = fresh_state(seed=0)
    x, y = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=8)))
    F.cross_entropy(state.model(x), y).backward()
    state.optimizer.step()
    state.save(tmp_path)
    return torch.load(tmp_path / CHECKPOINT, weights_only=True)


def _tampered(doc: dict, how: str) -> None:
    groups, moments = doc["optimizer"]["param_groups"], doc["optimizer"]["state"]
    if how == "fused-number":  # the fuzzer's 8th finding (SGD there; torch's fused path)
        groups[-1]["fused"] = -1.8e16
    elif how == "fused-flag":
        groups[0]["fused"] = True
    elif how == "amsgrad":  # AdamW's step would read a max_exp_avg_sq no parameter has
        groups[0]["amsgrad"] = True
    elif how == "one-moment-missing":  # AdamW's step: KeyError 'exp_avg'
        del moments[next(iter(moments))]["exp_avg"]
    elif how == "every-moment-missing":
        for slot in moments.values():
            del slot["exp_avg_sq"]
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how, names",
    [
        ("fused-number", ["param_groups.1", "fused"]),
        ("fused-flag", ["param_groups.0", "fused"]),
        ("amsgrad", ["param_groups.0", "amsgrad"]),
        ("one-moment-missing", ["optimizer", "exp_avg"]),
        ("every-moment-missing", ["optimizer", "exp_avg_sq"]),
    ],
)
def test_an_optimizer_state_its_step_would_fail_on_is_refused(tmp_path, how, names):
    """A group's algorithm flags (fused, amsgrad, …) must be the run's own, and a parameter
    with moments must have every moment its optimizer's step reads."""
    doc = _stepped_checkpoint(tmp_path)
    _tampered(doc, how)
    torch.save(doc, tmp_path / CHECKPOINT)
    other, _ = fresh_state(seed=1)
    other.restore(load_checkpoint(tmp_path), tmp_path / CHECKPOINT)
    with pytest.raises(ArtifactError) as err:
        other.restore_optimizer("main")
    line = str(err.value)
    assert "\n" not in line and all(name in line for name in names), line


def test_a_parameter_without_moments_resumes_as_a_fresh_one(tmp_path):
    """A parameter that never got a gradient has no moments: that is no damage."""
    doc = _stepped_checkpoint(tmp_path)
    moments = doc["optimizer"]["state"]
    moments.pop(next(iter(moments)))
    torch.save(doc, tmp_path / CHECKPOINT)
    other, _ = fresh_state(seed=1)
    other.restore(load_checkpoint(tmp_path), tmp_path / CHECKPOINT)
    other.restore_optimizer("main")
    assert len(other.optimizer.state) == len(moments)
