"""The Backbone: blocks and layouts, layer resolution, features and the classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nctune.backbones import BlockInfo, create_backbone
from nctune.errors import BackboneError
from tests.backbones.helpers import RESNET18_BLOCKS, VIT_KW, images, logits


# ======================================================================= Backbone: blocks()
def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_blocks_resnet_dims_layouts_cached() -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    calls = _count_forwards(b.model)
    b.model.train()
    infos = b.blocks()
    assert b.model.training, "blocks() must restore the training mode"
    assert calls[0] == 1
    assert infos == b.blocks() and calls[0] == 1, "blocks() runs one dummy forward, then caches"
    assert [i.name for i in infos] == RESNET18_BLOCKS
    assert [i.index for i in infos] == list(range(8))
    modules = dict(b.model.named_modules())
    assert [i.dim for i in infos] == [modules[i.name].bn2.num_features for i in infos]
    assert {i.layout for i in infos} == {"NCHW"}
    assert all(isinstance(i, BlockInfo) for i in infos)


def test_blocks_efficientnet_dims() -> None:
    b = create_backbone("timm:tf_efficientnet_lite0", pretrained=False)
    modules = dict(b.model.named_modules())
    for info in b.blocks():
        block = modules[info.name]
        last = block.conv_pwl if hasattr(block, "conv_pwl") else block.conv_pw
        assert (info.dim, info.layout) == (last.out_channels, "NCHW"), info.name


def test_blocks_vit_tokens_and_prefix() -> None:
    b = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, **VIT_KW)
    assert b.input_config.image_size == 32 and b.num_prefix_tokens == 1
    assert [(i.dim, i.layout) for i in b.blocks()] == [(192, "NLC"), (192, "NLC")]


def test_blocks_convnext_and_swin_layouts() -> None:
    convnext = create_backbone("timm:convnext_atto", pretrained=False)
    dims = [i.dim for i in convnext.blocks()]
    assert dims == [40] * 2 + [80] * 2 + [160] * 6 + [320] * 2
    assert {i.layout for i in convnext.blocks()} == {"NCHW"}
    swin = create_backbone(
        "timm:swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=64,
        window_size=2,
        depths=(1, 1, 1, 1),
        embed_dim=16,
        num_heads=(1, 1, 1, 1),
    )
    assert [(i.dim, i.layout) for i in swin.blocks()] == [
        (16, "NHWC"),
        (32, "NHWC"),
        (64, "NHWC"),
        (128, "NHWC"),
    ]
    assert swin.num_prefix_tokens == 0


def test_layer_info_for_any_module() -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    info = b.layer_info(["layer1.0.conv1", "global_pool", "fc"])
    assert [(i.dim, i.layout) for i in info] == [(64, "NCHW"), (512, "NC"), (1000, "NC")]
    with pytest.raises(BackboneError, match="nope"):
        b.layer_info(["nope"])


# ======================================================================= resolve_layers
def test_resolve_layers() -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    assert b.resolve_layers(None) == RESNET18_BLOCKS
    # globs match blocks first, so layer4.* means layer4's blocks, not their insides
    assert b.resolve_layers(["layer4.*"]) == ["layer4.0", "layer4.1"]
    # depth order and no duplicates, whatever the order given
    assert b.resolve_layers(["layer4.1", "layer1.*", "layer4.1"]) == [
        "layer1.0",
        "layer1.1",
        "layer4.1",
    ]
    # any module path, and globs reaching inside blocks when no block matches
    assert b.resolve_layers(["layer2.0.conv1"]) == ["layer2.0.conv1"]
    assert b.resolve_layers(["layer3.*.conv2"]) == ["layer3.0.conv2", "layer3.1.conv2"]


@pytest.mark.parametrize("bad", ["layer9", "layer4.O", "stages.*"])
def test_resolve_layers_unknown(bad: str) -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    with pytest.raises(BackboneError) as err:
        b.resolve_layers(["layer1.0", bad])
    msg = str(err.value)
    assert bad in msg and "layer1.0" in msg and "analysis.layers" in msg
    assert "\n" not in msg


def test_resolve_layers_suggests_close_name() -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    with pytest.raises(BackboneError, match=r"did you mean layer4\.[01]\?"):
        b.resolve_layers(["layer4.O"])


# ======================================================================= features / classifier
@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        ("timm:resnet18", {}),
        ("timm:vit_tiny_patch16_224", VIT_KW),
        ("timm:convnext_atto", {}),
        ("torchvision:mobilenet_v3_small", {}),
    ],
)
def test_features_are_classifier_input(spec: str, kwargs: dict) -> None:
    b = create_backbone(spec, pretrained=False, **kwargs)
    x = images(32, batch=3)
    with torch.no_grad():
        feats = b.features(x)
        assert feats.shape == (3, b.num_features)
        torch.testing.assert_close(b.classifier(feats), b.model(x))


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("timm:resnet18", "fc"),
        ("timm:tf_efficientnet_lite0", "classifier"),
        ("timm:convnext_atto", "head.fc"),
        ("torchvision:resnet18", "fc"),
        ("torchvision:mobilenet_v3_small", "classifier.3"),
    ],
)
def test_reset_classifier(spec: str, name: str) -> None:
    b = create_backbone(spec, pretrained=False)
    assert b.classifier_name == name and b.num_classes == 1000
    width = b.num_features
    b.reset_classifier(7)
    head = b.model.get_submodule(name)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (width, 7)
    assert b.num_classes == 7 and b.num_features == width
    assert logits(b, images(32)).shape == (2, 7)
    if hasattr(b.model, "num_classes"):
        assert b.model.num_classes == 7
    with pytest.raises(BackboneError):
        b.reset_classifier(0)
