"""analyze(): the profile equals CollapseStats fed by hand with the same features.

The reference takes every feature with its own forward hooks (a full forward, no early
stop) and pools by hand, so a wrong tap, pooling, label pairing or pass would show up.
Tiny random-init models at 32 px on CPU; nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import ClassVar

import pytest
import timm
import torch
import torchvision
from torch import nn

from nctune.analyze import PRE_LOGITS, CollapseProfile, analyze, analyze_recipe
from nctune.backbones import Backbone, InputConfig, list_blocks
from nctune.collapse import CollapseStats, ncc_accuracy
from nctune.config import load_recipe
from nctune.errors import BackboneError, ConfigError
from nctune.runs._io import to_json
from nctune.selection import select_layers

ROOT = Path(__file__).resolve().parents[1]
SIZE, K, BATCH = 32, 4, 16
TINY_INPUT = InputConfig(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
METRICS = ("nc1", "trace_ratio", "cdnv", "nc2_equinorm", "nc2_equiangle")
REL = 1e-9


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images whose class shifts a fixed random pattern, so collapse and NCC are not trivial."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(K, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(99))
    y = torch.randperm(n, generator=g) % K  # balanced, in a different order in each batch
    x = torch.randn(n, 3, SIZE, SIZE, generator=g) + 1.5 * patterns[y]
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, n, BATCH)]


TRAIN = _batches(48, seed=1)
VAL = _batches(32, seed=2)


def _backbone(model: nn.Module, spec: str) -> Backbone:
    return Backbone(model.eval(), spec=spec, source="test", arch=spec, input_config=TINY_INPUT)


def _reference_features(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    names: list[str],
    pool_fn,
    backbone: Backbone | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{name: (N, D)} from plain forward hooks on a full forward, and the labels."""
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, out, n=n: feats[n].append(pool_fn(out))
        )
        for n in names
        if n != PRE_LOGITS
    ]
    labels = []
    try:
        with torch.no_grad():
            for x, y in batches:
                if backbone is not None and PRE_LOGITS in names:
                    feats[PRE_LOGITS].append(backbone.features(x))  # runs the whole model
                else:
                    model(x)
                labels.append(y)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(labels)


def _by_hand(feats: torch.Tensor, labels: torch.Tensor):
    # one update with all samples: also checks that batching does not matter
    return CollapseStats(K, mode="full").update(feats, labels).compute()


def _assert_profile_matches(profile: CollapseProfile, train, val=None) -> None:
    feats, labels = train
    assert [layer.name for layer in profile.layers] == list(feats)
    assert profile.num_samples == labels.numel() and profile.num_classes == K
    for i, layer in enumerate(profile.layers):
        assert layer.index == i
        want = _by_hand(feats[layer.name], labels)
        assert layer.dim == feats[layer.name].shape[1] == want.dim
        for key in METRICS:
            got, ref = getattr(layer.metrics, key), getattr(want, key)
            assert math.isclose(got, ref, rel_tol=REL), (layer.name, key, got, ref)
        if val is None:
            assert layer.ncc_accuracy is None
        else:
            vfeats, vlabels = val
            ref = ncc_accuracy(vfeats[layer.name], vlabels, want.class_means, want.classes)
            assert layer.ncc_accuracy == pytest.approx(ref, abs=1e-12), layer.name


def _gap(out: torch.Tensor) -> torch.Tensor:
    return out.mean(dim=(2, 3))


# ======================================================================= equality with CollapseStats
def test_backbone_profile_equals_collapse_stats_by_hand():
    backbone = _backbone(timm.create_model("resnet10t"), "resnet10t")
    names = [*backbone.block_names, PRE_LOGITS]
    train = _reference_features(backbone.model, TRAIN, names, _gap, backbone)
    val = _reference_features(backbone.model, VAL, names, _gap, backbone)
    profile = analyze(backbone, TRAIN, val_loader=VAL, num_classes=K)
    _assert_profile_matches(profile, train, val)
    assert [layer.tunable for layer in profile.layers] == [True] * (len(names) - 1) + [False]
    assert profile.layers[-1].dim == backbone.num_features
    # the features carry class structure, so the check above is not comparing noise
    assert profile.penultimate.ncc_accuracy > 1.5 / K


def test_plain_module_uses_its_blocks_without_pre_logits():
    model = torchvision.models.resnet18().eval()
    names = list_blocks(model)
    train = _reference_features(model, TRAIN, names, _gap)
    profile = analyze(model, TRAIN, num_classes=K, include_pre_logits=True)
    _assert_profile_matches(profile, train)
    assert [layer.name for layer in profile.layers] == [
        f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)
    ]
    assert profile.blocks == profile.layers  # no pre_logits pseudo-layer on a plain module
    assert profile.backbone is None


def test_layers_globs_pick_blocks_in_depth_order():
    backbone = _backbone(torchvision.models.resnet18(), "torchvision:resnet18")
    layers = ["layer3.*", "layer1.0"]  # out of order on purpose
    names = ["layer1.0", "layer3.0", "layer3.1", PRE_LOGITS]
    train = _reference_features(backbone.model, TRAIN, names, _gap, backbone)
    profile = analyze(backbone, TRAIN, layers, num_classes=K)
    _assert_profile_matches(profile, train)
    without = analyze(backbone, TRAIN, layers, num_classes=K, include_pre_logits=False)
    assert [layer.name for layer in without.layers] == names[:-1]
    # a sub-module path that is not a block can be tapped too
    inner = analyze(backbone, TRAIN, ["layer2.0.conv1"], num_classes=K, include_pre_logits=False)
    assert inner.layers[0].name == "layer2.0.conv1" and inner.layers[0].dim == 128
    with pytest.raises(BackboneError, match="layer7"):
        analyze(backbone, TRAIN, ["layer7.*"], num_classes=K)


def test_two_pass_mode_gives_the_full_mode_numbers():
    backbone = _backbone(timm.create_model("resnet10t"), "resnet10t")
    full = analyze(backbone, TRAIN, val_loader=VAL, num_classes=K)
    phases: list[str] = []
    two = analyze(
        backbone,
        TRAIN,
        val_loader=VAL,
        num_classes=K,
        max_full_dim=100,  # layer1 (64 wide) stays full, every wider layer needs two passes
        progress=lambda phase, done, total: phases.append(phase),
    )
    modes = {layer.name: layer.metrics.mode for layer in two.layers}
    assert modes["layer1.0"] == "full"
    assert {modes[n] for n in ("layer2.0", "layer3.0", "layer4.0", PRE_LOGITS)} == {"two_pass"}
    assert "train (pass 2)" in phases
    assert {layer.metrics.mode for layer in full.layers} == {"full"}
    for a, b in zip(full.layers, two.layers, strict=True):
        assert a.name == b.name and a.dim == b.dim
        for key in METRICS:
            assert math.isclose(getattr(a.metrics, key), getattr(b.metrics, key), rel_tol=REL)
        assert a.ncc_accuracy == b.ncc_accuracy


@pytest.mark.parametrize("token_pool", ["cls", "mean"])
def test_vit_token_pool(token_pool):
    model = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=8, depth=3)
    backbone = _backbone(model, "vit")
    assert backbone.num_prefix_tokens == 1

    def pool_tokens(out: torch.Tensor) -> torch.Tensor:
        return out[:, 0] if token_pool == "cls" else out[:, 1:].mean(dim=1)

    names = [*backbone.block_names, PRE_LOGITS]
    train = _reference_features(model, TRAIN, names, pool_tokens, backbone)
    profile = analyze(backbone, TRAIN, num_classes=K, token_pool=token_pool)
    _assert_profile_matches(profile, train)


def test_torchvision_vit_as_plain_module_pools_its_class_token():
    model = torchvision.models.VisionTransformer(
        image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()
    names = list_blocks(model)
    assert names == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    cls = _reference_features(model, TRAIN, names, lambda out: out[:, 0])
    mean = _reference_features(model, TRAIN, names, lambda out: out[:, 1:].mean(dim=1))
    _assert_profile_matches(analyze(model, TRAIN, num_classes=K, token_pool="cls"), cls)
    _assert_profile_matches(analyze(model, TRAIN, num_classes=K, token_pool="mean"), mean)


class _ConvHeadNet(nn.Module):
    """A classifier that is a 1×1 conv on pooled maps (like timm's DLA)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(x))).flatten(1)

    def get_classifier(self) -> nn.Module:
        return self.fc


def test_conv_classifier_pre_logits_are_flattened():
    backbone = _backbone(_ConvHeadNet(), "convhead")
    assert backbone.classifier_name == "fc"
    names = ["blocks.0", "blocks.1", PRE_LOGITS]
    train = _reference_features(backbone.model, TRAIN, names, _gap, backbone)
    profile = analyze(backbone, TRAIN, num_classes=K)
    _assert_profile_matches(profile, train)
    assert profile[PRE_LOGITS].dim == 12


def test_chunked_statistics_are_bounded_and_exact(monkeypatch):
    analyze_mod = importlib.import_module("nctune.analyze")  # nctune.analyze is the verb

    backbone = _backbone(timm.create_model("resnet10t"), "resnet10t")
    names = [*backbone.block_names, PRE_LOGITS]
    train = _reference_features(backbone.model, TRAIN, names, _gap, backbone)
    per_sample = 4 * sum(f.shape[1] for f in train[0].values())  # float32 bytes, all layers
    rows: dict[int, list[int]] = {}  # per CollapseStats object
    update = CollapseStats.update

    def spy(self, features, labels):
        rows.setdefault(id(self), []).append(features.shape[0])
        return update(self, features, labels)

    monkeypatch.setattr(CollapseStats, "update", spy)
    # a limit that two batches reach: flushes of 32 samples, then the last 16 at the end
    monkeypatch.setattr(analyze_mod, "FLUSH_BYTES", int(1.5 * BATCH * per_sample))
    profile = analyze(backbone, TRAIN, num_classes=K)
    assert len(rows) == len(names)
    assert set(map(tuple, rows.values())) == {(2 * BATCH, BATCH)}

    # a loader that refills one label tensor in place must still pair labels correctly
    shared = torch.empty(BATCH, dtype=torch.long)

    def refilling():
        for x, y in TRAIN:
            shared.copy_(y)
            yield x, shared

    rows.clear()
    monkeypatch.setattr(analyze_mod, "FLUSH_BYTES", 1 << 30)  # everything in one flush
    refilled = analyze(backbone, refilling(), num_classes=K)
    assert set(map(tuple, rows.values())) == {(3 * BATCH,)}
    monkeypatch.undo()
    _assert_profile_matches(profile, train)
    _assert_profile_matches(refilled, train)


# ======================================================================= side effects
def test_progress_modes_hooks_and_weights_are_left_as_found():
    model = torchvision.models.resnet18()
    model.train()
    model.layer2.eval()  # a mixed state must come back exactly
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls: list[tuple[str, int, int | None]] = []
    analyze(
        model,
        TRAIN,
        ["layer1.0", "layer4.1"],
        val_loader=iter(VAL),  # no len(): total is None
        num_classes=K,
        progress=lambda *c: calls.append(c),
    )
    assert {n: m.training for n, m in model.named_modules()} == modes
    # ran in eval mode: batch-norm running statistics did not move
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    n = len(TRAIN)
    train_calls = [c for c in calls if c[0] == "train"]
    val_calls = [c for c in calls if c[0] == "val"]
    assert train_calls == [("train", i, n) for i in range(n + 1)]
    assert val_calls == [("val", i, None) for i in range(len(VAL) + 1)]
    assert calls == train_calls + val_calls


def test_num_classes_from_the_loader_dataset():
    class WithClasses(torch.utils.data.TensorDataset):
        classes: ClassVar[list[str]] = [str(i) for i in range(K)]

    x = torch.cat([b[0] for b in TRAIN])
    y = torch.cat([b[1] for b in TRAIN])
    model = torchvision.models.resnet18().eval()
    loader = torch.utils.data.DataLoader(WithClasses(x, y), batch_size=BATCH)
    assert analyze(model, loader, ["layer1.0"]).num_classes == K
    plain = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    with pytest.raises(ConfigError, match="num_classes"):
        analyze(model, plain, ["layer1.0"])


def test_deeper_blocks_do_not_run():
    model = torchvision.models.resnet18().eval()
    ran: list[str] = []
    for name in ("layer2.1", "layer3.0", "layer4.1", "fc"):
        module = model.get_submodule(name)
        module.forward = (lambda f, n: lambda *a: ran.append(n) or f(*a))(module.forward, name)
    analyze(model, TRAIN, ["layer1.*", "layer2.0"], val_loader=VAL, num_classes=K)
    assert ran == []


# ======================================================================= analyze_recipe
LAYER_KEYS = {"index", "name", "dim", "nc1", "trace_ratio", "cdnv", "ncc_accuracy"}
TOP_KEYS = {"backbone", "dataset", "num_samples", "num_classes", "layers", "recommendation"}
# beyond DESIGN §4 (extending is allowed, renaming is not); listed so a change is deliberate
EXTRA_TOP_KEYS = {"seconds"}
EXTRA_LAYER_KEYS = {"nc2_equinorm", "nc2_equiangle", "tunable"}

TINY_QUICKSTART = [
    "backbone.name=timm:resnet10t",
    "backbone.pretrained=false",
    "data.image_size=32",
    "data.samples_per_class=6",
    "data.val_fraction=0.02",
    "data.batch_size=32",
    "analysis.max_samples=40",
    "device=cpu",
]


def test_analyze_recipe_writes_the_design_json_deterministically():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", TINY_QUICKSTART)
    docs = []
    for _ in range(2):
        result = analyze_recipe(recipe)
        doc = json.loads(to_json(result.to_dict()))  # strict JSON, as analysis.json is written
        assert doc.pop("seconds") >= 0
        docs.append(doc)
    first, second = docs
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)

    assert set(first) | EXTRA_TOP_KEYS == TOP_KEYS | EXTRA_TOP_KEYS
    assert first["backbone"] == "timm:resnet10t"
    assert "fashion_mnist" in first["dataset"]
    assert first["num_samples"] == 40 and first["num_classes"] == 10
    blocks = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert [layer["name"] for layer in first["layers"]] == [*blocks, PRE_LOGITS]
    for i, layer in enumerate(first["layers"]):
        assert set(layer) == LAYER_KEYS | EXTRA_LAYER_KEYS
        assert layer["index"] == i and layer["dim"] > 0 and layer["nc1"] > 0
        assert 0.0 <= layer["ncc_accuracy"] <= 1.0
    rec = first["recommendation"]
    assert set(rec) >= {"rule", "layers", "reason"}
    assert rec["layers"] and set(rec["layers"]) <= set(blocks)


def test_analyze_recipe_recommends_with_the_recipes_rule_and_threshold():
    base = load_recipe(ROOT / "recipes" / "quickstart.yaml", TINY_QUICKSTART)
    result = analyze_recipe(base)
    assert result.recommendation.rule == "knee"
    for rule in ("last", "min_nc1", "max_ncc"):
        recipe = base.model_copy(
            update={"strategy": base.strategy.model_copy(update={"rule": rule})}
        )
        # the same profile, the rule named in the recipe
        assert select_layers(result.profile, rule) == analyze_recipe(recipe).recommendation
    # a threshold no block-over-block drop reaches: knee falls back to the deepest block
    strict = base.model_copy(
        update={"strategy": base.strategy.model_copy(update={"threshold": 0.999})}
    )
    rec = analyze_recipe(strict).recommendation
    assert rec.layers == ["layer4.0"] and "never falls" in rec.reason


def test_analyze_recipe_never_scores_ncc_on_the_test_split():
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [*TINY_QUICKSTART, "data.val_fraction=0", "data.test_fraction=0.2"],
    )
    result = analyze_recipe(recipe)
    assert result.data.val is None and result.data.test is not None
    assert all(layer.ncc_accuracy is None for layer in result.profile.layers)
    assert result.recommendation.rule == "knee"


def test_analyze_and_finetune_profile_the_same_samples():
    from nctune.finetune import _profile, prepare

    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [*TINY_QUICKSTART, "data.augment=true", "analysis.max_samples=30"],
    )
    analysed = analyze_recipe(recipe).profile
    backbone, _, plain, device = prepare(recipe)
    profiled = _profile(backbone, plain, recipe, device, None, "profile")
    assert analysed.num_samples == profiled.num_samples == 30
    for a, b in zip(analysed.layers, profiled.layers, strict=True):
        assert a.name == b.name and a.nc1 == pytest.approx(b.nc1, rel=1e-9)


def test_a_stop_request_ends_the_pass_between_batches_and_leaves_the_model_as_found():
    from nctune.errors import Interrupted

    model = torchvision.models.resnet18()
    model.train()
    polled: list[int] = []

    def stop_after_two() -> bool:
        polled.append(1)
        return len(polled) >= 2

    with pytest.raises(Interrupted, match="train pass"):
        analyze(model, TRAIN, ["layer1.0"], num_classes=K, should_stop=stop_after_two)
    assert len(polled) == 2  # polled once per batch, and it stopped at the second
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert isinstance(Interrupted(), KeyboardInterrupt)  # unknown to a caller: plain Ctrl-C
