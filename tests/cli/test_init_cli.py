"""``nctune init`` proposes an image size and epochs from the data, and states a measured
time estimate (issue 23): 8×8 digits get ≤ 64 px, not the backbone's 224 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from nctune import starter
from nctune.cli import app
from nctune.starter import propose_epochs, propose_image_size, starter_recipe

#: A random-init backbone that builds in a blink and takes any side.
TINY = ["backbone.pretrained=false", "device=cpu"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the runner's width


@pytest.fixture
def digits_pngs(tmp_path: Path) -> Path:
    """scikit-learn's 8×8 digits as PNGs, 12 per class (the issue's slow first analysis)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "digits"
    kept: dict[int, int] = {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if kept.get(int(label), 0) >= 12:
            continue
        kept[int(label)] = kept.get(int(label), 0) + 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


# ---------------------------------------------------------------------- the rules
@pytest.mark.parametrize(
    ("side", "backbone", "expected"),
    [
        (8, 224, 32),  # 2 × 8 = 16, rounded up to the stride
        (28, 224, 64),  # MNIST-sized: 56 → 64
        (300, 224, 224),  # photos: the backbone's own side is the cap
        (100, 160, 160),  # never above the backbone's side
        (None, 240, 240),  # unknown side: the backbone's
    ],
)
def test_image_size_rule(side, backbone, expected):
    assert propose_image_size(side, backbone) == expected


def test_epochs_rule_gives_few_images_more_epochs():
    assert [propose_epochs(n) for n in (20, 499, 500, 1_999, 2_000, 9_999, 10_000, 10**6)] == [
        30, 30, 20, 20, 10, 10, 5, 5,
    ]  # fmt: skip


@pytest.mark.parametrize(("pixels", "expected"), [(8, 32), (28, 64), (300, "backbone")])
def test_starter_proposes_from_the_folder_images(make_image_folder, pixels, expected):
    folder = make_image_folder(f"px{pixels}", {"a": 3, "b": 3}, size=pixels)
    made = starter_recipe(folder, "timm:resnet10t", TINY, estimate=False)
    assert made.proposal.median_side == pixels
    if expected == "backbone":  # timm's resnet10t was trained at 176 px: that is the cap
        expected = made.proposal.backbone_size
        assert expected == 176
    assert made.recipe.data.image_size == expected
    assert made.recipe.train.epochs == 30  # 6 images at most in training
    assert "proposed by nctune init" in made.text and made.cost is None


def test_a_set_image_size_or_epochs_is_kept_and_not_proposed(make_image_folder):
    folder = make_image_folder("px8", {"a": 3, "b": 3}, size=8)
    sets = [*TINY, "data.image_size=48", "train.epochs=3"]
    made = starter_recipe(folder, "timm:resnet10t", sets, estimate=False)
    assert made.recipe.data.image_size == 48 and made.recipe.train.epochs == 3
    assert made.proposal.image_size is None and made.proposal.epochs is None
    assert "proposed by nctune init" not in made.text


def test_a_backbone_built_for_one_side_keeps_it(make_image_folder, monkeypatch):
    folder = make_image_folder("px8", {"a": 3, "b": 3}, size=8)
    monkeypatch.setattr(starter, "_accepts", lambda model, size, device: False)
    made = starter_recipe(folder, "timm:resnet10t", TINY, estimate=False)
    assert made.recipe.data.image_size == made.proposal.backbone_size == 176
    assert "takes only its own 176 px" in made.proposal.size_reason


# ---------------------------------------------------------------------- the command
def test_init_on_8px_digits_proposes_at_most_64px_and_states_the_estimate(digits_pngs, tmp_path):
    out = tmp_path / "recipe.yaml"
    res = invoke(
        "init", "--data", digits_pngs, "--backbone", "timm:resnet10t", "--out", out,
        *[a for s in TINY for a in ("--set", s)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(out.read_text())
    assert doc["data"]["image_size"] <= 64
    text = flat(res.stdout)
    assert "Image size 32 px: your images' median side is 8 px" in text
    assert "Estimate on cpu at 32 px" in text and "an estimate" in text
    assert "analyze ≈" in text and "one training epoch ≈" in text
    assert "# proposed by nctune init: your images' median side is 8 px" in out.read_text()


def test_no_estimate_skips_the_timing(digits_pngs, tmp_path):
    out = tmp_path / "recipe.yaml"
    res = invoke(
        "init", "--data", digits_pngs, "--backbone", "timm:resnet10t", "--out", out,
        "--no-estimate", *[a for s in TINY for a in ("--set", s)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Estimate" not in res.stdout and "Image size 32 px" in flat(res.stdout)


def test_measured_cost_counts_the_images_analyze_and_an_epoch_pass(make_image_folder):
    # 17 training images: one whole batch of 16 is timed, never a BatchNorm-breaking one
    folder = make_image_folder("px8", {"a": 10, "b": 10}, size=8)
    sets = [*TINY, "data.val_fraction=0.15", "data.test_fraction=0"]
    made = starter_recipe(folder, "timm:resnet10t", sets)
    cost, recipe = made.cost, made.recipe
    assert cost is not None and cost.device == "cpu" and cost.image_size == 32
    assert cost.forward_s > 0 and cost.train_s > 0
    assert cost.epoch_images == 17 and cost.analyze_images == 20  # profiled train + val
    assert cost.analyze_seconds == pytest.approx(cost.forward_s * 20)
    assert cost.epoch_seconds == pytest.approx(cost.train_s * 17 + cost.forward_s * 3)
    assert recipe.data.image_size == 32


def test_a_timing_that_fails_writes_the_recipe_without_an_estimate(
    make_image_folder, tmp_path, monkeypatch
):
    import nctune.cost

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(nctune.cost, "_timed", broken)
    folder = make_image_folder("px8", {"a": 3, "b": 3}, size=8)
    out = tmp_path / "recipe.yaml"
    res = invoke(
        "init", "--data", folder, "--backbone", "timm:resnet10t", "--out", out,
        *[a for s in TINY for a in ("--set", s)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert out.exists() and "No time estimate" in flat(res.stdout)
