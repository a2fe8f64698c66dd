"""The same generated images as an image folder, a saved Hugging Face dataset and WebDataset
shards: ``analyze`` throughput of each relative to the folder, and peak memory of a streamed
``analyze`` over N and 10·N images (issue 22's goals: the full sizes are 20,000 and
100,000 vs 10,000).

Usage::

    python benchmarks/data_formats.py --images 20000 --memory 10000 100000 --out /tmp/fmt

Tiny random-init ``timm:test_resnet`` at 32 px on CPU, so the data path, not the model,
is what is timed. Each memory figure is the peak resident set (VmHWM) of a fresh process running ``analyze``
on webdataset shards: compare the two sizes with each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.image_size=32",
    "data.val_fraction=0",
    "data.batch_size=128",
    "device=cpu",
]


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % classes
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        px = (rng.integers(0, 160, (32, 32, 3)) + 9 * c).astype(np.uint8)
        Image.fromarray(px).save(d / f"{i:06d}.png")
    return root


def make_hf(folder: Path, out: Path) -> Path:
    import datasets

    from nctune.data import list_images

    names = sorted(p.name for p in folder.iterdir())
    paths = [p for c in names for p in list_images(folder / c)]
    labels = [names.index(Path(p).parent.name) for p in paths]
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    datasets.Dataset.from_dict({"image": paths, "label": labels}, features=feats).cast_column(
        "image", datasets.Image()
    ).save_to_disk(str(out))
    return out


def make_shards(folder: Path, out: Path, size: int = 1000) -> Path:
    from nctune.data.sources.webdataset import shard_image_folder

    shard_image_folder(folder, out, size)
    return out


def analyze_seconds(source: str, path: Path) -> tuple[float, int]:
    from nctune.analyze import analyze_recipe
    from nctune.config import load_recipe

    recipe = load_recipe(None, [*MODEL, f"data.source={source}", f"data.path={path}"])
    t = time.perf_counter()
    doc = analyze_recipe(recipe).profile.to_dict()
    return time.perf_counter() - t, doc["num_samples"]


def peak_rss_mb(source: str, path: Path) -> float:
    # VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at its parent's peak on Linux
    code = (
        "import sys; from nctune.analyze import analyze_recipe; "
        "from nctune.config import load_recipe; "
        f"analyze_recipe(load_recipe(None, {MODEL!r} + sys.argv[1:])); "
        "print([int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')][0] / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"data.source={source}", f"data.path={path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--memory", type=int, nargs=2, default=(10000, 100000))
    ap.add_argument("--out", type=Path, default=Path("/tmp/nctune-data-formats"))
    args = ap.parse_args()
    out: dict = {"images": args.images, "rss_mb": {}}
    folder = make_folder(args.out / f"folder{args.images}", args.images)
    formats = {
        "imagefolder": folder,
        "hf": make_hf(folder, args.out / f"hf{args.images}"),
        "webdataset": make_shards(folder, args.out / f"wds{args.images}"),
    }
    secs = {}
    for source, path in formats.items():
        secs[source], n = analyze_seconds(source, path)
        assert n == args.images, (source, n)
    out["seconds"] = secs
    out["relative_throughput"] = {s: secs["imagefolder"] / t for s, t in secs.items()}
    for n in args.memory:
        f = make_folder(args.out / f"folder{n}", n) if n != args.images else folder
        shards = make_shards(f, args.out / f"wds{n}") if n != args.images else formats["webdataset"]
        out["rss_mb"][n] = peak_rss_mb("webdataset", shards)
    small, large = args.memory
    out["rss_ratio"] = out["rss_mb"][large] / out["rss_mb"][small]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
