"""Spec parsing and create_backbone's handling of unknown names."""

from __future__ import annotations

import pytest

from nctune.backbones import create_backbone
from nctune.backbones.factory import parse_spec
from nctune.errors import BackboneError, NctuneError


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
