"""nctune inside your own PyTorch training loop.

Your data pipeline, your optimizer, your scheduler, your loop; nctune contributes four
calls:

1. ``nctune.analyze`` once: how collapsed every block's features already are (NC1) on
   your training data;
2. ``nctune.select_layers``: which block to tune, from that profile;
3. ``nctune.apply_strategy``: freeze the rest and add the head (here SCL-FT: the chosen
   block plus a skip connection from it to the classifier);
4. ``nctune.CollapseStats``: NC1 of the features the head sees, tracked every epoch;

and ``nctune.save_finetuned`` saves the result so ``nctune.load_finetuned`` and
``nctune predict`` work on it
(plus ``OUT/own_loop.json``: the chosen block, NC1 per epoch, the reloaded test accuracy).

Runs offline in about a minute on CPU (ImageNet-pretrained EfficientNet-Lite0 from its
PyPI package, Fashion-MNIST images vendored with nctune written out as PNG files)::

    python examples/own_loop.py --out runs/own_loop
    nctune predict runs/own_loop runs/own_loop/images/test --top-k 3

Smaller and faster (what the test runs): ``--backbone timm:resnet10t --no-pretrained
--image-size 32 --per-class 8 --epochs 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

import nctune
from nctune.data import FASHION_MNIST_CLASSES

CLASSES = (0, 1, 7)  # T-shirt/top, Trouser, Sneaker: three Fashion-MNIST classes


def write_images(root: Path, per_class: int, seed: int = 0) -> Path:
    """Your data: PNG files in class folders, ``root/{train,val,test}/<class>/``."""
    with resources.as_file(resources.files("nctune") / "_data/fashion_mnist_subset.npz") as f:
        npz = np.load(f)
        images, labels = npz["train_images"], npz["train_labels"]
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        idx = rng.permutation(np.flatnonzero(labels == c))
        name = FASHION_MNIST_CLASSES[c].replace("/", "-")
        splits = {"train": idx[:per_class], "val": idx[per_class : per_class + per_class // 2]}
        splits["test"] = idx[per_class + per_class // 2 : 2 * per_class]
        for split, members in splits.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                Image.fromarray(images[i]).save(folder / f"{i}.png")
    return root


@torch.no_grad()
def head_nc1_and_accuracy(model, loader, num_classes: int, device) -> tuple[float, float]:
    """NC1 of what the head sees (``return_features=True``), and accuracy, in eval mode."""
    model.eval()
    stats = nctune.CollapseStats(num_classes)
    correct = seen = 0
    for x, y in loader:
        logits, feats = model(x.to(device), return_features=True)
        stats.update(feats.float(), y.to(device))
        correct += int((logits.argmax(1).cpu() == y).sum())
        seen += len(y)
    return stats.compute().nc1, correct / seen


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own_loop"))
    parser.add_argument("--backbone", default="packaged:efficientnet_lite0")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    data = write_images(args.out / "images", args.per_class)

    # The backbone, and the input config it is trained and served with: its mean/std and
    # crop, at our image size. nctune.eval_transform is the deterministic transform
    # nctune itself uses for validation and test (and load_finetuned attaches).
    backbone = nctune.create_backbone(args.backbone, pretrained=args.pretrained)
    input_config = dataclasses.replace(backbone.input_config, image_size=args.image_size)
    eval_tf = nctune.eval_transform(input_config)
    train_tf = T.Compose(  # our own augmentation
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.RandomResizedCrop(args.image_size, scale=(0.6, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(input_config.mean, input_config.std),
        ]
    )
    train_plain = datasets.ImageFolder(data / "train", transform=eval_tf)
    train = datasets.ImageFolder(data / "train", transform=train_tf)
    val = datasets.ImageFolder(data / "val", transform=eval_tf)
    classes, k = train.classes, len(train.classes)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    plain_loader = DataLoader(train_plain, batch_size=64)
    val_loader = DataLoader(val, batch_size=64)

    # 1-2. One NC pass over the un-augmented training images, then the block to tune.
    profile = nctune.analyze(backbone, plain_loader, val_loader=val_loader, num_classes=k)
    selection = nctune.select_layers(profile)  # the default rule (knee of the NC1 curve)
    # 3. SCL-FT: that block trains, with a skip connection from it into the new head.
    applied = nctune.apply_strategy(backbone, "scl", k, layers=selection.layers)
    model = applied.model.to(device)

    # 4. Our own optimizer, scheduler and loop; NC1 of the head input every epoch.
    optimizer = torch.optim.AdamW(applied.parameters(), lr=args.lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * len(loader)
    )
    history = []
    for epoch in range(args.epochs):
        model.train()  # frozen BatchNorm layers stay in eval mode (TunedModel.train)
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        nc1, train_acc = head_nc1_and_accuracy(model, plain_loader, k, device)
        _, val_acc = head_nc1_and_accuracy(model, val_loader, k, device)
        history.append({"epoch": epoch + 1, "loss": loss.item(), "nc1": nc1, "val": val_acc})
        print(
            f"epoch {epoch + 1}: loss {loss.item():.3f}  head-input NC1 {nc1:.3f}  "
            f"train acc {train_acc:.3f}  val acc {val_acc:.3f}"
        )

    # Save as nctune does: weights + how to rebuild + the input config + class names.
    nctune.save_finetuned(applied.model, args.out, classes=classes, input_config=input_config)

    # Production: reload without this script and label the test images.
    reloaded = nctune.load_finetuned(args.out)
    test_files = sorted(str(p) for p in (data / "test").rglob("*.png"))
    preds = reloaded.predict(test_files)
    truth = [Path(f).parent.name for f in test_files]
    test_acc = sum(p == t for p, t in zip(preds.labels, truth, strict=True)) / len(truth)
    print(
        f"tuned {selection.layers} ({selection.reason}); reloaded test accuracy {test_acc:.3f}\n"
        f"next: nctune predict {args.out} {data / 'test'} --top-k 2"
    )
    summary = {
        "layers": selection.layers,
        "history": history,
        "test_accuracy": test_acc,
        "nc1_profile": [[b.name, b.nc1] for b in profile.layers],
    }
    (args.out / "own_loop.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
