"""nctune.data.sources: the registry of data sources and how recipes are checked against it."""

from __future__ import annotations

import pytest

from nctune.config import DataConfig, load_recipe
from nctune.data import SOURCES, list_sources
from nctune.errors import ConfigError

SOURCES_IN_ORDER = [
    "fashion_mnist",
    "imagefolder",
    "csv",
    "torchvision",
    "digits",
    "hf",
    "webdataset",
]


def test_registry_lists_every_source_default_first():
    assert list_sources() == SOURCES_IN_ORDER == SOURCES.names()
    assert all(callable(SOURCES.get(name)) for name in SOURCES_IN_ORDER)
    assert DataConfig().source == list_sources()[0]


def test_recipe_help_describes_every_registered_source():
    help_text = DataConfig.model_fields["source"].description
    for name in list_sources():
        assert f"{name} (" in help_text, name
    assert "\n" not in help_text


def test_unknown_source_in_a_recipe_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  source: imagefolde\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: data.source: unknown data source 'imagefolde' — did you mean 'imagefolder'? "
        "(registered: fashion_mnist, imagefolder, csv, torchvision, digits, hf, webdataset)"
    )
    with pytest.raises(ConfigError, match=r"^--set: data\.source: unknown data source 'x'"):
        load_recipe(None, ["data.source=x"])


@pytest.mark.parametrize("name", SOURCES_IN_ORDER)
def test_every_registered_source_validates(name):
    assert DataConfig(source=name).source == name
