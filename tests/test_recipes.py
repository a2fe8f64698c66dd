"""The shipped recipes: they validate, the offline ones build, and docs/recipes.md is current.

The offline recipes (``recipes/*.yaml``) build their backbone and data for real (the
packaged EfficientNet-Lite0 weights and the vendored Fashion-MNIST subset are local). The
paper's recipes (``recipes/paper/``) need downloads and a GPU, so they are only validated
and checked against what exists: their torchvision dataset classes and timm model names.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
import torchvision.datasets
import yaml

from nctune.config import Recipe, load_recipe
from nctune.errors import DataError
from nctune.training.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
ALL = sorted(RECIPES.rglob("*.yaml"))
OFFLINE = sorted(RECIPES.glob("*.yaml"))
PAPER = sorted((RECIPES / "paper").glob("*.yaml"))
PAPER_DATASETS = {"CIFAR10", "FGVCAircraft", "DTD", "OxfordIIITPet", "StanfordCars"}
PAPER_BACKBONES = {"timm:resnet50", "timm:vit_base_patch16_224"}


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(RECIPES).as_posix() for p in paths]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Building the data resizes images with torch; one thread avoids OpenMP contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_recipe_set_is_complete():
    names = {p.name for p in OFFLINE}
    assert {f"finetune-{s}.yaml" for s in STRATEGIES} <= names
    assert "quickstart.yaml" in names
    assert len(PAPER) == 2 * len(PAPER_DATASETS) * len(PAPER_BACKBONES)  # full + 10-shot


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    # the file says what it is for, and how to run it, before any setting
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "start with a comment saying what the recipe does"
    rel = path.relative_to(ROOT).as_posix()
    assert f"nctune analyze {rel}" in text or f"nctune finetune {rel}" in text
    # no key is set twice (YAML keeps the last one silently)
    assert yaml.safe_load(text) == yaml.load(text, Loader=_StrictLoader)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise AssertionError(f"duplicate keys {sorted(dupes)} at line {node.start_mark.line}")
        return super().construct_mapping(node, deep=deep)


# ------------------------------------------------------------------ offline recipes
@pytest.mark.parametrize("path", OFFLINE, ids=ids(OFFLINE))
def test_offline_recipe_builds(path):
    from nctune.finetune import prepare

    recipe = load_recipe(path, ["device=cpu"])
    assert recipe.backbone.name == "packaged:efficientnet_lite0"
    assert recipe.data.source == "fashion_mnist" and recipe.data.subset == "vendored"
    assert recipe.data.image_size == 64  # CPU-sized
    # prepare() builds backbone and data, and resolves the strategy's layer names and
    # LoRA targets, exactly as `nctune finetune` does before creating a run folder
    backbone, splits, _plain, device = prepare(recipe)
    assert device.type == "cpu"
    assert splits.num_classes == 10 and splits.val is not None and splits.test is not None
    x, _ = splits.train[0]
    assert x.shape == (3, 64, 64)
    if recipe.strategy.layers:
        assert backbone.resolve_layers(recipe.strategy.layers, field="strategy.layers")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_recipes_suit_their_strategy(strategy):
    recipe = load_recipe(RECIPES / f"finetune-{strategy}.yaml")
    s, t = recipe.strategy, recipe.train
    assert s.name == strategy
    assert t.epochs <= 10  # minutes on a CPU
    linear = load_recipe(RECIPES / "finetune-linear.yaml").train.lr
    full = load_recipe(RECIPES / "finetune-full.yaml").train.lr
    if strategy in ("scl", "layers", "lora", "auto"):
        assert full < t.lr < linear  # more than a head, less than everything
    if strategy == "scl":
        assert len(s.layers) == 1
    if strategy == "auto":
        assert s.layers is None  # the profile chooses (strategy.rule or the default rule)
    if strategy == "lp-ft":
        assert s.probe_epochs is not None and s.probe_epochs < t.epochs
        assert t.lr * s.full_lr_scale <= full * 1.001  # the full phase is gentle


def test_offline_recipes_run_without_a_gpu_or_network():
    for path in OFFLINE:
        recipe = load_recipe(path)
        assert recipe.device in ("auto", "cpu")
        assert not recipe.data.download and recipe.data.path is None
        assert not recipe.data.augment  # frozen prefixes are cached


# ------------------------------------------------------------------ paper recipes
@pytest.mark.parametrize("path", PAPER, ids=ids(PAPER))
def test_paper_recipe_settings(path):
    recipe = load_recipe(path)
    d = recipe.data
    assert recipe.backbone.name in PAPER_BACKBONES and recipe.backbone.pretrained
    assert d.source == "torchvision" and d.name in PAPER_DATASETS
    assert d.path is not None and not d.download  # the user fills in the path
    assert d.image_size == 224 and 64 <= d.batch_size <= 128
    assert recipe.strategy.name == "scl"
    few_shot = path.stem.endswith("-10shot")
    assert d.samples_per_class == (10 if few_shot else None)
    if "vit" in recipe.backbone.name:
        assert recipe.train.optimizer == "adamw" and recipe.analysis.token_pool == "cls"
    else:
        assert recipe.train.optimizer == "sgd"


def test_paper_recipes_cover_every_pair_and_agree_within_a_backbone():
    seen = {}
    for path in PAPER:
        r = load_recipe(path)
        regime = "few" if r.data.samples_per_class else "full"
        seen[(r.backbone.name, r.data.name, regime)] = r
    assert len(seen) == len(PAPER)  # no two files with the same setting
    for backbone in PAPER_BACKBONES:
        for regime in ("full", "few"):
            group = [r for (b, _, g), r in seen.items() if b == backbone and g == regime]
            assert {r.data.name for r in group} == PAPER_DATASETS
            # one optimiser setting per backbone, as in the paper (epochs may differ)
            trains = {
                (r.train.optimizer, r.train.lr, r.train.weight_decay, r.train.momentum)
                for r in group
            }
            assert len(trains) == 1, (backbone, regime, trains)


@pytest.mark.parametrize("name", sorted(PAPER_DATASETS))
def test_paper_datasets_exist_in_torchvision(name):
    from nctune.data.sources.torchvision import _torchvision_class

    cls = getattr(torchvision.datasets, name)
    assert _torchvision_class(name) is cls
    params = inspect.signature(cls).parameters
    assert "root" in params and "download" in params
    # nctune asks for train=True/False, or split="train"/"trainval", "val", "test"
    assert "train" in params or "split" in params


def test_paper_backbones_exist_in_timm():
    import timm

    for spec in PAPER_BACKBONES:
        assert timm.is_model(spec.split(":", 1)[1]), spec


@pytest.mark.parametrize("path", PAPER, ids=ids(PAPER))
def test_paper_recipe_without_its_data_is_one_clear_line(path, tmp_path):
    """Before anything is downloaded, a missing dataset root names data.path."""
    from nctune.backbones import IMAGENET_INPUT
    from nctune.data import build_data

    recipe = load_recipe(path, [f"data.path={tmp_path / 'missing'}"])
    with pytest.raises(DataError, match=r"^data\.path: .*missing does not exist") as err:
        build_data(recipe.data, IMAGENET_INPUT, seed=0)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ docs/recipes.md
def _gen_module():
    spec = importlib.util.spec_from_file_location(
        "gen_recipe_docs", ROOT / "scripts" / "gen_recipe_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_docs_are_current():
    gen = _gen_module()
    committed = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert committed == gen.render(), "docs/recipes.md is stale: run scripts/gen_recipe_docs.py"


def test_recipe_docs_cover_every_field_and_recipe():
    gen = _gen_module()
    text = gen.render()
    for section, field in Recipe.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            assert f"### `{section}`" in text
            for name, sub in annotation.model_fields.items():
                assert f"| `{name}` |" in text, f"{section}.{name}"
                assert gen.cell(sub.description) in text, f"{section}.{name} description"
        else:
            assert f"| `{section}` |" in text
    for path in ALL:
        assert f"`{path.relative_to(ROOT).as_posix()}`" in text


def test_gen_check_mode(tmp_path, monkeypatch, capsys):
    gen = _gen_module()
    monkeypatch.setattr(gen, "DOC", tmp_path / "recipes.md")
    assert gen.main(["--check"]) == 1  # missing
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    (tmp_path / "recipes.md").write_text("old\n")
    assert gen.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().out
