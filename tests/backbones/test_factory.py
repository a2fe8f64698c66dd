"""Spec parsing, unknown names, and the source registry the recipe validates against."""

from __future__ import annotations

import pytest

from nctune.backbones import SOURCES, create_backbone, list_sources
from nctune.backbones.factory import parse_spec
from nctune.backbones.sources.timm import create_timm
from nctune.config import load_recipe
from nctune.errors import BackboneError, ConfigError, NctuneError


# ======================================================================= names
@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("timm:resnet5O", r"unknown timm model 'resnet5O' \(did you mean resnet50\?\)"),
        ("resnet5O", "unknown timm model"),
        ("torchvision:resnet5O", r"unknown torchvision model .*did you mean resnet50"),
        ("foo:bar", "unknown source 'foo'"),
        ("timm:", "names no model"),
        ("packaged:efficientnet_lite9", "available: efficientnet_lite0"),
    ],
)
def test_unknown_names(spec: str, pattern: str) -> None:
    with pytest.raises(BackboneError, match=pattern) as err:
        create_backbone(spec, pretrained=False)
    assert isinstance(err.value, NctuneError) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("resnet18", ("timm", "resnet18")),
        ("TIMM: resnet18.a1_in1k", ("timm", "resnet18.a1_in1k")),
        ("torchvision:resnet18", ("torchvision", "resnet18")),
        ("hf-hub:timm/resnet18.a1_in1k", ("timm", "hf-hub:timm/resnet18.a1_in1k")),
        ("file:C:/runs/m.safetensors", ("file", "C:/runs/m.safetensors")),
    ],
)
def test_parse_spec(text: str, parsed: tuple[str, str]) -> None:
    assert parse_spec(text) == parsed


# ======================================================================= the source registry
def test_registry_lists_the_four_sources() -> None:
    assert sorted(SOURCES.names()) == ["file", "packaged", "timm", "torchvision"]
    assert list_sources() == ["file", "packaged", "timm", "torchvision"]
    assert SOURCES.get("timm") is create_timm  # each module registered its own factory


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tim:resnet18", "unknown backbone source 'tim' — did you mean 'timm'?"),
        (
            "foo:bar",
            "unknown backbone source 'foo' (registered: file, packaged, timm, torchvision)",
        ),
    ],
)
def test_recipe_rejects_an_unknown_source_in_one_line(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [f"backbone.name={name}"])
    msg = str(err.value)
    assert msg.startswith("--set: backbone.name: unknown backbone source") and expected in msg
    assert "registered: file, packaged, timm, torchvision" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "name", ["resnet18", "TIMM:resnet18", "hf-hub:timm/resnet18.a1_in1k", "file:C:/m.pth"]
)
def test_recipe_accepts_registered_and_timm_prefixes(name: str) -> None:
    assert load_recipe(None, [f"backbone.name={name}"]).backbone.name == name.strip()


# ======================================================================= input side
def test_model_kwargs_set_the_side_in_each_librarys_spelling() -> None:
    """One reading of the side model_kwargs builds for (SIZE_KWARG), in every source."""
    from nctune.backbones.factory import SIZE_KWARG, requested_size

    assert SIZE_KWARG == {"timm": "img_size", "torchvision": "image_size"}
    assert requested_size({"img_size": (48, 64)}, "timm") == 64  # nctune feeds squares
    assert requested_size({"image_size": 48}, "timm") is None  # not timm's spelling
    assert requested_size({"image_size": 48}, "torchvision") == 48
    timm_model = create_backbone("timm:test_vit", pretrained=False, img_size=48)
    assert timm_model.input_config.image_size == 48
