"""timm: pre-logits features and class counts (random init)."""

from __future__ import annotations

import torch

from nctune.backbones import create_backbone
from nctune.config import BackboneConfig
from tests.backbones.helpers import images


def test_features_match_timm_pre_logits() -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    x = images(32)
    with torch.no_grad():
        ref = b.model.forward_head(b.model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(b.features(x), ref)
    assert not b.classifier._forward_pre_hooks, "features() must remove its hook"


def test_num_classes_kwarg_and_config() -> None:
    cfg = BackboneConfig(name="resnet18", pretrained=False, model_kwargs={"num_classes": 3})
    b = create_backbone(cfg)
    assert b.spec == "timm:resnet18" and b.num_classes == 3 and not b.model.training
    # explicit arguments override the config
    b = create_backbone(cfg, num_classes=4)
    assert b.num_classes == 4
