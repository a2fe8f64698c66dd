"""Layer taps: pooling, per-block widths, hook clean-up and the early stop.

Tiny random-init timm and torchvision models at 32 px on CPU; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from nctune.backbones import Backbone, InputConfig, list_blocks
from nctune.errors import BackboneError
from nctune.taps import LayerTaps, TapSpec, eval_mode, pool

SIZE = 32
VIT_KW = {"img_size": SIZE, "patch_size": 8, "depth": 3}
TINY_INPUT = InputConfig(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _backbone(model: nn.Module, spec: str) -> Backbone:
    # a 32 px input config keeps Backbone.blocks()' dummy forward tiny
    return Backbone(model.eval(), spec=spec, source="test", arch=spec, input_config=TINY_INPUT)


MODELS = {
    "timm-resnet10t": lambda: timm.create_model("resnet10t"),
    "timm-efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
    "timm-vit": lambda: timm.create_model("vit_tiny_patch16_224", **VIT_KW),
    "torchvision-resnet18": lambda: torchvision.models.resnet18(),
}


def _out_channels(block: nn.Module) -> int:
    """Width a block emits, read from its weights: the last conv/linear registered in it.

    Independent of nctune's shape probing: a ResNet block ends in conv2 (or its
    downsample, same width), an EfficientNet block in conv_pwl, a ViT block in mlp.fc2.
    """
    last = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    return last.out_channels if isinstance(last, nn.Conv2d) else last.out_features


def _collect(model: nn.Module, specs: list[TapSpec], x: torch.Tensor, **kw):
    got: dict[str, list[torch.Tensor]] = {}

    def sink(name: str, feats: torch.Tensor) -> None:
        got.setdefault(name, []).append(feats)

    with torch.no_grad(), LayerTaps(model, specs, sink, **kw) as taps:
        taps.forward(x)
    return got


# ======================================================================= pool()
def test_pool_nchw_nhwc_are_spatial_means():
    x = torch.randn(2, 5, 3, 4)
    want = x.mean(dim=(2, 3))
    torch.testing.assert_close(pool(x, "NCHW"), want)
    torch.testing.assert_close(pool(x.permute(0, 2, 3, 1), "NHWC"), want)
    torch.testing.assert_close(pool(x, "auto"), want)  # 4-D defaults to NCHW
    assert pool(x, "NCHW").shape == (2, 5)


def test_pool_tokens_cls_and_mean():
    x = torch.randn(2, 7, 4)  # (B, T, C): token 0 the class token, then 6 patches
    torch.testing.assert_close(pool(x, "NLC", "cls", prefix_tokens=1), x[:, 0])
    torch.testing.assert_close(pool(x, "NLC", "mean", prefix_tokens=1), x[:, 1:].mean(dim=1))
    # two prefix tokens (class + distillation): the mean skips both, cls is the first
    torch.testing.assert_close(pool(x, "NLC", "mean", prefix_tokens=2), x[:, 2:].mean(dim=1))
    torch.testing.assert_close(pool(x, "NLC", "cls", prefix_tokens=2), x[:, 0])
    # no class token: 'cls' cannot pick one, every token is averaged
    torch.testing.assert_close(pool(x, "NLC", "cls", prefix_tokens=0), x.mean(dim=1))
    torch.testing.assert_close(pool(x, "auto", "mean", prefix_tokens=1), x[:, 1:].mean(dim=1))


def test_pool_nc_tuple_and_errors():
    x = torch.randn(3, 6)
    assert torch.equal(pool(x, "NC"), x)
    # a 1×1-conv classifier's input (B, C, 1, 1) is flattened like Backbone.features does
    torch.testing.assert_close(pool(x[:, :, None, None], "NC"), x)
    # blocks returning (features, extras) are pooled on the features
    y = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(pool((y, "extra"), "NCHW"), y.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="layout"):
        pool(torch.randn(2, 3, 4, 5, 6), "NCDHW")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pool_averages_half_precision_maps_in_float32(dtype):
    x = (torch.randn(4, 8, 7, 7) * 3 + 100).to(dtype)  # what a block emits under autocast
    for layout, y in (("NCHW", x), ("NHWC", x.permute(0, 2, 3, 1))):
        got = pool(y, layout)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, x.float().mean(dim=(2, 3)), rtol=1e-6, atol=1e-5)
    tokens = x.flatten(2).transpose(1, 2)  # (B, T, C)
    assert pool(tokens, "NLC", "mean", prefix_tokens=1).dtype == torch.float32
    assert pool(tokens, "NLC", "cls").dtype == torch.float32
    assert pool(x[:, :, :1, :1], "NC").dtype == torch.float32
    assert pool(torch.randn(2, 3, dtype=torch.float64), "NC").dtype == torch.float64


def test_a_module_that_runs_twice_delivers_once():
    model = torchvision.models.resnet18().eval()  # BasicBlock calls its one relu twice
    rows = []
    specs = [TapSpec("relu", "layer1.0.relu"), TapSpec("layer2", "layer2.0")]
    with LayerTaps(model, specs, lambda n, f: rows.append((n, f.shape[0]))) as taps:
        taps.forward(torch.randn(3, 3, SIZE, SIZE))
    assert rows == [("relu", 3), ("layer2", 3)]
    # a hook firing outside forward() (the user calling the model) delivers nothing
    with LayerTaps(model, specs, lambda n, f: rows.append(n)):
        model(torch.randn(1, 3, SIZE, SIZE))
    assert len(rows) == 2


# ======================================================================= per-block widths
@pytest.mark.parametrize("name", list(MODELS))
def test_block_widths_match_module_out_channels(name):
    model = MODELS[name]().eval()
    backbone = _backbone(model, name)
    infos = backbone.blocks()
    names = [b.name for b in infos]
    assert names == list_blocks(model) and len(names) >= 3
    specs = [TapSpec(b.name, b.name, b.layout) for b in infos]
    got = _collect(model, specs, torch.randn(2, 3, SIZE, SIZE), prefix_tokens=1)
    for info in infos:
        feats = got[info.name]
        assert len(feats) == 1, f"{info.name} delivered {len(feats)} times for one batch"
        want = _out_channels(model.get_submodule(info.name))
        assert feats[0].shape == (2, want), info.name
        assert info.dim == want, info.name
    if name == "timm-vit":
        assert {b.layout for b in infos} == {"NLC"}
    else:
        assert {b.layout for b in infos} == {"NCHW"}


def test_pre_logits_tap_equals_backbone_features():
    backbone = _backbone(timm.create_model("resnet10t"), "resnet10t")
    x = torch.randn(3, 3, SIZE, SIZE)
    spec = TapSpec("pre_logits", backbone.classifier_name, "NC", on_input=True)
    got = _collect(backbone.model, [spec], x)
    with torch.no_grad():
        want = backbone.features(x)
    assert got["pre_logits"][0].shape == (3, backbone.num_features)
    torch.testing.assert_close(got["pre_logits"][0], want)


def test_vit_tokens_pool_to_class_token_or_patch_mean():
    model = timm.create_model("vit_tiny_patch16_224", **VIT_KW).eval()
    raw: list[torch.Tensor] = []
    h = model.blocks[1].register_forward_hook(lambda m, a, out: raw.append(out))
    x = torch.randn(2, 3, SIZE, SIZE)
    spec = [TapSpec("blocks.1", "blocks.1", "NLC")]
    cls = _collect(model, spec, x, token_pool="cls", prefix_tokens=1)["blocks.1"][0]
    mean = _collect(model, spec, x, token_pool="mean", prefix_tokens=1)["blocks.1"][0]
    h.remove()
    tokens = raw[0]
    assert tokens.shape == (2, 1 + (SIZE // 8) ** 2, 192)
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(mean, tokens[:, 1:].mean(dim=1))
    assert not torch.allclose(cls, mean)


# ======================================================================= hook clean-up
def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_after_context_and_after_errors():
    model = torchvision.models.resnet18().eval()
    specs = [
        TapSpec("layer1.0", "layer1.0"),
        TapSpec("layer4.1", "layer4.1"),
        TapSpec("pre", "fc", "NC", on_input=True),
    ]
    with LayerTaps(model, specs, lambda n, f: None) as taps:
        assert len(model.layer1[0]._forward_hooks) == 1
        assert len(model.fc._forward_pre_hooks) == 1
        taps.forward(torch.randn(1, 3, SIZE, SIZE))
    assert _no_hooks(model)
    taps.remove()  # idempotent

    def boom(name: str, feats: torch.Tensor) -> None:
        raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"), LayerTaps(model, specs, boom) as taps:
        taps.forward(torch.randn(1, 3, SIZE, SIZE))
    assert _no_hooks(model)
    # the model still runs normally afterwards (no stray _StopForward)
    assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 1000)


def test_unknown_module_and_module_that_never_runs():
    model = torchvision.models.resnet18().eval()
    with pytest.raises(BackboneError, match="layer9"):
        LayerTaps(model, [TapSpec("x", "layer9.0")], lambda n, f: None)
    with pytest.raises(BackboneError, match="empty"):
        LayerTaps(model, [], lambda n, f: None)
    model.unused = nn.Linear(2, 2)  # registered but never called in forward()
    specs = [TapSpec("layer1.0", "layer1.0"), TapSpec("unused", "unused", "NC")]
    with (
        pytest.raises(BackboneError, match="unused.*did not run"),
        LayerTaps(model, specs, lambda n, f: None) as taps,
    ):
        taps.forward(torch.randn(1, 3, SIZE, SIZE))
    assert _no_hooks(model)


# ======================================================================= early stop
class _CallCounter:
    """Wraps modules' forward (not a hook, so hook order cannot hide a call) and counts."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            module = model.get_submodule(name)
            module.forward = self._wrap(name, module.forward)

    def _wrap(self, name, forward):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return forward(*args, **kwargs)

        return counted


@pytest.mark.parametrize(
    ("name", "tap", "deeper"),
    [
        ("torchvision-resnet18", "layer2.0", ["layer2.1", "layer3.0", "layer4.1", "fc"]),
        ("timm-resnet10t", "layer1.0", ["layer2.0", "layer4.0", "fc"]),
        ("timm-efficientnet_b0", "blocks.2.0", ["blocks.2.1", "blocks.6.0", "conv_head"]),
        ("timm-vit", "blocks.0", ["blocks.1", "blocks.2", "norm", "head"]),
    ],
)
def test_early_stop_skips_deeper_blocks(name, tap, deeper):
    model = MODELS[name]().eval()
    counter = _CallCounter(model, [tap, *deeper])
    x = torch.randn(2, 3, SIZE, SIZE)
    delivered = []
    specs = [TapSpec(tap, tap, "auto")]
    with torch.no_grad(), LayerTaps(model, specs, lambda n, f: delivered.append(n)) as taps:
        for _ in range(3):
            taps.forward(x)
    assert delivered == [tap] * 3
    assert counter.calls == {tap: 3, **dict.fromkeys(deeper, 0)}
    # without the early stop the same taps let every deeper module run
    with torch.no_grad(), LayerTaps(model, specs, lambda n, f: None, stop_early=False) as taps:
        taps.forward(x)
    assert counter.calls == {tap: 4, **dict.fromkeys(deeper, 1)}


def test_early_stop_waits_for_the_deepest_tap_and_saves_flops():
    from torch.utils.flop_counter import FlopCounterMode

    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    # taps given out of depth order: the stop still waits for the deepest one
    specs = [TapSpec("layer2.1", "layer2.1"), TapSpec("layer1.0", "layer1.0")]
    counter = _CallCounter(model, ["layer2.1", "layer3.0"])
    seen: list[str] = []

    def flops(stop_early: bool) -> int:
        with (
            torch.no_grad(),
            FlopCounterMode(display=False) as fc,
            LayerTaps(model, specs, lambda n, f: seen.append(n), stop_early=stop_early) as taps,
        ):
            taps.forward(x)
        return fc.get_total_flops()

    early, full = flops(True), flops(False)
    assert seen == ["layer1.0", "layer2.1"] * 2
    assert counter.calls == {"layer2.1": 2, "layer3.0": 1}
    # layer3 and layer4 hold most of resnet18's FLOPs even at 32 px
    assert 0 < early < 0.6 * full


def test_eval_mode_restores_each_module():
    model = torchvision.models.resnet18().train()
    model.layer2.eval()  # a mixed state, as a partly frozen model has
    before = {n: m.training for n, m in model.named_modules()}
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == before
    with pytest.raises(KeyError), eval_mode(model):
        raise KeyError("inside")
    assert {n: m.training for n, m in model.named_modules()} == before
