"""file: backbones: Backbone.save files, timm train.py checkpoints and run folders."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nctune.backbones import Backbone, create_backbone
from nctune.errors import ArtifactError, BackboneError, NctuneError
from nctune.runs._io import MODEL_FILE, RECIPE_FILE
from nctune.runs.artifacts import load_finetuned, save_model
from nctune.training.strategies import apply_strategy
from tests.backbones.helpers import VIT_KW, images, logits


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
    x = images(32)
    torch.testing.assert_close(logits(loaded, x), logits(b, x))
    # a file backbone saves again as its architecture, not as a pointer to the file
    again = tmp_path / "again.safetensors"
    loaded.save(again)
    torch.testing.assert_close(logits(create_backbone(f"file:{again}"), x), logits(b, x))
    # a requested class count applies after loading, as with every other source
    assert create_backbone(f"file:{path}", num_classes=7).num_classes == 7


def test_save_packaged_and_torchvision_roundtrip(tmp_path: Path) -> None:
    for spec in ("packaged:efficientnet_lite0", "torchvision:resnet18"):
        b = create_backbone(spec, pretrained=spec.startswith("packaged"))
        path = tmp_path / "m.safetensors"
        b.save(path)
        loaded = create_backbone(f"file:{path}")
        assert loaded.input_config == b.input_config
        x = images(32)
        torch.testing.assert_close(logits(loaded, x), logits(b, x))


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
    x = images(32)
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


# ======================================================================= run folders
def _run_folder(tmp_path: Path, strategy: str, **kwargs) -> tuple[Path, Backbone]:
    """A run folder as nctune finetune leaves it, for a tiny model with non-trivial weights."""
    src = create_backbone("timm:resnet10t", pretrained=False)
    applied = apply_strategy(src, strategy, num_classes=3, **kwargs)
    with torch.no_grad():  # stand-in for training: move every weight (LoRA's B starts at 0)
        for p in applied.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = tmp_path / strategy
    save_model(applied.export().eval(), run / MODEL_FILE, extra={"classes": ["a", "b", "c"]})
    (run / RECIPE_FILE).write_text("{}\n")
    return run, src


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [("linear", {}), ("lora", {"layers": ["layer4.0"]}), ("scl", {"layers": ["layer3.0"]})],
)
def test_run_folder_is_read_without_artifacts(tmp_path: Path, strategy: str, kwargs) -> None:
    """file:<run> equals the run's fine-tuned model as load_finetuned rebuilds it: the same
    trunk (LoRA merged), its head as the classifier unless an SCL skip feeds it."""
    run, _ = _run_folder(tmp_path, strategy, **kwargs)
    b = create_backbone(f"file:{run}")
    tuned = load_finetuned(run)
    assert (b.spec, b.source, b.arch, b.num_classes) == (f"file:{run}", "file", "resnet10t", 3)
    assert b.input_config == tuned.input_config and not b.model.training
    x = images(32, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(b.features(x), tuned.backbone(x))
        if strategy == "scl":  # the head also reads a block: the classifier is fresh
            assert not torch.allclose(b.classifier.weight, tuned.head.weight[:, -512:])
        else:
            torch.testing.assert_close(b.model(x), tuned(x))
    # it saves and reloads as its architecture, like any other backbone
    b.save(tmp_path / "again.safetensors")
    again = create_backbone(f"file:{tmp_path / 'again.safetensors'}")
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), b.model(x))


def test_run_folder_with_foreign_weights_fails_in_one_line(tmp_path: Path) -> None:
    run, _ = _run_folder(tmp_path, "linear")
    tensors = load_file(str(run / MODEL_FILE))
    with safe_open(str(run / MODEL_FILE), framework="pt") as f:
        meta = f.metadata()
    tensors["backbone.extra"] = torch.zeros(1)
    save_file(tensors, str(run / MODEL_FILE), metadata=meta)
    with pytest.raises(ArtifactError, match=r"model\.safetensors: weights do not match.*extra"):
        create_backbone(f"file:{run}")
