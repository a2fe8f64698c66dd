"""Rendering: the profile table (rich) and the collapse plot (PNG)."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image
from rich.console import Console

from nctune.analyze import PRE_LOGITS, CollapseProfile, analyze
from nctune.report import plot_profile, profile_table
from nctune.selection import Selection, select_layers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 3, 32, 32, generator=g) + y[:, None, None, None].float()
    return [(x[i : i + 12], y[i : i + 12]) for i in range(0, n, 12)]


@pytest.fixture(scope="module")
def profiles() -> tuple[CollapseProfile, CollapseProfile]:
    """(with NCC accuracy, without) for a tiny random-init timm ResNet."""
    from nctune.backbones import Backbone, InputConfig

    torch.manual_seed(0)
    model = timm.create_model("resnet10t").eval()
    backbone = Backbone(
        model,
        spec="timm:resnet10t",
        source="timm",
        arch="resnet10t",
        input_config=InputConfig(32, (0.5,) * 3, (0.5,) * 3),
    )
    with_val = analyze(backbone, _batches(36, 1), val_loader=_batches(24, 2), num_classes=3)
    with_val.dataset = "toy shapes"
    without = analyze(backbone, _batches(36, 1), num_classes=3)
    return with_val, without


def _render(table) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(table)
    return console.export_text()


def test_profile_table_lists_every_layer(profiles):
    profile, _ = profiles
    rec = select_layers(profile, "last")
    text = _render(profile_table(profile, rec))
    for layer in profile.layers:
        assert layer.name in text
        assert str(layer.dim) in text
    assert f"{rec.layers[0]} ◀" in text  # the recommendation is marked
    assert f"{PRE_LOGITS} ◀" not in text
    assert "timm:resnet10t" in text and "toy shapes" in text
    assert f"{profile.num_samples} training samples" in text
    acc = profile.layers[0].ncc_accuracy
    assert f"{100 * acc:.1f}%" in text


def test_profile_table_without_validation(profiles):
    _, profile = profiles
    text = _render(profile_table(profile))
    rows = [line for line in text.splitlines() if "layer1.0" in line]
    assert len(rows) == 1 and rows[0].rstrip(" │|").endswith("–")  # no NCC accuracy
    assert "◀" not in text


@pytest.mark.parametrize("with_val", [True, False])
def test_plot_profile_writes_a_png(profiles, tmp_path, with_val):
    profile = profiles[0] if with_val else profiles[1]
    rec = Selection("last", ["layer4.0"], "deepest")
    out = plot_profile(profile, tmp_path / "nested" / "collapse.png", rec)
    assert out == tmp_path / "nested" / "collapse.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
    # atomic write: nothing but the PNG is left in the folder
    assert [p.name for p in out.parent.iterdir()] == ["collapse.png"]
