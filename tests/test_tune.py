"""`nctune.tune`: seeded studies, pruning, the shared profile and prefix cache, failures.

Tiny random-init timm ``test_resnet`` at 32 px on a generated three-class image folder;
every trial is a real ``finetune`` run of one to three epochs.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image

from nctune.config import load_recipe, recipe_from_dict
from nctune.errors import ConfigError
from nctune.profile import PRE_LOGITS
from nctune.tune import (
    SearchFailedError,
    SmallValidationWarning,
    rank_blocks,
    small_val_advice,
    trial_recipe,
    tune,
)

# the module, not the verb: nctune.tune is the function on the nctune package
search_mod = importlib.import_module("nctune.tune._search")

# the generated folder's 9 validation images are deliberately few: no advice needed here
pytestmark = pytest.mark.filterwarnings("ignore::nctune.tune.SmallValidationWarning")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three classes of 12 noisy 32 px images, each class its own mean colour."""
    root = tmp_path_factory.mktemp("tune_images")
    rng = np.random.default_rng(0)
    for k, cls in enumerate("abc"):
        (root / cls).mkdir()
        for i in range(12):
            base = np.zeros((32, 32, 3))
            base[..., k] = 200.0
            pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def _recipe(images: Path, search: dict, **sections):
    doc = {
        "backbone": {"name": "timm:test_resnet", "pretrained": False},
        "data": {
            "source": "imagefolder",
            "path": str(images),
            "image_size": 32,
            "batch_size": 16,
            "val_fraction": 0.25,
        },
        "strategy": {"name": "linear"},
        "train": {"epochs": 1, "warmup_epochs": 0, "profile_after": False},
        "device": "cpu",
        "search": search,
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return recipe_from_dict(doc)


def test_seeded_study_gives_the_same_best_params_twice(images, tmp_path, monkeypatch):
    measured = []
    real = search_mod._profile
    monkeypatch.setattr(search_mod, "_profile", lambda *a, **k: measured.append(1) or real(*a, **k))
    recipe = _recipe(
        images,
        {
            "trials": 3,
            "pruner": "none",
            "space": {
                "train.lr": {"float": [1e-3, 0.1], "log": True},
                "strategy.layers": {"blocks_from_profile": 2},
            },
        },
        strategy={"name": "layers"},
        data={"test_fraction": 0.2},
    )
    a = tune(recipe, out=tmp_path / "a")
    b = tune(recipe, out=tmp_path / "b")
    assert len(measured) == 2  # one profile per study, shared by its three trials
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert a.best is not None and a.best.params == b.best.params
    assert a.best.value == b.best.value
    assert a.count("COMPLETE") == 3
    # the profile's blocks are the choices, ranked by the recipe's rule
    assert len(a.space["strategy.layers"]["choices"]) == 2
    assert {t.params["strategy.layers"] for t in a.trials} <= set(
        a.space["strategy.layers"]["choices"]
    )
    for t in a.trials:  # the user attributes every trial records
        assert t.tuned_layers == [t.params["strategy.layers"]]
        assert t.nc1_after is not None and t.wall_seconds > 0 and 0 < t.trainable_percent < 100
        assert Path(t.run_dir) == tmp_path / "a" / "trials" / str(t.number)
    # best.yaml is the best trial's resolved, runnable recipe
    best = load_recipe(tmp_path / "a" / "best.yaml")
    assert best == trial_recipe(recipe, a.best.params)
    assert best.strategy.layers == [a.best.params["strategy.layers"]]
    # keep: best → only the best trial keeps its weights
    kept = sorted(p.parent.name for p in (tmp_path / "a" / "trials").glob("*/model.safetensors"))
    assert kept == [str(a.best.number)]
    # the test split is measured once, for the best trial, after the search
    tested = {
        t.number: json.loads(Path(t.run_dir, "report.json").read_text())["test_accuracy"]
        for t in a.trials
    }
    assert a.best.test_accuracy is not None
    assert tested.pop(a.best.number) == a.best.test_accuracy
    assert set(tested.values()) == {None}
    doc = json.loads((tmp_path / "a" / "search.json").read_text())
    assert doc["best"]["number"] == a.best.number and len(doc["trials"]) == 3
    assert (tmp_path / "a" / "search.png").stat().st_size > 0


def test_nc1_after_metric_picks_the_most_collapsed_trial_from_one_profile(
    images, tmp_path, monkeypatch
):
    profiles = []
    real = search_mod._profile
    monkeypatch.setattr(
        search_mod, "_profile", lambda *a, **k: profiles.append(real(*a, **k)) or profiles[-1]
    )
    recipe = _recipe(
        images,
        {
            "trials": 3,
            "pruner": "none",
            "metric": "nc1_after",
            "space": {"train.lr": {"choice": [0.001, 0.03, 0.3]}},
        },
        strategy={"name": "layers", "layers": ["layer4.0"]},  # a tuned block: NC1 moves
        train={"epochs": 2, "profile_after": True},
        data={"test_fraction": 0.2},
    )
    out = tmp_path / "s"
    enqueue = [{"train.lr": lr} for lr in (0.001, 0.03, 0.3)]
    with warnings.catch_warnings():
        # scored by training-set collapse: the 9-image validation split is no concern
        warnings.simplefilter("error", SmallValidationWarning)
        result = tune(recipe, out=out, enqueue=enqueue)
    assert result.metric == "nc1_after" and result.direction == "minimize"
    assert result.count("COMPLETE") == 3
    lowest = min(result.trials, key=lambda t: t.nc1_after)
    assert len({t.nc1_after for t in result.trials}) == 3  # no tie decides the test
    assert result.best.number == lowest.number and result.best.value == lowest.nc1_after
    assert result.best.test_accuracy is not None  # the best trial is tested, as with accuracy
    doc = json.loads((out / "search.json").read_text())
    assert doc["metric"] == "nc1_after" and doc["best"]["number"] == lowest.number
    assert load_recipe(out / "best.yaml").train.lr == lowest.params["train.lr"]
    # the pruner's per-epoch values are the head-input NC1 of each epoch's training pass
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    for t in study.trials:
        report = json.loads((out / "trials" / str(t.number) / "report.json").read_text())
        assert t.intermediate_values == {e["epoch"]: e["nc1"] for e in report["history"]}
        # one profile for the study; without a skip head the NC1-before is its pre-logits
        # NC1, not measured again by the trial
        pre = next(layer for layer in profiles[0].layers if layer.name == PRE_LOGITS)
        assert report["nc1_before"] == pre.nc1
    assert len(profiles) == 1


def test_small_val_advice_follows_the_probes_threshold():
    def splits(n_val, k=10):
        return SimpleNamespace(val=[0] * n_val if n_val else None, num_classes=k)

    acc = recipe_from_dict({"data": {"val_fraction": 0.05}})
    advice = small_val_advice(acc, splits(199))
    assert advice is not None and "\n" not in advice
    for part in (
        "199 validation images",
        "10 classes",
        "200 images",
        "data.val_fraction",
        "now 0.05",
        "search.metric: nc1_after",
        "−0.86",
    ):
        assert part in advice, part
    assert small_val_advice(acc, splits(200)) is None
    assert small_val_advice(acc, splits(0)) is None  # no split: tune refuses val_accuracy
    nc1 = recipe_from_dict({"search": {"metric": "nc1_after"}})
    assert small_val_advice(nc1, splits(9)) is None


def test_pruner_stops_a_bad_trial_before_its_last_epoch(images, tmp_path):
    recipe = _recipe(
        images,
        {
            "trials": 3,
            "startup_trials": 2,
            "warmup_epochs": 0,
            "space": {"train.lr": {"choice": [0.01, 1000.0]}},
        },
        train={"epochs": 3},
    )
    good, bad = {"train.lr": 0.01}, {"train.lr": 1000.0}
    result = tune(recipe, out=tmp_path / "s", enqueue=[good, good, bad])
    states = [(t.params["train.lr"], t.state) for t in result.trials]
    assert states == [(0.01, "COMPLETE"), (0.01, "COMPLETE"), (1000.0, "PRUNED")]
    pruned = result.trials[2]
    assert pruned.epochs is not None and pruned.epochs < 3
    assert "pruned after epoch" in pruned.reason
    assert not (tmp_path / "s" / "trials" / "2" / "checkpoint.pt").exists()


def test_second_trial_on_a_block_reads_the_shared_prefix_cache(images, tmp_path):
    recipe = _recipe(
        images,
        {"trials": 2, "pruner": "none", "space": {"train.lr": {"float": [1e-3, 0.1]}}},
        strategy={"name": "layers", "layers": ["layer4.0"]},
    )
    out = tmp_path / "s"
    # a journal file storage, the other kind besides SQL
    result = tune(recipe, out=out, storage=f"journal:{tmp_path / 'study.log'}")
    assert result.count("COMPLETE") == 2
    caches = [
        json.loads((out / "trials" / str(n) / "report.json").read_text())["cache"] for n in (0, 1)
    ]
    assert [c["shared"] for c in caches] == ["written", "read"]
    assert caches[0]["cut"] == caches[1]["cut"] == "backbone.layer4.0"
    assert len(list((out / "prefix-cache").iterdir())) == 2  # train and val, once each
    # re-running with more trials continues the study: the two first stay as they were
    more = tune(recipe, out=out, storage=f"journal:{tmp_path / 'study.log'}", trials=3)
    assert [t.params for t in more.trials[:2]] == [t.params for t in result.trials]
    assert more.count("COMPLETE") == 3
    # the study remembers its recipe: continuing it with another one is refused
    other = recipe.model_copy(update={"seed": 1})
    with pytest.raises(ConfigError, match="differs at seed"):
        tune(other, out=out, storage=f"journal:{tmp_path / 'study.log'}")


def test_every_trial_failing_raises_the_first_reason(images, tmp_path):
    recipe = _recipe(
        images,
        {"trials": 2, "space": {"strategy.layers": {"choice": ["no_such_block"]}}},
        strategy={"name": "layers"},
    )
    with pytest.raises(SearchFailedError, match="no_such_block") as info:
        tune(recipe, out=tmp_path / "s")
    assert info.value.bad_input
    assert "trial 0" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()  # a folder it created is not left behind


def test_rank_blocks_follows_the_rule():
    class Layer:
        def __init__(self, name, nc1):
            self.name, self.nc1, self.ncc_accuracy, self.tunable = name, nc1, None, True

    class Profile:
        def __init__(self, layers, num_samples=10, num_classes=2, seconds=0.0):
            self.layers, self.num_samples, self.num_classes = layers, num_samples, num_classes

        @property
        def blocks(self):
            return self.layers

    profile = Profile([Layer("a", 5.0), Layer("b", 1.0), Layer("c", 3.0)])
    strategy = recipe_from_dict({"strategy": {"rule": "min_nc1"}}).strategy
    assert rank_blocks(profile, strategy, 2) == ["b", "c"]
    strategy = recipe_from_dict({"strategy": {"rule": "last"}}).strategy
    assert rank_blocks(profile, strategy, 5) == ["c", "b", "a"]


def test_trial_recipe_sets_dotted_paths():
    base = recipe_from_dict({})
    cfg = trial_recipe(base, {"train.lr": 0.05, "strategy.layers": "blocks.3", "seed": 3})
    assert cfg.train.lr == 0.05 and cfg.strategy.layers == ["blocks.3"] and cfg.seed == 3
    with pytest.raises(ConfigError, match="train.epochs"):
        trial_recipe(base, {"train.epochs": 0})
    assert yaml.safe_load(cfg.to_yaml())["train"]["lr"] == 0.05
