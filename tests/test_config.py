"""Recipes: defaults, YAML loading, ``--set`` overrides and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nctune.config import Recipe, Section, load_recipe, parse_override, recipe_from_dict
from nctune.errors import ConfigError, NctuneError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg, "errors are one line for the CLI"
    assert isinstance(info.value, NctuneError)  # the CLI maps it to exit code 2
    return msg


# ======================================================================= defaults
def test_defaults_are_valid_and_offline(tmp_path):
    recipe = load_recipe(None)
    assert recipe == Recipe()
    assert recipe.backbone.name == "packaged:efficientnet_lite0"
    assert recipe.data.source == "fashion_mnist" and recipe.data.batch_size == 64
    assert recipe.analysis.layers is None and recipe.analysis.token_pool == "cls"
    assert recipe.seed == 0 and recipe.device == "auto"
    assert load_recipe(_write(tmp_path, "")) == recipe  # an empty file means the defaults


def test_every_field_has_help_text():
    def walk(model_cls, prefix=""):
        for name, f in model_cls.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, Section):
                yield from walk(ann, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", f.description

    missing = [path for path, desc in walk(Recipe) if not desc]
    assert not missing, f"fields without a description: {missing}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_shipped_recipes_validate(path, tmp_path):
    assert RECIPES, "recipes/*.yaml is empty"
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    # and survive a round trip through their resolved YAML
    assert load_recipe(_write(tmp_path, recipe.to_yaml())) == recipe


# ======================================================================= overrides
def test_overrides_parse_yaml_scalars_and_lists(tmp_path):
    path = _write(tmp_path, "data:\n  batch_size: 128\n  image_size: 64\nseed: 3\n")
    recipe = load_recipe(
        path,
        [
            "data.batch_size=32",  # int
            "train.lr=0.0003",  # float, in a section the file does not have
            "train.warmup_epochs=1e-1",  # YAML 1.1 reads this as a string; pydantic converts
            "analysis.layers=[layer3.1, 'layer4.*']",  # a list
            "data.image_size=null",  # null
            "backbone.model_kwargs.drop_path_rate=0.1",  # new keys inside a dict field
            "backbone.model_kwargs.extra.depth=2",  # nested new keys
            "seed=5",
            "data.batch_size=16",  # later overrides win
        ],
    )
    assert recipe.data.batch_size == 16 and isinstance(recipe.data.batch_size, int)
    assert recipe.train.lr == pytest.approx(3e-4) and recipe.train.warmup_epochs == 0.1
    assert recipe.analysis.layers == ["layer3.1", "layer4.*"]
    assert recipe.data.image_size is None
    assert recipe.backbone.model_kwargs == {"drop_path_rate": 0.1, "extra": {"depth": 2}}
    assert recipe.seed == 5


def test_parse_override():
    assert parse_override("data.batch_size=32") == (["data", "batch_size"], 32)
    assert parse_override("backbone.name=timm:resnet18") == (["backbone", "name"], "timm:resnet18")
    assert parse_override("device=cuda:1") == (["device"], "cuda:1")
    assert parse_override("data.path=") == (["data", "path"], "")
    assert parse_override("analysis.layers=[a, b]") == (["analysis", "layers"], ["a", "b"])
    assert parse_override("x.y=a=b") == (["x", "y"], "a=b")  # only the first '=' splits


@pytest.mark.parametrize("bad", ["data.batch_size", "=3", "data..batch_size=3", ".seed=1"])
def test_set_without_key_path_value(bad):
    msg = _error(None, [bad])
    assert f"--set {bad!r}" in msg and "key.path=value" in msg


def test_set_into_a_value(tmp_path):
    path = _write(tmp_path, "seed: 0\ndata:\n  batch_size: 8\n")
    msg = _error(path, ["seed.x=1"])
    assert "seed is a value, not a section" in msg
    msg = _error(path, ["data.batch_size.inner=1"])
    assert "data.batch_size is a value" in msg
    # without a file the defaults are not a mapping yet: validation names the field instead
    assert "seed" in _error(None, ["seed.x=1"])


# ======================================================================= validation errors
def test_unknown_key_names_its_path(tmp_path):
    msg = _error(None, ["data.batch_sise=32"])
    assert "data.batch_sise" in msg and "unknown key" in msg
    path = _write(tmp_path, "data:\n  source: fashion_mnist\n  batch_sise: 32\n")
    msg = _error(path, None)
    assert msg.startswith(str(path)) and "data.batch_sise: unknown key" in msg
    assert "analyses" in _error(_write(tmp_path, "analyses:\n  layers: null\n"))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("analysis.token_pool=max", "analysis.token_pool"),
        ("data.source=imagenet", "data.source"),
        ("analysis.layers=layer3", "analysis.layers"),  # a string where a list belongs
        ("backbone.name=' '", "backbone.name"),
        ("data=3", "data"),
        ("seed=-1", "seed"),
    ],
)
def test_wrong_type_or_value_names_the_field(override, field):
    msg = _error(None, [override])
    assert msg.startswith(f"--set: {field}: "), msg


def test_errors_name_where_the_bad_value_came_from(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 0\n")
    assert _error(path).startswith(f"{path}: train.lr: ")
    assert _error(path, ["train.lr=-1"]).startswith("--set: train.lr: ")
    # a whole section set on the command line owns the fields below it
    assert _error(path, ["train={lr: -1}"]).startswith("--set: train.lr: ")
    # our validators' messages read as one sentence, without pydantic's prefix
    msg = _error(None, ["strategy.rule=kne"])
    assert msg.startswith("--set: strategy.rule: unknown rule 'kne'") and "Value error" not in msg


def test_malformed_yaml_gives_the_line(tmp_path):
    path = _write(tmp_path, "backbone:\n  name: timm:resnet18\ndata:\n  batch_size: 1\n    x: 2\n")
    msg = _error(path)
    assert str(path) in msg and "malformed YAML" in msg and "line 5" in msg
    msg = _error(_write(tmp_path, "data: [1,\n  2\n", "open.yaml"))
    assert "malformed YAML at line" in msg


@pytest.mark.parametrize("text", ["- backbone\n- data\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path, text):
    assert "must be a YAML mapping" in _error(_write(tmp_path, text))


def test_missing_or_unreadable_file(tmp_path):
    msg = _error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "bin.yaml" in _error(binary)
    assert "is a folder" in _error(tmp_path)


def test_validation_on_assignment():
    recipe = Recipe()
    with pytest.raises(ValidationError):
        recipe.data.batch_size = 0
    with pytest.raises(ConfigError, match="recipe: data.batch_size"):
        recipe_from_dict({"data": {"batch_size": -1}})


# ======================================================================= YAML round trip
def test_to_yaml_round_trip(tmp_path):
    recipe = load_recipe(
        None,
        [
            "backbone.name=timm:resnet18",
            "backbone.pretrained=false",
            f"backbone.weights={tmp_path / 'w.safetensors'}",
            "backbone.model_kwargs.drop_path_rate=0.05",
            "data.source=imagefolder",
            f"data.path={tmp_path / 'images'}",
            "data.samples_per_class=5",
            "analysis.layers=['layer3.*', layer4.1]",
            "analysis.token_pool=mean",
            "analysis.max_full_dim=512",
            "seed=7",
            "device=cpu",
        ],
    )
    text = recipe.to_yaml()
    assert str(tmp_path / "images") in text  # paths are written as plain strings
    again = load_recipe(_write(tmp_path, text))
    assert again == recipe
    assert again.data.path == tmp_path / "images"
    assert again.to_yaml() == text
