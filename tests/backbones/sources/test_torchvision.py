"""torchvision: models built with get_model (random init)."""

from __future__ import annotations

import pytest

from nctune.backbones import create_backbone
from nctune.backbones.backbone import IMAGENET_MEAN
from nctune.errors import BackboneError


def test_torchvision_vit_backbone() -> None:
    b = create_backbone("torchvision:vit_b_32", pretrained=False, image_size=32)
    assert b.source == "torchvision" and b.arch == "vit_b_32"
    assert b.classifier_name == "heads.head" and b.num_features == 768
    assert b.num_prefix_tokens == 1 and b.input_config.image_size == 32
    assert b.input_config.mean == IMAGENET_MEAN
    infos = b.blocks()
    assert [i.name for i in infos] == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert {(i.dim, i.layout) for i in infos} == {(768, "NLC")}


def test_bad_model_kwargs() -> None:
    with pytest.raises(BackboneError, match="backbone.model_kwargs"):
        create_backbone("torchvision:resnet18", pretrained=False, not_an_arg=1)
