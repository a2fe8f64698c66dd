"""nctune.save_finetuned: an own loop's model saved as a run folder load_finetuned reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import nctune
from nctune.errors import ConfigError


def _applied(strategy="scl", **kw):
    torch.manual_seed(0)
    backbone = nctune.create_backbone("timm:resnet10t", pretrained=False)
    layers = {"scl": ["layer3.0"], "lora": ["layer4.0"]}.get(strategy)
    return backbone, nctune.apply_strategy(backbone, strategy, 3, layers=layers, **kw)


def test_round_trip_keeps_weights_classes_and_input_config(tmp_path):
    backbone, applied = _applied()
    ic = dataclasses.replace(backbone.input_config, image_size=32)
    folder = nctune.save_finetuned(applied.model, tmp_path / "run", classes=["a", "b", "c"],
                                   input_config=ic)  # fmt: skip
    assert folder == tmp_path / "run" and (folder / "model.safetensors").is_file()
    model = nctune.load_finetuned(folder)
    assert model.classes == ["a", "b", "c"] and model.input_config.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    applied.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), applied.model(x))
    assert model.predict(torch.randn(3, 32, 32)).classes == ["a", "b", "c"]


def test_lora_is_saved_merged_from_a_copy(tmp_path):
    pytest.importorskip("peft")
    backbone, applied = _applied("lora", lora_rank=2)
    with torch.no_grad():  # adapters that change the output (B starts at zero)
        for name, p in applied.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ic = dataclasses.replace(backbone.input_config, image_size=32)
    nctune.save_finetuned(applied, tmp_path / "run", input_config=ic)  # the AppliedStrategy
    assert hasattr(applied.model, "merge_and_unload")  # still the PEFT model being trained
    model = nctune.load_finetuned(tmp_path / "run")
    assert model.classes is None and model.predict(torch.randn(3, 32, 32)).classes == [
        "0",
        "1",
        "2",
    ]
    x = torch.randn(2, 3, 32, 32)
    applied.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), applied.model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": ["a", "b"]}, "classes: need 3 distinct"),
        ({"classes": ["a", "a", "b"]}, "classes: need 3 distinct"),
        ({"input_config": {"image_size": 32}}, "input_config"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(tmp_path, kwargs, match):
    _, applied = _applied("linear")
    with pytest.raises(ConfigError, match=match):
        nctune.save_finetuned(applied.model, tmp_path / "run", **kwargs)
    with pytest.raises(ConfigError, match="model"):
        nctune.save_finetuned(torch.nn.Linear(2, 3), tmp_path / "run")
    assert not (tmp_path / "run").exists()
