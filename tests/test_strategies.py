"""Strategies: what trains, the SCL head, frozen BatchNorm, LoRA, and saved models.

Tiny random-init timm test models (``test_resnet``, ``test_efficientnet``, ``test_vit``,
~0.1-0.4 M parameters) at 32 px on CPU; nothing is downloaded. Every expectation is
computed independently of nctune: parameter counts from module shapes, SCL features from
hooks on an untouched copy of the network.
"""

from __future__ import annotations

import copy
import fnmatch
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nctune.analyze import PRE_LOGITS, CollapseProfile, LayerCollapse, analyze
from nctune.backbones import Backbone, create_backbone
from nctune.collapse import CollapseMetrics
from nctune.errors import ArtifactError, BackboneError, ConfigError, NctuneError
from nctune.runs.artifacts import load_finetuned, save_model
from nctune.selection import select_layers
from nctune.training.heads import TunedModel
from nctune.training.strategies import STRATEGIES, apply_strategy, lora_targets

SIZE = 32
K = 5
SPECS = {
    "resnet": ("timm:test_resnet", {}),
    "efficientnet": ("timm:test_efficientnet", {}),
    "vit": ("timm:test_vit", {"img_size": SIZE}),
}
#: a block in the middle of each network: frozen blocks on both sides of it
MIDDLE = {"resnet": "layer3.0", "efficientnet": "blocks.2.0", "vit": "blocks.3"}
#: two blocks for the ``layers`` strategy (not adjacent, so something frozen sits between)
TWO = {
    "resnet": ["layer2.0", "layer4.0"],
    "efficientnet": ["blocks.1.0", "blocks.3.0"],
    "vit": ["blocks.1", "blocks.4"],
}
#: token-map layouts need a class-token/patch-mean choice; conv maps do not
POOLS = [("resnet", "cls"), ("efficientnet", "cls"), ("vit", "cls"), ("vit", "mean")]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Models this small gain nothing from threads, and a busy machine makes OpenMP's
    spinning threads ~100x slower; restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def _built() -> dict[str, Backbone]:
    out = {}
    for key, (spec, kw) in SPECS.items():
        b = create_backbone(spec, pretrained=False, **kw)
        # timm zero-initialises the last norm of each residual branch, which makes the
        # branch a no-op whose frozen-norm adapters never get a gradient; trained weights
        # never look like that
        with torch.no_grad():
            for m in b.model.modules():
                if isinstance(m, nn.BatchNorm2d) and not m.weight.any():
                    m.weight.fill_(1.0)
        b.blocks()  # one dummy forward, shared by every copy
        out[key] = b
    return out


@pytest.fixture
def make(_built):
    """``make(key)`` → a fresh Backbone (apply_strategy edits the model in place)."""
    return lambda key: copy.deepcopy(_built[key])


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names_under(model: nn.Module, prefixes: list[str]) -> set[str]:
    """Parameter names of ``model`` inside any of the module paths ``prefixes``."""
    return {
        n
        for n, _ in model.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in prefixes)
    }


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def head_count(in_features: int) -> int:
    return in_features * K + K


def lora_count(module: nn.Module, r: int) -> int:
    """LoRA's A and B for one layer, by hand: A maps in→r (with the conv's kernel), B r→out."""
    if isinstance(module, nn.Linear):
        return r * (module.in_features + module.out_features)
    kh, kw = module.kernel_size
    return r * module.in_channels * kh * kw + module.out_channels * r


def fake_profile(names: list[str], nc1s: list[float]) -> CollapseProfile:
    z = torch.zeros(2)

    def metrics(v: float) -> CollapseMetrics:
        return CollapseMetrics(
            v, 1.0, 1.0, 0.0, 0.0, 10, 2, 2, 1.0, 1.0, z, z, torch.zeros(2, 2), z
        )

    layers = [
        LayerCollapse(i, n, 8, metrics(v), None)
        for i, (n, v) in enumerate(zip(names, nc1s, strict=True))
    ]
    layers.append(LayerCollapse(len(layers), PRE_LOGITS, 8, metrics(1e-9), None, tunable=False))
    return CollapseProfile(layers, 10, 2, 0.1)


# ------------------------------------------------------------------ what trains
@pytest.mark.parametrize("key", list(SPECS))
def test_linear_trains_the_head_only(make, key):
    b = make(key)
    d = b.num_features
    applied = apply_strategy(b, "linear", K)
    model = applied.model
    assert isinstance(model, TunedModel) and applied.strategy == "linear"
    assert trainable(model) == {"head.weight", "head.bias"}
    assert model.head.in_features == d and model.head.out_features == K
    assert applied.trainable_params == head_count(d)
    assert applied.total_params == sum(p.numel() for p in model.parameters())
    assert applied.tuned_layers == []
    assert model(images()).shape == (4, K)


@pytest.mark.parametrize("key", list(SPECS))
def test_full_trains_everything(make, key):
    b = make(key)
    d = b.num_features
    n_backbone = numel(b.model) - numel(b.classifier)  # the old classifier is dropped
    applied = apply_strategy(b, "full", K)
    assert trainable(applied.model) == {n for n, _ in applied.model.named_parameters()}
    assert applied.trainable_params == applied.total_params == n_backbone + head_count(d)
    assert applied.tuned_layers == ["*"]


@pytest.mark.parametrize("key", list(SPECS))
def test_layers_trains_the_named_blocks_and_head(make, key):
    b = make(key)
    d = b.num_features
    blocks = TWO[key]
    n_blocks = sum(numel(b.model.get_submodule(n)) for n in blocks)
    total = numel(b.model) - numel(b.classifier) + head_count(d)
    applied = apply_strategy(b, "layers", K, layers=blocks)
    model = applied.model
    want = names_under(model, [f"backbone.{n}" for n in blocks]) | {"head.weight", "head.bias"}
    assert trainable(model) == want
    assert applied.tuned_layers == blocks and model.skip_block is None
    assert applied.trainable_params == n_blocks + head_count(d)
    assert applied.total_params == total


def test_layers_accepts_globs_in_depth_order(make):
    b = make("vit")
    applied = apply_strategy(b, "layers", K, layers=["blocks.5", "blocks.[12]"])
    assert applied.tuned_layers == ["blocks.1", "blocks.2", "blocks.5"]


@pytest.mark.parametrize("key", list(SPECS))
def test_scl_trains_one_block_and_a_wider_head(make, key):
    b = make(key)
    block = MIDDLE[key]
    dim = {i.name: i.dim for i in b.blocks()}[block]
    d = b.num_features
    n_block = numel(b.model.get_submodule(block))
    applied = apply_strategy(b, "scl", K, layers=[block])
    model = applied.model
    assert applied.strategy == "scl" and applied.tuned_layers == [block]
    assert trainable(model) == names_under(model, [f"backbone.{block}"]) | {
        "head.weight",
        "head.bias",
    }
    assert model.skip_block == block
    assert model.in_features == model.head.in_features == dim + d
    assert applied.trainable_params == n_block + head_count(dim + d)
    assert applied.trainable_params < 0.5 * applied.total_params


@pytest.mark.parametrize("key", ["resnet", "vit"])
def test_lp_ft_probes_then_unfreezes_everything(make, key):
    b = make(key)
    d = b.num_features
    applied = apply_strategy(b, "lp-ft", K)
    model = applied.model
    assert applied.phase == "probe" and applied.strategy == "lp-ft"
    assert trainable(model) == {"head.weight", "head.bias"}
    assert [p.numel() for p in applied.parameters()] == [K * d, K]
    # the report gives the larger (full) phase's count
    assert applied.trainable_params == applied.total_params
    applied.start_full_phase()
    assert applied.phase == "full"
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    assert applied.trainable_params == applied.total_params == numel(model)


@pytest.mark.parametrize("key", ["resnet", "efficientnet"])
def test_auto_tunes_the_block_the_rule_picks(make, key):
    b = make(key)
    names = b.block_names
    # NC1 halves twice, then flattens: the knee is the third block
    nc1s = [10.0, 5.0, 2.5, 2.45, 2.44][: len(names)]
    profile = fake_profile(names, nc1s)
    applied = apply_strategy(b, "auto", K, profile=profile, rule="knee")
    assert applied.strategy == "scl"
    assert applied.tuned_layers == [names[2]]
    assert applied.selection is not None and applied.selection.layers == [names[2]]
    assert applied.selection.rule == "knee" and applied.selection.reason
    assert applied.model.skip_block == names[2]
    assert trainable(applied.model) == names_under(applied.model, [f"backbone.{names[2]}"]) | {
        "head.weight",
        "head.bias",
    }
    # other rules, same profile
    b2 = make(key)
    assert apply_strategy(b2, "auto", K, profile=profile, rule="last").tuned_layers == [names[-1]]


def test_auto_from_a_measured_profile(make):
    """The whole path: analyze random data, select with the default rule, apply."""
    b = make("vit")
    x, y = images(24), torch.arange(24) % 3
    profile = analyze(b, DataLoader(TensorDataset(x, y), batch_size=8), num_classes=3)
    want = select_layers(profile).layers
    applied = apply_strategy(b, "auto", 3, profile=profile)
    assert applied.tuned_layers == want and len(want) == 1
    assert want[0] in b.block_names
    assert applied.model(images(2)).shape == (2, 3)


def test_scl_and_layers_select_from_a_profile_too(make):
    b = make("resnet")
    profile = fake_profile(b.block_names, [8.0, 4.0, 3.9, 3.8])
    assert apply_strategy(b, "scl", K, profile=profile, rule="knee").tuned_layers == ["layer2.0"]
    b = make("resnet")
    applied = apply_strategy(b, "layers", K, profile=profile, rule="min_nc1")
    assert applied.tuned_layers == ["layer4.0"] and applied.model.skip_block is None


# ------------------------------------------------------------------ the SCL head
def _reference_features(
    model: nn.Module, block: str, classifier: str, x, token_pool, prefix
) -> torch.Tensor:
    """[pool(block output), classifier input] from hooks on an untouched copy of the net."""
    got = {}
    h1 = model.get_submodule(block).register_forward_hook(
        lambda m, a, out: got.__setitem__("block", out)
    )
    h2 = model.get_submodule(classifier).register_forward_pre_hook(
        lambda m, a: got.__setitem__("pen", a[0])
    )
    with torch.no_grad():
        model(x)
    h1.remove()
    h2.remove()
    out = got["block"]
    if out.ndim == 4:
        skip = out.mean(dim=(2, 3))
    elif token_pool == "cls":
        skip = out[:, 0]
    else:
        skip = out[:, prefix:].mean(dim=1)
    return torch.cat([skip, got["pen"].flatten(1)], dim=1)


@pytest.mark.parametrize("key, token_pool", POOLS)
def test_scl_features_are_block_and_penultimate(make, key, token_pool):
    b = make(key)
    block, classifier = MIDDLE[key], b.classifier_name
    reference = copy.deepcopy(b.model).eval()
    prefix = b.num_prefix_tokens
    applied = apply_strategy(b, "scl", K, layers=[block], token_pool=token_pool)
    model = applied.model.eval()
    x = images(3)
    want = _reference_features(reference, block, classifier, x, token_pool, prefix)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        plain = model(x)
    assert feats.shape == (3, model.head.in_features)
    assert logits.shape == plain.shape == (3, K)
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, model.head(want), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, logits)
    if key == "vit":  # the two poolings really differ on token maps
        other = _reference_features(
            reference, block, classifier, x, "mean" if token_pool == "cls" else "cls", prefix
        )
        assert not torch.allclose(feats, other)


def test_scl_features_for_other_heads_are_the_penultimate(make):
    b = make("efficientnet")
    reference = copy.deepcopy(b.model).eval()
    model = apply_strategy(b, "layers", K, layers=["blocks.2.0"]).model.eval()
    x = images(2)
    pen = {}
    h = reference.get_submodule(b.classifier_name).register_forward_pre_hook(
        lambda m, a: pen.__setitem__("x", a[0])
    )
    with torch.no_grad():
        reference(x)
        _, feats = model(x, return_features=True)
    h.remove()
    torch.testing.assert_close(feats, pen["x"])


def test_scl_block_must_be_a_block(make):
    b = make("resnet")
    with pytest.raises(ConfigError, match=r"strategy\.layers: 'layer3\.0\.conv1' is not a block"):
        apply_strategy(b, "scl", K, layers=["layer3.0.conv1"])


# ------------------------------------------------------------------ BatchNorm
def _bn_state(model: nn.Module) -> dict[str, tuple[bool, torch.Tensor]]:
    return {
        n: (m.training, m.running_mean.clone())
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    }


@pytest.mark.parametrize(
    "key, strategy, layers",
    [
        ("resnet", "scl", ["layer3.0"]),
        ("efficientnet", "layers", ["blocks.1.0", "blocks.3.0"]),
        ("resnet", "linear", None),
        ("efficientnet", "full", None),
        ("resnet", "lora", ["layer3.0"]),
    ],
)
def test_frozen_batchnorm_stays_in_eval_mode(make, key, strategy, layers):
    b = make(key)
    applied = apply_strategy(b, strategy, K, layers=layers)
    model = applied.model
    model.train()
    before = _bn_state(model)
    assert before, "the test needs BatchNorm layers"
    with torch.no_grad():
        model(images(8))
    after = _bn_state(model)
    for name, (training, mean) in before.items():
        bn = model.get_submodule(name)
        tuned = any(p.requires_grad for p in bn.parameters())
        if strategy == "full":
            assert tuned
        elif strategy in ("linear", "lora"):
            assert not tuned  # LoRA adapts convs; the norms stay frozen
        else:
            inside = any(f"backbone.{n}." in name + "." for n in layers)
            assert tuned == inside, name
        assert training == tuned, name
        moved = not torch.equal(mean, after[name][1])
        assert moved == tuned, name
    # and eval() still turns every BatchNorm off
    model.eval()
    assert not any(t for t, _ in _bn_state(model).values())


def test_lp_ft_batchnorm_trains_in_the_full_phase(make):
    applied = apply_strategy(make("resnet"), "lp-ft", K)
    applied.model.train()
    assert not any(t for t, _ in _bn_state(applied.model).values())
    applied.start_full_phase()
    applied.model.train()
    assert all(t for t, _ in _bn_state(applied.model).values())


# ------------------------------------------------------------------ LoRA
def _perturb_lora(model: nn.Module) -> None:
    """LoRA starts as a no-op (B = 0); random B makes merging actually change weights."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)


@pytest.mark.parametrize(
    "key, layers, kinds",
    [
        ("resnet", ["layer3.0"], {nn.Conv2d}),  # 1×1 and 3×3 convs, the downsample conv
        ("vit", ["blocks.2"], {nn.Linear}),  # fused qkv, proj, fc1, fc2
        ("efficientnet", ["blocks.3.0"], {nn.Conv2d}),  # depthwise conv_dw skipped
    ],
)
def test_lora_wraps_linear_and_ungrouped_conv(make, key, layers, kinds):
    b = make(key)
    d = b.num_features
    r = 4
    block = b.model.get_submodule(layers[0])
    leaves = {
        f"{layers[0]}.{n}": m
        for n, m in block.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    }
    assert {type(m) for m in leaves.values()} == kinds
    base_total = numel(b.model) - numel(b.classifier) + head_count(d)
    adapters = sum(lora_count(m, r) for m in leaves.values())
    applied = apply_strategy(b, "lora", K, layers=layers, lora_rank=r)
    model = applied.model
    assert applied.strategy == "lora" and applied.tuned_layers == layers
    want = {
        f"base_model.model.backbone.{n}.lora_{ab}.default.weight" for n in leaves for ab in "AB"
    } | {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert trainable(model) == want
    assert applied.trainable_params == adapters + head_count(d)
    assert applied.total_params == base_total + adapters
    if key == "vit":
        assert f"{layers[0]}.attn.qkv" in leaves
    if key == "efficientnet":
        assert f"{layers[0]}.conv_dw" not in leaves
    assert applied.tuned is model.get_base_model()
    assert isinstance(applied.tuned, TunedModel)


def test_lora_head_is_the_only_non_adapter_that_trains():
    """timm ConvNeXt has its own ``head`` (norm + pool): it must stay frozen."""
    b = create_backbone("timm:test_convnext", pretrained=False)
    applied = apply_strategy(b, "lora", K, layers=[b.block_names[-1]])
    extra = {n for n in trainable(applied.model) if ".lora_" not in n}
    assert extra == {"base_model.model.head.weight", "base_model.model.head.bias"}


def test_lora_explicit_targets(make):
    b = make("vit")
    applied = apply_strategy(b, "lora", K, lora_target_patterns=["blocks.*.attn.qkv"], lora_rank=2)
    wrapped = {n.split(".lora_")[0] for n in trainable(applied.model) if ".lora_" in n}
    assert wrapped == {f"base_model.model.backbone.blocks.{i}.attn.qkv" for i in range(6)}
    # a glob over a whole block means the adaptable layers inside it
    targets = lora_targets(make("vit").model, None, ["blocks.3.*"])
    assert targets == [f"blocks.3.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


@pytest.mark.parametrize(
    "key, targets, match",
    [
        ("efficientnet", ["blocks.3.0.conv_dw"], r"blocks\.3\.0\.conv_dw is a grouped/depthwise"),
        ("efficientnet", ["blocks.3.0.bn1"], r"blocks\.3\.0\.bn1 is a BatchNormAct2d"),
        ("vit", ["blocks.3"], r"blocks\.3 is a Block"),
        ("vit", ["blocks.9.attn.qkv"], r"'blocks\.9\.attn\.qkv' matches no module"),
        ("vit", ["blocks.*.norm1"], r"matches no nn\.Linear or ungrouped nn\.Conv2d"),
    ],
)
def test_lora_bad_targets_are_one_line_config_errors(make, key, targets, match):
    with pytest.raises(ConfigError, match=r"^strategy\.lora_targets: .*" + match) as err:
        apply_strategy(make(key), "lora", K, lora_target_patterns=targets)
    assert "\n" not in str(err.value)


def test_lora_export_merges_into_a_plain_model(make):
    for key, layers in (("resnet", ["layer3.0"]), ("vit", ["blocks.2", "blocks.4"])):
        applied = apply_strategy(make(key), "lora", K, layers=layers, lora_rank=4)
        _perturb_lora(applied.model)
        applied.model.eval()
        x = images(3)
        with torch.no_grad():
            want = applied.model(x)
            with applied.model.disable_adapter():
                assert not torch.allclose(applied.model(x), want, atol=1e-3)  # LoRA matters
        exported = applied.export()
        assert type(exported) is TunedModel
        assert not any("lora" in n for n, _ in exported.named_parameters())
        assert not any("peft" in type(m).__module__ for m in exported.modules())
        with torch.no_grad():
            got = exported.eval()(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ errors
def test_unknown_strategy(make):
    with pytest.raises(ConfigError, match=r"^strategy\.name: unknown strategy 'scl-ft'.*linear"):
        apply_strategy(make("resnet"), "scl-ft", K)
    assert set(STRATEGIES) == {"linear", "full", "layers", "scl", "lora", "lp-ft", "auto"}


def test_scl_takes_exactly_one_block(make):
    with pytest.raises(ConfigError, match=r"^strategy\.layers: scl tunes exactly one block, got 2"):
        apply_strategy(make("resnet"), "scl", K, layers=["layer2.0", "layer3.0"])
    with pytest.raises(ConfigError, match=r"got 6"):  # a glob over many blocks
        apply_strategy(make("vit"), "auto", K, layers=["blocks.*"])


@pytest.mark.parametrize("strategy", ["layers", "scl", "lora"])
def test_layers_naming_no_module(make, strategy):
    with pytest.raises(BackboneError, match=r"^strategy\.layers: no module matches 'layer9\.0'"):
        apply_strategy(make("resnet"), strategy, K, layers=["layer9.0"])


@pytest.mark.parametrize("strategy", ["layers", "scl", "auto"])
def test_strategies_needing_layers_need_a_profile(make, strategy):
    with pytest.raises(ConfigError, match=r"^strategy\.layers: .*needs layers, or a collapse"):
        apply_strategy(make("resnet"), strategy, K)


def test_errors_are_one_line(make):
    cases = [
        dict(strategy="nope"),
        dict(strategy="scl", layers=["layer2.0", "layer3.0"]),
        dict(strategy="layers", layers=["nope"]),
        dict(strategy="auto"),
    ]
    for kw in cases:
        with pytest.raises(NctuneError) as err:
            apply_strategy(make("resnet"), num_classes=K, **kw)
        assert "\n" not in str(err.value), kw


# ------------------------------------------------------------------ in a plain loop
@pytest.mark.parametrize(
    "key, strategy, layers",
    [
        ("resnet", "linear", None),
        ("resnet", "scl", ["layer3.0"]),
        ("efficientnet", "layers", ["blocks.1.0", "blocks.3.0"]),
        ("efficientnet", "full", None),
        ("vit", "scl", ["blocks.3"]),
        ("vit", "lora", ["blocks.4"]),
        ("resnet", "lora", ["layer4.0"]),
    ],
)
def test_hand_written_loop_changes_only_trainable_params(make, key, strategy, layers):
    applied = apply_strategy(make(key), strategy, K, layers=layers)
    model = applied.model
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    params = dict(model.named_parameters())
    grads_seen: set[str] = set()
    optimizer = torch.optim.AdamW(applied.parameters(), lr=1e-2)
    x, y = images(8), torch.arange(8) % K
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grads_seen |= {n for n, p in params.items() if p.grad is not None and p.grad.any()}
        optimizer.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    train_names = trainable(model)
    assert grads_seen <= train_names  # frozen parameters get no gradient at all
    changed_params = changed & set(params)
    assert changed_params == train_names == grads_seen, sorted(changed_params ^ train_names)[:5]
    # buffers (BatchNorm running statistics) move only inside trained modules
    for n in changed - set(params):
        owner = n.rsplit(".", 1)[0]
        assert any(p.startswith(owner + ".") for p in train_names), n


def test_loop_with_lp_ft_phases(make):
    applied = apply_strategy(make("resnet"), "lp-ft", K)
    model = applied.model
    x, y = images(8), torch.arange(8) % K

    def step(opt):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    stem = model.backbone.conv1[0].weight.detach().clone()
    step(torch.optim.SGD(applied.parameters(), lr=0.1))
    assert torch.equal(stem, model.backbone.conv1[0].weight)
    applied.start_full_phase()
    step(torch.optim.SGD(applied.parameters(), lr=0.1))
    assert not torch.equal(stem, model.backbone.conv1[0].weight)


# ------------------------------------------------------------------ save and load
@pytest.mark.parametrize(
    "key, strategy, layers, token_pool",
    [
        ("resnet", "scl", ["layer3.0"], "cls"),
        ("vit", "scl", ["blocks.3"], "mean"),
        ("efficientnet", "linear", None, "cls"),
        ("vit", "lora", ["blocks.2"], "cls"),
        ("resnet", "lora", ["layer3.0"], "cls"),
    ],
)
def test_save_and_load_round_trip(make, tmp_path, key, strategy, layers, token_pool):
    b = make(key)
    input_config = b.input_config
    applied = apply_strategy(b, strategy, K, layers=layers, token_pool=token_pool)
    # move every weight (and BatchNorm statistic) away from a fresh initialisation
    x, y = images(8), torch.arange(8) % K
    optimizer = torch.optim.SGD(applied.parameters(), lr=0.05)
    applied.model.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(applied.model(x), y).backward()
        optimizer.step()
    if strategy == "lora":
        _perturb_lora(applied.model)
    applied.model.eval()
    with torch.no_grad():
        want = applied.model(x)
    model = applied.export().eval()
    classes = [f"class {i}" for i in range(K)]
    save_model(model, tmp_path / "model.safetensors", extra={"classes": classes})
    loaded = load_finetuned(tmp_path)
    assert type(loaded) is TunedModel and not loaded.training
    assert loaded.classes == classes
    assert loaded.input_config == input_config
    assert loaded.skip_block == model.skip_block
    assert trainable(loaded) == {n for n, _ in loaded.named_parameters()}  # a plain module
    with torch.no_grad():
        got = loaded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the file alone is enough too
    again = load_finetuned(tmp_path / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(x), got, rtol=0, atol=0)


def _raises_artifact_error(path, match: str) -> None:
    with pytest.raises(ArtifactError, match=match) as err:
        load_finetuned(path)
    assert "\n" not in str(err.value)


def test_load_finetuned_rejects_other_files(make, tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "model.safetensors"
    _raises_artifact_error(tmp_path, "no fine-tuned model here")
    f.write_bytes(b"\x00" * 7)  # shorter than a safetensors header
    _raises_artifact_error(tmp_path, "not an nctune fine-tuned model")
    f.write_bytes(torch.randn(256).numpy().tobytes())  # random bytes
    _raises_artifact_error(f, "not an nctune fine-tuned model")
    save_file({"w": torch.zeros(3)}, str(f))  # a valid safetensors file, not ours
    _raises_artifact_error(f, "not an nctune fine-tuned model")
    save_file({"w": torch.zeros(3)}, str(f), metadata={"config": "[1, 2]"})  # damaged metadata
    _raises_artifact_error(f, "not an nctune fine-tuned model")
    b = make("efficientnet")
    b.save(f)  # a saved backbone is not a fine-tuned model either
    _raises_artifact_error(f, "not an nctune fine-tuned model")
    # our metadata, someone else's tensors
    model = apply_strategy(make("resnet"), "linear", K).model
    save_model(model, f)
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as g:
        meta = g.metadata()
    save_file({"head.weight": torch.zeros(K, 3)}, str(f), metadata=meta)
    _raises_artifact_error(f, "weights do not match the recorded architecture")
    # and a truncated copy of a real one
    save_model(model, f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _raises_artifact_error(f, r"model\.safetensors: ")


def test_save_model_keeps_every_strategy_name_in_config(make):
    """What load_finetuned rebuilds from, for every strategy (nothing PEFT-specific leaks)."""
    for strategy in STRATEGIES:
        b = make("resnet")
        layers = ["layer3.0"] if strategy in ("layers", "scl", "auto", "lora") else None
        model = apply_strategy(b, strategy, K, layers=layers).export()
        assert type(model) is TunedModel
        assert model.config["skip_block"] == ("layer3.0" if strategy in ("scl", "auto") else None)
        assert model.config["num_classes"] == K
        keys = list(model.state_dict())
        assert not any(fnmatch.fnmatch(k, "*lora*") or "base_model" in k for k in keys)


def test_lora_without_peft_is_one_clear_line(make, monkeypatch):
    from nctune.errors import ConfigError

    monkeypatch.setitem(sys.modules, "peft", None)  # as if the [lora] extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'nctune\[lora\]'"):
        apply_strategy(make("resnet"), "lora", K, layers=["layer3.0"])


# ------------------------------------------------------------------ the registry, one home
def test_every_strategy_has_a_help_line_and_the_recipe_lists_them_all():
    from nctune.config import StrategyConfig, load_recipe
    from nctune.training.strategies import STRATEGY_REGISTRY, strategies_help

    described = StrategyConfig.model_fields["name"].description
    for name in STRATEGIES:
        entry = STRATEGY_REGISTRY.get(name)
        assert entry.help and "\n" not in entry.help, name
        assert f"{name} ({entry.help})" in strategies_help() and f"{name} (" in described
        # the profile is measured exactly when blocks must be chosen from it
        recipe = load_recipe(None, [f"strategy.name={name}"])
        assert recipe.strategy.needs_profile() == entry.selects_layers
        named = load_recipe(None, [f"strategy.name={name}", "strategy.layers=[blocks.3]"])
        assert not named.strategy.needs_profile()
        assert load_recipe(None, [f"rank.validation={name}"]).rank.validation == name
    with pytest.raises(ConfigError, match=r"rank\.validation: unknown strategy 'lpft'.*lp-ft"):
        load_recipe(None, ["rank.validation=lpft"])


def test_finetune_help_lists_every_registered_strategy():
    from typer.testing import CliRunner

    from nctune.cli import app

    result = CliRunner().invoke(app, ["finetune", "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    line = result.output[result.output.index("strategy.name=") :].split("strategy.layers")[0]
    shown = line.replace("│", " ").replace(",", " ").split()
    assert set(STRATEGIES) <= set(shown), shown


def test_the_registry_loads_without_torch():
    """The CLI's --help reads the registry: importing it must not load torch."""
    import subprocess

    code = (
        "import sys, nctune.training.strategies as s; "
        "print(len(s.STRATEGIES), int('torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(STRATEGIES)), "0"]
