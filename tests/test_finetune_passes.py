"""What a fine-tuning run costs beyond training, counted in passes over the training images
(issue 19, "the report for free"): every image the run reads goes through a counting
dataset, so a measurement that quietly re-runs the network over the training split fails
here. Frozen blocks keep their profile figures after training, exactly."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from torch.utils.data import Dataset

from nctune.config import load_recipe
from nctune.finetune import Prepared, finetune, prepare
from tests.tiny import tiny


class Counting(Dataset):
    """A dataset that counts the samples read from it."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.reads = inner, 0
        self.classes = getattr(inner, "classes", None)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]


def passes(*overrides: str):
    """(passes over the training images, the run's result)."""
    recipe = load_recipe(None, tiny("train.epochs=2", "train.warmup_epochs=0", *overrides))
    backbone, splits, _, device = prepare(recipe)  # no augmentation: plain is splits
    counted = Counting(splits.train)
    splits = dataclasses.replace(splits, train=counted)
    result = finetune(recipe, prepared=Prepared(backbone, splits, splits, device))
    return counted.reads / len(counted), result


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        # one: the profile pass's pre-logits features are the cache; nothing after training
        (["strategy.name=linear"], 1),
        # the profile, then the cache of the block's input: before/after from the cache
        (["strategy.name=scl", "strategy.layers=[layer3.0]"], 2),
        # the profile, the probe's cache (shallowest candidate), the winner's cache
        (["strategy.name=auto", "strategy.probe_blocks=3"], 3),
        # the default, no probe: the profile and the rule's block's cache
        (["strategy.name=auto"], 2),
    ],
)
def test_passes_over_the_training_images(strategy, expected):
    n, result = passes(*strategy)
    assert n == expected, f"{strategy}: {n} passes over the training images"
    assert result.after_cached and result.nc1_after is not None
    assert result.train_accuracy is not None and result.test_accuracy is not None


def test_the_head_only_cache_from_the_profile_trains_like_its_own_pass(monkeypatch):
    """A linear probe trained on the profile pass's features ends where one trained on a
    cache computed by a pass of its own does."""
    module = importlib.import_module("nctune.finetune")  # nctune.finetune is the verb

    n, shared = passes("strategy.name=linear")
    monkeypatch.setattr(module, "head_cut", lambda recipe: False)  # a cache pass of its own
    m, separate = passes("strategy.name=linear")
    assert (n, m) == (1, 2)
    assert shared.cache["used"] and separate.cache["used"]
    assert shared.val_accuracy == separate.val_accuracy
    assert shared.nc1_after == pytest.approx(separate.nc1_after, rel=1e-5)
    assert shared.history[-1]["loss"] == pytest.approx(separate.history[-1]["loss"], rel=1e-5)


def test_full_measures_only_what_it_reports():
    """Everything trains, so nothing is cached: the profile, two epochs, one pass after."""
    n, result = passes("strategy.name=full")
    assert n == 1 + 2 + 1, n
    assert not result.after_cached and all(layer["remeasured"] for layer in result.layers)


def test_lp_ft_measures_its_changed_prefix_from_images():
    """lp-ft's full phase trains the prefix its probe phase cached: after training the
    cache is stale, so the pass after runs the images (not the probe-phase cache)."""
    n, result = passes("strategy.name=lp-ft", "strategy.probe_epochs=1")
    assert n == 1 + 1 + 1, n  # the profile (its features: the probe phase's cache), one full
    # epoch, the pass after
    assert not result.after_cached and all(layer["remeasured"] for layer in result.layers)


def test_frozen_blocks_keep_their_profile_figures_exactly():
    _, result = passes("strategy.name=scl", "strategy.layers=[layer3.0]")
    by_name = {layer["name"]: layer for layer in result.layers}
    frozen = [name for name in by_name if name.startswith(("layer1", "layer2"))]
    assert frozen and not any(by_name[n]["remeasured"] for n in frozen)
    for name in frozen:
        assert by_name[name]["nc1_after"] == by_name[name]["nc1_before"]
        assert by_name[name]["ncc_after"] == by_name[name]["ncc_before"]
    changed = [n for n in by_name if n.startswith(("layer3", "layer4")) or n == "pre_logits"]
    assert changed and all(by_name[n]["remeasured"] for n in changed)
    assert by_name["layer3.0"]["nc1_after"] != by_name["layer3.0"]["nc1_before"]


def test_the_cached_after_pass_equals_the_image_pass():
    """The suffix-only pass from the prefix cache measures what the whole network does."""
    _, cached = passes("strategy.name=scl", "strategy.layers=[layer3.0]")
    _, images = passes("strategy.name=scl", "strategy.layers=[layer3.0]", "train.cache_prefix=off")
    assert cached.after_cached and not images.after_cached
    assert cached.nc1_after == pytest.approx(images.nc1_after, rel=1e-4)
    assert cached.train_accuracy == pytest.approx(images.train_accuracy)
    for a, b in zip(cached.layers, images.layers, strict=True):
        assert a["nc1_after"] == pytest.approx(b["nc1_after"], rel=1e-4), a["name"]


def test_the_probe_is_in_the_report_with_every_block_and_why():
    _, result = passes("strategy.name=auto", "strategy.probe_blocks=3")
    doc = result.to_dict()
    probe = doc["probe"]
    assert probe["winner"] == result.tuned_layers[0] == doc["selection"]["layers"][0]
    blocks = [c["block"] for c in probe["candidates"]]
    assert len(blocks) == 3 and probe["winner"] in blocks
    assert all(c["steps"] >= 1 and c["nc1_before"] is not None for c in probe["candidates"])
    assert probe["steps"] <= probe["budget_steps"] and probe["why"]
    assert (
        "collapse probe" in doc["selection"]["reason"]
        and probe["why"] in doc["selection"]["reason"]
    )
    # the head input's NC1 before training is the probe's measurement of the winner
    winner = next(c for c in probe["candidates"] if c["block"] == probe["winner"])
    assert doc["nc1_before"] == winner["nc1_before"]
