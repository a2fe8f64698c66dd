"""What nctune's prediction pipeline costs, and what ONNX Runtime gains on CPU.

Two comparisons, side by side in one run, on the same images:

(a) ``nctune.predict`` on image *files* (decode, eval transform, batched forward, softmax,
    top-k, rows) against a bare ``model(x)`` loop over the same images already decoded and
    preprocessed into tensors (the forward pass alone): images/s of each and their ratio,
    i.e. the overhead of nctune's input pipeline. ``nctune predict`` as a command is timed
    too (a fresh process: interpreter start, imports and model load included).
(b) the run exported to ONNX (``nctune export --dynamic-batch``) under onnxruntime against
    the same PyTorch model on the same preprocessed batches, both on CPU.

The model is packaged ImageNet EfficientNet-Lite0 with a fresh 10-class head saved as an
nctune run (``linear`` strategy, untrained: throughput does not depend on the head's
weights), at 64 px by default; the images are Fashion-MNIST test images from the subset
vendored with nctune, upscaled to 96×96 PNGs so that decoding and resizing do real work.
Each timed measurement alternates with its rival (a, b, b, a, …) and the median of
``--repeats`` is reported. ``--threads`` sets torch's and onnxruntime's intra-op threads.

    python benchmarks/predict.py                    # the docs/benchmarks.md figures
    python benchmarks/predict.py --n 64 --repeats 1 # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, side: int) -> list[str]:
    with resources.as_file(resources.files("nctune") / "_data/fashion_mnist_subset.npz") as f:
        images = np.load(f)["test_images"][:n]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"{i:05d}.png"
        Image.fromarray(img).resize((side, side), Image.BICUBIC).save(p)
        paths.append(str(p))
    return paths


def make_run(run_dir: Path, size: int) -> None:
    from nctune.backbones import create_backbone
    from nctune.data import FASHION_MNIST_CLASSES
    from nctune.runs.artifacts import save_model
    from nctune.training.strategies import apply_strategy

    backbone = create_backbone("packaged:efficientnet_lite0")
    model = apply_strategy(backbone, "linear", 10).export().eval()
    model.set_input_config(dataclasses.replace(backbone.input_config, image_size=size))
    save_model(model, run_dir / "model.safetensors", extra={"classes": FASHION_MNIST_CLASSES})


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="images")
    ap.add_argument("--size", type=int, default=64, help="model input side T")
    ap.add_argument("--side", type=int, default=96, help="side of the PNG files")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import nctune
    from nctune.data import open_image
    from nctune.serving.export import export_run

    tmp = Path(tempfile.mkdtemp(prefix="nctune-bench-predict-"))
    paths = write_images(tmp / "images", args.n, args.side)
    run = tmp / "run"
    make_run(run, args.size)
    model = nctune.load_finetuned(run)
    # the same images, decoded and preprocessed once, in memory
    x = torch.stack([model.transform(open_image(p)) for p in paths])
    batches = list(x.split(args.batch_size))

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b)

    def library() -> None:
        preds = nctune.predict(model, paths, batch_size=args.batch_size, workers=args.threads)
        assert not preds.failed

    bare()
    library()  # warm-up of both
    t_bare, t_lib = [], []
    for i in range(args.repeats):
        order = (bare, library) if i % 2 == 0 else (library, bare)
        for fn in order:
            (t_bare if fn is bare else t_lib).append(median_time(fn, 1))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = tmp / "pred.csv"
    cmd = [sys.executable, "-m", "nctune", "predict", str(run), str(tmp / "images")]
    cmd += ["--out", str(out), "--batch-size", str(args.batch_size), "--device", "cpu"]
    t_cli = median_time(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True), 1)

    # (b) ONNX Runtime against PyTorch on the same batches of pixels in [0, 1]
    import onnxruntime

    onnx_file = export_run(
        run, "onnx", tmp / "model.onnx", dynamic_batch=True, images=paths[:16]
    ).path
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    ic = model.input_config
    mean = torch.tensor(ic.mean).view(1, 3, 1, 1)
    std = torch.tensor(ic.std).view(1, 3, 1, 1)
    pixel_batches = [(b * std + mean).numpy() for b in batches]

    def torch_serving() -> None:
        with torch.inference_mode():
            for b in pixel_batches:
                model((torch.from_numpy(b) - mean) / std)

    def ort_serving() -> None:
        for b in pixel_batches:
            session.run(None, {"pixels": b})

    torch_serving()
    ort_serving()
    t_torch, t_ort = [], []
    for i in range(args.repeats):
        order = (torch_serving, ort_serving) if i % 2 == 0 else (ort_serving, torch_serving)
        for fn in order:
            (t_torch if fn is torch_serving else t_ort).append(median_time(fn, 1))

    n = args.n
    mb, ml = statistics.median(t_bare), statistics.median(t_lib)
    mt, mo = statistics.median(t_torch), statistics.median(t_ort)
    print(
        f"EfficientNet-Lite0 at {args.size} px, {n} PNGs of {args.side}x{args.side}, "
        f"batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    print(f"bare model(x) on pre-decoded tensors : {n / mb:8.1f} images/s")
    print(f"nctune.predict on the files          : {n / ml:8.1f} images/s")
    print(f"nctune predict command (fresh process): {n / t_cli:8.1f} images/s ({t_cli:.1f} s)")
    print(f"PyTorch on pixel batches             : {n / mt:8.1f} images/s")
    print(f"onnxruntime on the same batches      : {n / mo:8.1f} images/s")
    pairs_lib = sorted(b / lib for b, lib in zip(t_bare, t_lib, strict=True))
    pairs_ort = sorted(t / o for t, o in zip(t_torch, t_ort, strict=True))
    print(
        f"ratio predict / bare (throughput)    : {mb / ml:.3f} "
        f"(pairs {pairs_lib[0]:.3f}-{pairs_lib[-1]:.3f})"
    )
    print(
        f"ratio onnxruntime / PyTorch (throughput): {mt / mo:.3f} "
        f"(pairs {pairs_ort[0]:.3f}-{pairs_ort[-1]:.3f})"
    )


if __name__ == "__main__":
    main()
