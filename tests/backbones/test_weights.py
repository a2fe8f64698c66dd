"""Weight files: wrappers, class counts, mismatches and mapping by order."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from nctune.backbones import create_backbone
from nctune.backbones.weights import map_by_order
from nctune.errors import BackboneError
from tests.backbones.helpers import images, logits


# ======================================================================= weights: PATH
def test_weights_path_roundtrip_with_wrappers(tmp_path: Path) -> None:
    src = create_backbone("timm:resnet10t", pretrained=False)
    x = images(32)
    # a DDP-style checkpoint: {'state_dict': {'module.<key>': ...}}
    pth = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.model.state_dict().items()}}, pth)
    st = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(st))
    for path in (pth, st):
        b = create_backbone("timm:resnet10t", weights=path)
        torch.testing.assert_close(logits(b, x), logits(src, x))


def test_weights_path_class_count(tmp_path: Path) -> None:
    src = create_backbone("torchvision:resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "ten.pt"
    torch.save(src.model.state_dict(), path)
    # the file's head decides the class count ...
    b = create_backbone("torchvision:resnet18", weights=path)
    assert b.num_classes == 10
    x = images(32)
    torch.testing.assert_close(logits(b, x), logits(src, x))
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


def test_packaged_mapping_checks_shapes() -> None:
    model = timm.create_model("tf_efficientnet_lite0")
    own = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    src = {f"t{i}": v for i, v in enumerate(own)}
    src["t3"] = torch.zeros(5)
    with pytest.raises(BackboneError, match="tensor 3 t3"):
        map_by_order(src, model, "packaged")
    with pytest.raises(BackboneError, match="tensors but"):
        map_by_order({"a": torch.zeros(1)}, model, "packaged")
