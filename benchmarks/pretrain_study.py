"""Does preventing collapse on the source data during pretraining help transfer?

A reproducible check of two claims of Li et al. (arXiv 2212.12206):

* (iii) pretraining settings that keep more within-class variability on the SOURCE data
  (a projection head, strong augmentation) transfer better; settings that collapse more
  (label smoothing, no augmentation, long training) transfer worse;
* (i) the lower the pretrained features' NC1 on the DOWNSTREAM training data, the better
  they transfer.

A small ResNet is pretrained from scratch on Fashion-MNIST classes 0–4 (T-shirt, Trouser,
Pullover, Dress, Coat) under a handful of settings and seeds. For each pretrained model the
study measures, on the backbone's pooled features (the input of the projection head, which
is discarded for transfer):

* ``source_nc1``: NC1 on the source training images;
* ``source_nc1_head``: NC1 of the classifier's input on the same images (equals
  ``source_nc1`` without a projection head) — where the training loss makes features collapse;
* ``downstream_nc1``: NC1 on the downstream training images (classes 5–9: Sandal, Shirt,
  Sneaker, Bag, Ankle boot);
* ``transfer_acc``: test accuracy of a linear probe (L2-regularised multinomial logistic
  regression, full-batch L-BFGS in float64 on standardised frozen features) trained on the
  downstream training images, its L2 weight chosen per model by 5-fold cross-validation
  on them (``probe_l2`` records the choice); ``transfer_ncc``: nearest-class-centre accuracy of the
  same features, a probe with no fitting at all;
* ``source_acc``: the pretrained classifier's accuracy on the source test images.

It prints the per-run table, per-setting means, and Spearman rank correlations of each NC1
with transfer accuracy (across runs and across setting means, with a seeded permutation
p-value), and draws ``docs/figures/pretrain_study.png``.

    python benchmarks/pretrain_study.py --quick          # 7 settings x 3 seeds, ~6 min on 1 CPU core
    python benchmarks/pretrain_study.py                  # 7 x 3 seeds, larger data (CPU: ~25 min)
    python benchmarks/pretrain_study.py --device cuda --seeds 0,1,2 \\
        --set model=timm:resnet50 --set image_size=64 --set epochs=30 \\
        --set samples_per_class=6000 --set downstream_per_class=1000 \\
        --set test_per_class=1000 --set batch_size=256 --set lr=0.1   # full-scale GPU run

Options:
    --quick               the CPU-sized preset (see QUICK below); --set applies on top.
    --settings A,B,…      subset of the settings (default: all, see SETTINGS).
    --seeds 0,1,…         pretraining seeds (init, batch order, augmentation draws; default
                          0,1,2); the image sample is fixed by ``data_seed``, so every setting
                          and seed sees the same images.
    --set KEY=VALUE       override a :class:`StudyConfig` field (repeatable):
        model                 ``tiny`` (the CIFAR-style ResNet-10 below) or ``timm:<name>``
        width                 tiny model base width (stages: w, 2w, 4w, 8w; features 8w)
        image_size            input side (Fashion-MNIST is 28 px, resized once, antialiased)
        samples_per_class     source training images per class
        downstream_per_class  downstream (probe) training images per class
        test_per_class        test images per class, both tasks (Fashion-MNIST has 1000)
        epochs                pretraining epochs of the "long" settings
        short_epochs          epochs of the "short" setting (default: epochs // 4, at least 1)
        batch_size, lr, momentum, weight_decay, warmup_epochs
                              SGD (Nesterov) with linear warm-up and cosine decay
        label_smoothing       the value the label-smoothing setting uses
        proj_hidden           projection head hidden width (default: 2x the feature width)
        probe_l2              linear-probe L2 weights (on the mean loss) to choose from,
                              comma-separated; one value fixes it
        probe_iters           L-BFGS iterations per probe fit
        data                  ``auto`` (Debian files, else the vendored subset), ``full``,
                              ``vendored``
        data_seed             seed of the image sample
        eval_batch_size       batch size of feature extraction
    --device auto|cpu|cuda  CUDA runs use bf16 autocast (fp16 + grad scaling where bf16 is
                          unsupported) and channels_last; CPU runs are bit-for-bit repeatable
                          for a fixed seed and thread count.
    --threads N           CPU threads (default 1; 0 = torch's default). One thread because
                          this model's many small ops stall in OpenMP barriers whenever another
                          process holds a core: measured 1.3 s vs 48 s for the same two epochs
                          with 2 threads on a shared 2-core machine.
    --json PATH           write config, rows, means and correlations as JSON.
    --plot PATH           the figure (default docs/figures/pretrain_study.png); --no-plot.

Exit status 0 on success, 2 on bad options (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nctune.backbones import InputConfig
from nctune.collapse import CollapseStats
from nctune.config import DataConfig, TrainConfig
from nctune.data import build_data
from nctune.taps import autocast, resolve_device, to_device
from nctune.training.optim import lr_at, make_optimizer

SOURCE_CLASSES = (0, 1, 2, 3, 4)
DOWNSTREAM_CLASSES = (5, 6, 7, 8, 9)
DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "pretrain_study.png"
# Fashion-MNIST is one grey channel; centring at 0.5 is all a from-scratch model needs.
_INPUT = InputConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Columns compared for repeatability (timings are not).
METRIC_COLUMNS = (
    "source_nc1",
    "source_nc1_head",
    "downstream_nc1",
    "transfer_acc",
    "transfer_ncc",
    "source_acc",
    "train_loss",
)


# ============================================================== configuration
@dataclass(frozen=True)
class StudyConfig:
    """Everything that sizes the study; every field can be set with ``--set key=value``."""

    model: str = field(default="tiny", metadata={"help": "tiny or timm:<name>"})
    width: int = field(default=16, metadata={"help": "tiny ResNet base width"})
    image_size: int = field(default=32, metadata={"help": "input side in pixels"})
    samples_per_class: int = field(default=1000, metadata={"help": "source train images/class"})
    downstream_per_class: int = field(default=500, metadata={"help": "probe train images/class"})
    test_per_class: int = field(default=1000, metadata={"help": "test images/class, both tasks"})
    epochs: int = field(default=20, metadata={"help": "epochs of the long settings"})
    short_epochs: int | None = field(
        default=None, metadata={"help": "epochs of 'short' (None: epochs//4)", "type": int}
    )
    batch_size: int = field(default=64, metadata={"help": "pretraining batch size"})
    lr: float = field(default=0.05, metadata={"help": "peak SGD learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD Nesterov momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay (weights only)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up epochs"})
    label_smoothing: float = field(default=0.2, metadata={"help": "the smoothing setting's value"})
    proj_hidden: int | None = field(
        default=None, metadata={"help": "projection MLP hidden width (None: 2·D)", "type": int}
    )
    probe_l2: str = field(
        default="1e-4,1e-3,1e-2,1e-1", metadata={"help": "probe L2 weights to choose from"}
    )
    probe_iters: int = field(default=200, metadata={"help": "linear probe L-BFGS iterations"})
    data: str = field(default="auto", metadata={"help": "auto, full or vendored"})
    data_seed: int = field(default=0, metadata={"help": "seed of the image sample"})
    eval_batch_size: int = field(default=512, metadata={"help": "feature extraction batch"})

    def __post_init__(self) -> None:
        positive = (
            "width image_size samples_per_class downstream_per_class test_per_class epochs "
            "batch_size probe_iters eval_batch_size"
        ).split()
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1 (got {getattr(self, name)})")
        if self.short_epochs is not None and self.short_epochs < 1:
            raise ValueError(f"short_epochs: must be at least 1 (got {self.short_epochs})")
        if self.data not in ("auto", "full", "vendored"):
            raise ValueError(f"data: must be auto, full or vendored (got {self.data!r})")
        if not (self.model == "tiny" or self.model.startswith("timm:")):
            raise ValueError(f"model: must be 'tiny' or 'timm:<name>' (got {self.model!r})")
        if self.model.startswith("timm:"):
            import timm

            name = self.model.split(":", 1)[1]
            if not timm.is_model(name):
                near = difflib.get_close_matches(name, timm.list_models(), n=1)
                hint = f" (did you mean timm:{near[0]}?)" if near else ""
                raise ValueError(f"model: timm has no model {name!r}{hint}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: must lie in [0, 1) (got {self.label_smoothing})")
        try:
            grid = self.probe_l2_grid
        except ValueError:
            grid = ()
        if not grid or min(grid) < 0:
            raise ValueError(
                f"probe_l2: expected comma-separated weights >= 0 (got {self.probe_l2!r})"
            )

    @property
    def probe_l2_grid(self) -> tuple[float, ...]:
        """The probe's candidate L2 weights, ascending."""
        return tuple(sorted(float(v) for v in self.probe_l2.split(",") if v.strip()))

    @property
    def resolved_short_epochs(self) -> int:
        """Epochs of the ``short`` setting."""
        return self.short_epochs or max(1, self.epochs // 4)


#: ``--quick``: ~6 minutes for 7 settings x 3 seeds on one (shared) CPU core. The test
#: splits are whole (1000 per class): evaluation is cheap next to training.
QUICK = StudyConfig(samples_per_class=400, downstream_per_class=200, epochs=12)


def apply_overrides(config: StudyConfig, overrides: Sequence[str]) -> StudyConfig:
    """Return ``config`` with ``key=value`` overrides applied, values typed by field.

    Raises:
        ValueError: malformed item, unknown key (with a suggestion) or a bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(StudyConfig)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(f"--set {key}: unknown key{hint}; keys: {', '.join(fields)}")
        f = fields[key]
        kind = f.metadata.get("type") or type(f.default)
        raw = raw.strip()
        if raw.lower() in ("none", "null") and f.default is None:
            changes[key] = None
            continue
        try:
            changes[key] = kind(float(raw)) if kind is int and "e" in raw.lower() else kind(raw)
        except ValueError:
            raise ValueError(f"--set {key}: {raw!r} is not a valid {kind.__name__}") from None
    return dataclasses.replace(config, **changes)


@dataclass(frozen=True)
class Setting:
    """One pretraining recipe.

    Attributes:
        name: short label used in tables and the plot.
        head: ``linear`` (classifier on the backbone features) or ``mlp`` (a projection
            head between them, dropped for transfer).
        aug: ``none``, ``weak`` (horizontal flip) or ``strong`` (random-resized crop,
            flip, Gaussian noise, random erasing).
        smoothing: use ``StudyConfig.label_smoothing`` instead of plain cross-entropy.
        short: train ``short_epochs`` instead of ``epochs``.
        expected: which way the paper says source collapse moves against the baseline.
    """

    name: str
    head: str = "linear"
    aug: str = "weak"
    smoothing: bool = False
    short: bool = False
    expected: str = ""


#: The compact design: one factor changed at a time from ``baseline`` plus one combination.
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("baseline", expected="reference"),
        Setting("short", short=True, expected="less collapse (early stop)"),
        Setting("no-aug", aug="none", expected="more collapse"),
        Setting("label-smooth", smoothing=True, expected="more collapse"),
        Setting("proj-head", head="mlp", expected="less collapse"),
        Setting("strong-aug", aug="strong", expected="less collapse"),
        Setting("proj+strong", head="mlp", aug="strong", expected="least collapse"),
    )
}


# ===================================================================== data
@dataclass
class StudyData:
    """Normalised image tensors ``(N, 3, T, T)`` and labels in ``[0, 5)`` for both tasks."""

    source_train: tuple[torch.Tensor, torch.Tensor]
    source_test: tuple[torch.Tensor, torch.Tensor]
    down_train: tuple[torch.Tensor, torch.Tensor]
    down_test: tuple[torch.Tensor, torch.Tensor]
    origin: str

    def describe(self) -> str:
        sizes = ", ".join(
            f"{name} {len(getattr(self, name)[1])}"
            for name in ("source_train", "source_test", "down_train", "down_test")
        )
        return f"{self.origin}: {sizes}"


def _take(
    dataset: Any, classes: Sequence[int], per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images of each class (in the dataset's seeded order), relabelled."""
    targets = np.asarray(dataset.targets)
    picks = [np.flatnonzero(targets == c)[:per_class] for c in classes]
    idx = np.concatenate(picks)
    images = torch.stack([dataset[int(i)][0] for i in idx])
    labels = torch.cat([torch.full((len(p),), k, dtype=torch.int64) for k, p in enumerate(picks)])
    return images, labels


def load_data(config: StudyConfig) -> StudyData:
    """Fashion-MNIST through :func:`nctune.data.build_data`, split into source/downstream.

    One seeded few-shot sample of ``max(samples_per_class, downstream_per_class)`` images
    per class is drawn from the official training set; classes 0–4 keep the first
    ``samples_per_class``, classes 5–9 the first ``downstream_per_class``. The official test
    set is capped (stratified) at ``test_per_class`` per class.
    """
    data_cfg = DataConfig(
        source="fashion_mnist",
        subset=config.data,
        val_fraction=0.0,
        samples_per_class=max(config.samples_per_class, config.downstream_per_class),
        max_test_samples=10 * config.test_per_class,
        image_size=config.image_size,
        augment=False,  # augmentation is batched on the device inside the training loop
    )
    splits = build_data(data_cfg, _INPUT, seed=config.data_seed)
    assert splits.test is not None  # Fashion-MNIST always has its official test split
    return StudyData(
        source_train=_take(splits.train, SOURCE_CLASSES, config.samples_per_class),
        source_test=_take(splits.test, SOURCE_CLASSES, config.test_per_class),
        down_train=_take(splits.train, DOWNSTREAM_CLASSES, config.downstream_per_class),
        down_test=_take(splits.test, DOWNSTREAM_CLASSES, config.test_per_class),
        origin=splits.source,
    )


# ============================================================= augmentation
def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Batched augmentation of a normalised batch ``(B, C, H, W)``.

    Random parameters are drawn on the CPU from ``gen`` and moved to ``x``'s device, so a
    seed gives the same draws on every device; the pixel work is one ``grid_sample`` and a
    few masks, which is what keeps strong augmentation affordable on two CPU cores.

    Args:
        x: the batch (on any device).
        kind: ``none``; ``weak`` = horizontal flip (p = 0.5); ``strong`` = random-resized
            crop (area 0.25–1, aspect 3/4–4/3) with flip, Gaussian noise (σ = 0.1 of the
            pixel range) and random erasing (p = 0.5, area 0.02–0.25, filled with 0).
        gen: CPU generator supplying every random draw.
    """
    if kind == "none":
        return x
    b, dev = x.shape[0], x.device
    sign = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    if kind == "weak":
        flip = (sign < 0).to(dev).view(b, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)
    if kind != "strong":
        raise ValueError(f"unknown augmentation {kind!r}")
    # random-resized crop as an affine sampling grid in [-1, 1] coordinates
    area = _uniform(b, 0.25, 1.0, gen)
    log_ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), gen)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * _uniform(b, -1.0, 1.0, gen)
    cy = (1 - h) * _uniform(b, -1.0, 1.0, gen)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx  # a negative x scale is the flip
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # noise: inputs are (p - 0.5) / 0.5, so σ = 0.2 here is 0.1 of the pixel range
    noise = torch.randn(x.shape, generator=gen).to(dev, x.dtype)
    out = out + 0.2 * noise
    # random erasing: one rectangle per selected image
    hh, ww = x.shape[-2:]
    erase = torch.rand(b, generator=gen) < 0.5
    e_area = _uniform(b, 0.02, 0.25, gen)
    e_ratio = _uniform(b, math.log(0.3), math.log(3.3), gen).exp()
    eh = (e_area / e_ratio).sqrt().clamp(max=1.0) * hh
    ew = (e_area * e_ratio).sqrt().clamp(max=1.0) * ww
    top = torch.rand(b, generator=gen) * (hh - eh)
    left = torch.rand(b, generator=gen) * (ww - ew)
    rows = torch.arange(hh).view(1, hh, 1)
    cols = torch.arange(ww).view(1, 1, ww)
    mask = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + eh).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + ew).view(b, 1, 1))
        & erase.view(b, 1, 1)
    )
    return out.masked_fill(mask.unsqueeze(1).to(dev), 0.0)


# =================================================================== models
class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm and an identity/1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A CIFAR-style ResNet-10: 3x3 stem, four stages of one basic block, global pooling.

    The stem has stride 2 (32 px → 16x16 maps): Fashion-MNIST objects are coarse, and it
    makes training ~4x cheaper on a CPU. Stage widths are ``w, 2w, 4w, 8w``; the pooled
    feature width ``num_features`` is ``8w``. Blocks are named ``layer1.0`` … ``layer4.0``
    like torchvision's ResNets, so nctune's taps find them.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        self.layer1 = nn.Sequential(_BasicBlock(w, w, 1))
        self.layer2 = nn.Sequential(_BasicBlock(w, 2 * w, 2))
        self.layer3 = nn.Sequential(_BasicBlock(2 * w, 4 * w, 2))
        self.layer4 = nn.Sequential(_BasicBlock(4 * w, 8 * w, 2))
        self.num_features = 8 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return x.mean((2, 3))


def make_encoder(config: StudyConfig) -> tuple[nn.Module, int]:
    """A freshly initialised backbone mapping images to pooled features, and its width."""
    if config.model == "tiny":
        net = TinyResNet(config.width)
        return net, net.num_features
    import timm

    # num_classes=0: timm returns pooled pre-logits features; nothing is downloaded
    net = timm.create_model(config.model.split(":", 1)[1], pretrained=False, num_classes=0)
    return net, int(net.num_features)


class PretrainNet(nn.Module):
    """Backbone → (projection head) → linear classifier.

    Args:
        encoder: images → pooled features ``(B, D)``; the part that transfers.
        dim: D.
        num_classes: source classes.
        proj_hidden: hidden width of a 2-layer MLP projection head (Linear-BN-ReLU-Linear,
            output width D); None for no head. The head sits where the loss makes features
            collapse, so the backbone beneath it can keep within-class variability.
    """

    def __init__(
        self, encoder: nn.Module, dim: int, num_classes: int, proj_hidden: int | None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector: nn.Module = nn.Identity()
        if proj_hidden:
            self.projector = nn.Sequential(
                nn.Linear(dim, proj_hidden),
                nn.BatchNorm1d(proj_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(proj_hidden, dim),
            )
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits, backbone features, classifier input)``."""
        feats = self.encoder(x)
        head_in = self.projector(feats)
        return self.classifier(head_in), feats, head_in


def build_model(config: StudyConfig, setting: Setting, seed: int) -> PretrainNet:
    """The network for one run, initialised from ``seed`` without touching the global RNG.

    The encoder is built first, so every setting of a seed starts from the same backbone
    weights (paired comparisons: differences come from the setting, not the draw).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, dim = make_encoder(config)
        hidden = (config.proj_hidden or 2 * dim) if setting.head == "mlp" else None
        return PretrainNet(encoder, dim, len(SOURCE_CLASSES), hidden)


# ================================================================= training
def pretrain(
    net: PretrainNet,
    setting: Setting,
    seed: int,
    config: StudyConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
) -> float:
    """Supervised pretraining on the source images; returns the last epoch's mean loss.

    SGD with Nesterov momentum, weight decay on weight matrices only, linear warm-up then
    cosine decay to zero (nctune.training.train's helpers). Batch order and augmentation come from a
    generator seeded with ``seed``; the last partial batch is dropped because batch norm
    needs more than one sample.
    """
    epochs = config.resolved_short_epochs if setting.short else config.epochs
    smoothing = config.label_smoothing if setting.smoothing else 0.0
    train_cfg = TrainConfig(
        epochs=epochs,
        lr=config.lr,
        optimizer="sgd",
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=smoothing,
        grad_clip=None,
    )
    n = len(labels)
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch
    total = epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    optimizer = make_optimizer(list(net.parameters()), train_cfg, config.lr)
    # bf16 autocast needs no loss scaling; fp16 (older GPUs) does
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = to_device(images, device), labels.to(device)

    net.train()
    step, epoch_loss = 0, float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch].to(device)
            x = augment(x_all[idx], setting.aug, gen)
            lr = lr_at(step, total, warmup, train_cfg, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device):
                logits = net(x)[0]
            loss = F.cross_entropy(logits.float(), y_all[idx], label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()  # no .item() per step: it would sync the GPU
            step += 1
        epoch_loss = float(loss_sum) / steps_per_epoch
    return epoch_loss


@torch.no_grad()
def embed(
    net: PretrainNet, images: torch.Tensor, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eval-mode ``(logits, backbone features, classifier input)`` in float32 on ``device``."""
    net.eval()
    outs: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(images), batch_size):
        x = to_device(images[start : start + batch_size], device)
        with autocast(device):
            outs.append(tuple(t.float() for t in net(x)))
    logits, feats, head_in = (torch.cat(parts) for parts in zip(*outs, strict=True))
    return logits, feats, head_in


def collapse_stats(features: torch.Tensor, labels: torch.Tensor) -> Any:
    """:class:`nctune.CollapseMetrics` of one feature set (5 classes)."""
    stats = CollapseStats(len(SOURCE_CLASSES))
    stats.update(features, labels.to(features.device))
    return stats.compute()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    l2: float,
    iters: int,
) -> float:
    """Test accuracy of a multinomial logistic-regression probe on frozen features.

    Minimises ``CE(Wx + b) + l2·‖W‖²`` with full-batch L-BFGS (strong Wolfe line search)
    in float64 from zero, on features standardised with the training mean and std: the
    result is a deterministic function of the features (no learning rate, no batch order),
    and the fixed L2 weight treats every backbone alike.
    """
    dev = train_x.device
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    x = (x - mean) / std
    xt = (test_x.double() - mean) / std
    y, yt = train_y.to(dev), test_y.to(dev)
    k = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], k, dtype=torch.float64, device=dev, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=iters,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xt @ weight + bias).argmax(1) == yt).double().mean())


def tuned_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    l2s: Sequence[float],
    iters: int,
    folds: int = 5,
) -> tuple[float, float]:
    """Linear-probe test accuracy with the L2 weight chosen by cross-validation.

    The training samples are split into ``folds`` folds stratified by class (the i-th
    sample of each class goes to fold ``i mod folds``; the order within a class is the
    seeded sample order). Each weight's pooled held-out accuracy is measured, the best
    wins (ties go to the stronger regularisation), and the probe is refitted on all
    training samples with it. One weight skips the selection. Choosing per model keeps a
    fixed weight from favouring backbones whose feature scale happens to suit it; folds
    instead of one hold-out keep the choice itself from adding noise.

    Returns:
        ``(test accuracy, chosen L2 weight)``.
    """
    grid = sorted(l2s)
    chosen = grid[0]
    if len(grid) > 1:
        fold = torch.empty_like(train_y)
        for c in train_y.unique():
            members = (train_y == c).nonzero().flatten()
            fold[members] = torch.arange(len(members), device=train_y.device) % folds
        scores = []
        for l2 in grid:
            correct = 0.0
            for f in range(folds):
                held = fold == f
                acc = linear_probe(
                    train_x[~held], train_y[~held], train_x[held], train_y[held], l2=l2, iters=iters
                )
                correct += acc * int(held.sum())
            scores.append(correct / len(train_y))
        best = max(scores)
        chosen = max(l2 for l2, acc in zip(grid, scores, strict=True) if acc == best)
    return linear_probe(train_x, train_y, test_x, test_y, l2=chosen, iters=iters), chosen


def run_one(
    setting: Setting, seed: int, config: StudyConfig, data: StudyData, device: torch.device
) -> dict[str, Any]:
    """Pretrain one model and measure it; returns one table row."""
    t0 = time.perf_counter()
    net = build_model(config, setting, seed).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    train_loss = pretrain(net, setting, seed, config, *data.source_train, device)
    t1 = time.perf_counter()
    bs = config.eval_batch_size
    _, src_feats, src_head = embed(net, data.source_train[0], device, bs)
    src_logits, _, _ = embed(net, data.source_test[0], device, bs)
    _, down_train, _ = embed(net, data.down_train[0], device, bs)
    _, down_test, _ = embed(net, data.down_test[0], device, bs)
    down_stats = collapse_stats(down_train, data.down_train[1])
    down_test_y = data.down_test[1].to(device)
    transfer_acc, probe_l2 = tuned_probe(
        down_train,
        data.down_train[1].to(device),
        down_test,
        down_test_y,
        l2s=config.probe_l2_grid,
        iters=config.probe_iters,
    )
    return {
        "setting": setting.name,
        "seed": seed,
        "epochs": config.resolved_short_epochs if setting.short else config.epochs,
        "source_nc1": collapse_stats(src_feats, data.source_train[1]).nc1,
        "source_nc1_head": collapse_stats(src_head, data.source_train[1]).nc1,
        "downstream_nc1": down_stats.nc1,
        "transfer_acc": transfer_acc,
        "probe_l2": probe_l2,
        "transfer_ncc": down_stats.ncc_accuracy(down_test, down_test_y),
        "source_acc": float((src_logits.argmax(1).cpu() == data.source_test[1]).double().mean()),
        "train_loss": train_loss,
        "pretrain_s": t1 - t0,
        "total_s": time.perf_counter() - t0,
    }


# ================================================================ statistics
def rankdata(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    # tie groups are runs of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of ranks s+1 … e
    return ranks


def _pearson_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    xc = x - x.mean()
    yc = ys - ys.mean(axis=-1, keepdims=True)
    return (yc @ xc) / (np.sqrt((xc @ xc) * (yc * yc).sum(axis=-1)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation ρ: Pearson correlation of the (tie-averaged) ranks.

    Pairs where either value is not finite are dropped; NaN when fewer than two pairs
    remain or either side is constant.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if len(xa) < 2 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return float("nan")
    return float(_pearson_rows(rankdata(xa), rankdata(ya)[None, :])[0])


def spearman_pvalue(
    x: Sequence[float], y: Sequence[float], n_perm: int = 10_000, seed: int = 0
) -> float:
    """Two-sided permutation p-value of Spearman's ρ (seeded Monte Carlo, +1 smoothed)."""
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return float("nan")
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    rx, ry = rankdata(xa[keep]), rankdata(ya[keep])
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(ry, (n_perm, 1)), axis=1)
    null = _pearson_rows(rx, perms)
    return float((np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (n_perm + 1))


#: (x, y) pairs whose rank correlation the study reports.
CORRELATION_PAIRS = (
    ("source_nc1", "transfer_acc"),
    ("downstream_nc1", "transfer_acc"),
    ("source_nc1", "transfer_ncc"),
    ("downstream_nc1", "transfer_ncc"),
    ("source_nc1", "downstream_nc1"),
    ("source_nc1_head", "transfer_acc"),
    # the naive predictor: does the better source classifier transfer better?
    ("source_acc", "transfer_acc"),
)


def setting_means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-setting mean (and std over seeds, 0 for one seed) of every metric column."""
    out = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == name]
        entry: dict[str, Any] = {"setting": name, "runs": len(group)}
        for col in METRIC_COLUMNS:
            vals = np.array([r[col] for r in group], dtype=np.float64)
            entry[col] = float(vals.mean())
            entry[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def correlations(
    rows: Sequence[dict[str, Any]], means: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Spearman ρ and permutation p for each pair, across runs and across setting means."""
    out = []
    for over, table in (("runs", rows), ("setting means", means)):
        for xk, yk in CORRELATION_PAIRS:
            x = [r[xk] for r in table]
            y = [r[yk] for r in table]
            out.append(
                {
                    "x": xk,
                    "y": yk,
                    "over": over,
                    "n": len(table),
                    "rho": spearman(x, y),
                    "p": spearman_pvalue(x, y),
                }
            )
    return out


# ==================================================================== study
@dataclass
class StudyResult:
    """Everything one study produced (JSON-ready through :meth:`to_dict`)."""

    config: StudyConfig
    settings: list[str]
    seeds: list[int]
    device: str
    data: str
    rows: list[dict[str, Any]]
    means: list[dict[str, Any]]
    correlations: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "settings": {n: dataclasses.asdict(SETTINGS[n]) for n in self.settings},
            "seeds": self.seeds,
            "device": self.device,
            "data": self.data,
            "torch": torch.__version__,
            "rows": self.rows,
            "means": self.means,
            "correlations": self.correlations,
            "seconds": self.seconds,
        }


def run_study(
    config: StudyConfig,
    settings: Sequence[str] = tuple(SETTINGS),
    seeds: Sequence[int] = (0, 1),
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> StudyResult:
    """Pretrain and measure one model per (setting, seed), then summarise.

    Args:
        config: sizes and hyper-parameters.
        settings: names from :data:`SETTINGS`, in table order.
        seeds: pretraining seeds; the image sample is fixed by ``config.data_seed``.
        device: ``auto``, ``cpu``, ``cuda``, …
        progress: called as ``progress(done, total, row)`` after each run.

    Returns:
        The rows (setting-major), per-setting means, and rank correlations.
    """
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes; CPU runs stay deterministic
    t0 = time.perf_counter()
    data = load_data(config)
    rows: list[dict[str, Any]] = []
    total = len(settings) * len(seeds)
    for name in settings:
        for seed in seeds:
            rows.append(run_one(SETTINGS[name], int(seed), config, data, dev))
            if progress is not None:
                progress(len(rows), total, rows[-1])
    means = setting_means(rows)
    return StudyResult(
        config=config,
        settings=list(settings),
        seeds=[int(s) for s in seeds],
        device=str(dev),
        data=data.describe(),
        rows=rows,
        means=means,
        correlations=correlations(rows, means),
        seconds=time.perf_counter() - t0,
    )


# ================================================================ rendering
def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The per-run table as fixed-width text."""
    head = (
        f"{'setting':13s} {'seed':>4s} {'ep':>3s} {'src NC1':>8s} {'head NC1':>8s} "
        f"{'down NC1':>8s} {'transfer':>8s} {'L2':>6s} {'NCC':>7s} {'src acc':>7s} {'loss':>6s} "
        f"{'s':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['setting']:13s} {r['seed']:4d} {r['epochs']:3d} {r['source_nc1']:8.4f} "
            f"{r['source_nc1_head']:8.4f} {r['downstream_nc1']:8.4f} "
            f"{100 * r['transfer_acc']:7.2f}% {r['probe_l2']:6.0e} {100 * r['transfer_ncc']:6.2f}% "
            f"{100 * r['source_acc']:6.2f}% {r['train_loss']:6.3f} {r['total_s']:6.1f}"
        )
    return "\n".join(lines)


def format_means(means: Sequence[dict[str, Any]]) -> str:
    """Per-setting means ± std over seeds."""
    head = (
        f"{'setting':13s} {'n':>2s} {'src NC1':>15s} {'down NC1':>15s} "
        f"{'transfer %':>13s} {'NCC %':>13s} {'src acc %':>13s}"
    )
    lines = [head, "-" * len(head)]
    for m in means:

        def cell(col: str, scale: float = 1.0, digits: int = 4, m: dict = m) -> str:
            return f"{scale * m[col]:.{digits}f}±{scale * m[col + '_std']:.{digits}f}"

        lines.append(
            f"{m['setting']:13s} {m['runs']:2d} {cell('source_nc1'):>15s} "
            f"{cell('downstream_nc1'):>15s} {cell('transfer_acc', 100, 2):>13s} "
            f"{cell('transfer_ncc', 100, 2):>13s} {cell('source_acc', 100, 2):>13s}"
        )
    return "\n".join(lines)


def format_correlations(corrs: Sequence[dict[str, Any]]) -> str:
    """Spearman ρ (permutation p) per pair and aggregation level."""
    lines = [f"{'x':16s} {'y':15s} {'over':14s} {'n':>3s} {'rho':>7s} {'p':>7s}"]
    lines.append("-" * len(lines[0]))
    for c in corrs:
        lines.append(
            f"{c['x']:16s} {c['y']:15s} {c['over']:14s} {c['n']:3d} {c['rho']:7.3f} {c['p']:7.4f}"
        )
    return "\n".join(lines)


def plot(result: StudyResult, path: Path) -> Path:
    """Transfer accuracy vs source NC1 and vs downstream NC1, one colour per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    colours = plt.get_cmap("tab10")
    markers = "osD^v<>p"
    rho = {(c["x"], c["over"]): c for c in result.correlations if c["y"] == "transfer_acc"}
    for ax, key, label in (
        (axes[0], "source_nc1", "NC1 on source train (backbone features)"),
        (axes[1], "downstream_nc1", "NC1 on downstream train"),
    ):
        for i, name in enumerate(result.settings):
            for j, seed in enumerate(result.seeds):
                r = next(
                    (r for r in result.rows if r["setting"] == name and r["seed"] == seed), None
                )
                if r is None:
                    continue
                ax.scatter(
                    r[key],
                    100 * r["transfer_acc"],
                    color=colours(i % 10),
                    marker=markers[j % len(markers)],
                    s=46,
                    edgecolor="black",
                    linewidth=0.5,
                    label=name if j == 0 else None,
                )
        ax.set_xscale("log")
        # plain numbers on the log axis (0.2, 0.3, …), not 2×10⁻¹
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel(label)
        c = rho[(key, "runs")]
        ax.set_title(f"Spearman ρ = {c['rho']:.2f} (p = {c['p']:.2g}, n = {c['n']})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("linear-probe accuracy on downstream test (%)")
    axes[1].legend(title="setting", fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    cfg = result.config
    fig.suptitle(
        f"Pretraining on Fashion-MNIST 0–4 → linear probe on 5–9 ({cfg.model}, "
        f"{cfg.image_size} px, {cfg.samples_per_class}/class, {cfg.epochs} epochs; "
        f"markers = seeds {', '.join(map(str, result.seeds))})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the CPU-sized preset (~6 min)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated pretraining seeds")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", type=Path, help="write the result JSON here")
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="figure path")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = p.parse_args(argv)
    try:
        config = apply_overrides(QUICK if args.quick else StudyConfig(), args.set)
        seeds = _int_list(args.seeds)
        settings = [s.strip() for s in args.settings.split(",") if s.strip()]
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown or not settings or not seeds:
            raise ValueError(
                f"--settings/--seeds: bad {unknown or 'empty'}; settings: {', '.join(SETTINGS)}"
            )
        device = resolve_device(args.device)
        if args.threads < 0:
            raise ValueError(f"--threads: must be 0 or more (got {args.threads})")
    except Exception as err:  # bad input: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"# pretrain study — torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    print(f"# config: {dataclasses.asdict(config)}", flush=True)
    print(f"# settings: {', '.join(settings)}; seeds: {seeds}", flush=True)

    def progress(done: int, total: int, r: dict[str, Any]) -> None:
        print(
            f"#   [{done:2d}/{total}] {r['setting']:13s} seed {r['seed']}: src NC1 "
            f"{r['source_nc1']:.4f}, down NC1 {r['downstream_nc1']:.4f}, transfer "
            f"{100 * r['transfer_acc']:.2f}%, src acc {100 * r['source_acc']:.2f}% "
            f"({r['total_s']:.1f} s)",
            flush=True,
        )

    result = run_study(config, settings, seeds, device, progress)
    print(f"# data: {result.data}\n")
    print(format_rows(result.rows), end="\n\n")
    print("per-setting means ± std over seeds")
    print(format_means(result.means), end="\n\n")
    print("Spearman rank correlations (two-sided permutation p, 10,000 permutations)")
    print(format_correlations(result.correlations), end="\n\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
        print(f"# wrote {args.json}")
    if not args.no_plot:
        print(f"# wrote {plot(result, args.plot)}")
    print(f"# total wall time {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
