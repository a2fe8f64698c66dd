"""Block discovery on timm, torchvision and plain models (tiny, random init)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from nctune.backbones.blocks import list_blocks, resolve_layers
from nctune.errors import BackboneError
from tests.backbones.helpers import LITE0_BLOCKS, RESNET18_BLOCKS, VIT_KW, stage_names


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(lambda: timm.create_model("resnet18"), RESNET18_BLOCKS, id="timm-resnet18"),
        pytest.param(
            lambda: torchvision.models.resnet18(), RESNET18_BLOCKS, id="torchvision-resnet18"
        ),
        pytest.param(
            lambda: timm.create_model("resnet10t"),
            ["layer1.0", "layer2.0", "layer3.0", "layer4.0"],
            id="timm-resnet10t",
        ),
        pytest.param(
            lambda: timm.create_model("tf_efficientnet_lite0"), LITE0_BLOCKS, id="timm-lite0"
        ),
        pytest.param(
            lambda: timm.create_model("efficientnet_b0"), LITE0_BLOCKS, id="timm-efficientnet_b0"
        ),
        pytest.param(
            lambda: timm.create_model("mobilenetv3_small_050"),
            stage_names("blocks", [1, 2, 3, 2, 3, 1]),
            id="timm-mobilenetv3",
        ),
        pytest.param(
            lambda: timm.create_model("vit_tiny_patch16_224", **VIT_KW),
            ["blocks.0", "blocks.1"],
            id="timm-vit",
        ),
        pytest.param(
            lambda: timm.create_model("convnext_atto"),
            stage_names("stages", [2, 2, 6, 2], ".blocks"),
            id="timm-convnext",
        ),
        pytest.param(
            lambda: timm.create_model(
                "swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 2, 1)
            ),
            stage_names("layers", [1, 1, 2, 1], ".blocks"),
            id="timm-swin",
        ),
        pytest.param(
            lambda: torchvision.models.VisionTransformer(
                image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32
            ),
            [f"encoder.layers.encoder_layer_{i}" for i in range(3)],
            id="torchvision-vit",
        ),
        pytest.param(
            lambda: torchvision.models.efficientnet_b0(),
            ["features.0", *stage_names("features", [0, 1, 2, 2, 3, 3, 4, 1]), "features.8"],
            id="torchvision-efficientnet",
        ),
        pytest.param(
            lambda: torchvision.models.mobilenet_v3_small(),
            [f"features.{i}" for i in range(13)],
            id="torchvision-mobilenet_v3",
        ),
        pytest.param(
            lambda: torchvision.models.mobilenet_v2(),
            [f"features.{i}" for i in range(19)],
            id="torchvision-mobilenet_v2",
        ),
    ],
)
def test_list_blocks_per_family(build, expected: list[str]) -> None:
    assert list_blocks(build()) == expected


def test_list_blocks_torchvision_convnext_and_swin_keep_stages_in_order() -> None:
    from torchvision.models.convnext import CNBlockConfig

    convnext = torchvision.models.ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 1)])
    # stem, 2 blocks, downsample, 1 block
    assert list_blocks(convnext) == [
        "features.0",
        "features.1.0",
        "features.1.1",
        "features.2",
        "features.3.0",
    ]
    swin = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 1], num_heads=[1, 1], window_size=[2, 2]
    )
    # patch embedding, 2 blocks, patch merging, 1 block
    assert list_blocks(swin) == [
        "features.0",
        "features.1.0",
        "features.1.1",
        "features.2",
        "features.3.0",
    ]


def test_list_blocks_user_model_and_fallbacks() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.bn(self.conv(x))

    model = nn.Sequential(nn.Conv2d(3, 4, 1), Block(), nn.ReLU(), Block(), nn.Flatten())
    assert list_blocks(model) == ["1", "3"]
    # timm models without block containers fall back to their feature_info stages
    assert list_blocks(timm.create_model("regnetx_002")) == ["stem", "s1", "s2", "s3", "s4"]
    # parallel Inception branches are not a block sequence: ask the user instead of guessing
    with pytest.raises(BackboneError, match="analysis.layers"):
        list_blocks(torchvision.models.googlenet(init_weights=False))
    with pytest.raises(BackboneError, match="analysis.layers"):
        list_blocks(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))


# ======================================================================= resolve_layers
class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


def test_resolve_layers_on_a_plain_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _Block(), nn.ReLU(), _Block(), nn.Flatten())
    assert resolve_layers(model, None) == ["1", "3"]
    # globs match blocks first (the blocks themselves, not their insides) ...
    assert resolve_layers(model, ["*"]) == ["1", "3"]
    # ... and every module path when no block matches; depth order, no duplicates
    assert resolve_layers(model, ["3", "*.conv", "1.conv"]) == ["1.conv", "3", "3.conv"]
    with pytest.raises(BackboneError) as err:
        resolve_layers(model, ["1", "3.cnv"], field="strategy.layers")
    msg = str(err.value)
    assert msg.startswith("strategy.layers: no module matches '3.cnv' in the model")
    assert "did you mean 3.conv?" in msg and "blocks: 1, 3" in msg and "\n" not in msg


def test_resolve_layers_without_blocks_still_takes_paths() -> None:
    """A model whose blocks cannot be found resolves exact paths and globs over modules;
    only ``None`` (every block) needs the blocks."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    assert resolve_layers(model, ["0", "[03]"]) == ["0", "3"]
    with pytest.raises(BackboneError, match="no module matches 'x' in the model$"):
        resolve_layers(model, ["x"])
    with pytest.raises(BackboneError, match="cannot find the blocks"):
        resolve_layers(model, None)
