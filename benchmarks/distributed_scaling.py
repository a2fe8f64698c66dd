"""Scaling out: the same fine-tuning run on 1 and on N processes (torchrun), side by side.

Every run trains on the same global batch (``data.batch_size`` is global: N processes each
take about 1/N of every batch), so the runs do the same optimisation; what changes is the
time per epoch and the memory each process holds. For each process count the script
launches ``torchrun --nproc-per-node N`` on this file in worker mode, which runs
``nctune finetune`` and records its own peak resident memory (and peak CUDA memory on a
GPU) when it ends.

    python benchmarks/distributed_scaling.py                      # CPU: 1 vs 2 gloo processes
    python benchmarks/distributed_scaling.py --device cuda --procs 1,2,4,8 \\
        --set backbone.name=timm:resnet50 --set data.image_size=224 \\
        --set data.batch_size=256                                 # a machine with 8 GPUs

Reported per process count: the mean seconds of the epochs after the first (the first
carries DDP's start-up and the allocator's warm-up), its ratio to one process, the peak
memory of each process, and the final validation accuracy (equal runs should agree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The CPU workload: full fine-tuning (every parameter, so DDP all-reduces the whole model)
#: of a random-init ResNet-10t at 32 px on 1,000 vendored Fashion-MNIST images.
DEFAULT = [
    "backbone.name=timm:resnet10t",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=100",
    "data.val_fraction=0.1",
    "data.max_test_samples=50",
    "data.image_size=32",
    "data.batch_size=64",
    "strategy.name=full",
    "train.epochs=4",
    "train.profile_after=false",
    "train.lr=0.01",
]


def worker(args: list[str], out: Path) -> None:
    """One rank: run the CLI, then write this process's peak memory (even on failure)."""
    import torch

    from nctune.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        rank = os.environ.get("RANK", "0")
        peak = {
            # Linux reports ru_maxrss in KiB
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda_mib": torch.cuda.max_memory_allocated() / 2**20
            if torch.cuda.is_available()
            else None,
        }
        (out / f"peak-{rank}.json").write_text(json.dumps(peak))
    sys.exit(code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(procs: int, overrides: list[str], device: str, folder: Path) -> dict:
    run = folder / f"n{procs}"
    run.mkdir()
    sets = [a for o in [*overrides, f"device={device}"] for a in ("--set", o)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={procs}",
        f"--master-port={free_port()}",
        __file__,
        "--worker",
        str(run),
        "finetune",
        *sets,
        "--out",
        str(run / "out"),
        "--json",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: the cores are shared
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{procs} process(es) failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    epochs = [h["seconds"] for h in report["history"]]
    later = epochs[1:] or epochs
    peaks = [json.loads((run / f"peak-{r}.json").read_text()) for r in range(procs)]
    return {
        "procs": procs,
        "epoch_seconds": sum(later) / len(later),
        "epochs": epochs,
        "rss_mib": [p["rss_mib"] for p in peaks],
        "cuda_mib": [p["cuda_mib"] for p in peaks],
        "val_accuracy": report["val_accuracy"],
        "nc1_after": report["nc1_after"],
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[3:], Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="process counts, e.g. 1,2,4,8")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    parser.add_argument("--set", action="append", default=[], help="recipe override")
    args = parser.parse_args()
    counts = [int(n) for n in args.procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, [*DEFAULT, *args.set], args.device, Path(tmp)) for n in counts]
    base = rows[0]["epoch_seconds"]
    cores = os.cpu_count()
    print(f"# device {args.device}, {cores} CPU cores; overrides: {' '.join(args.set) or 'none'}")
    print("| processes | s / epoch | vs 1 | peak RSS per process (MiB) | val acc | NC1 after |")
    print("|---:|---:|---:|---|---:|---:|")
    for r in rows:
        rss = ", ".join(f"{m:.0f}" for m in r["rss_mib"])
        if r["cuda_mib"][0] is not None:
            rss += " (CUDA " + ", ".join(f"{m:.0f}" for m in r["cuda_mib"]) + ")"
        print(
            f"| {r['procs']} | {r['epoch_seconds']:.2f} | {r['epoch_seconds'] / base:.2f}x "
            f"| {rss} | {r['val_accuracy']:.4f} | {r['nc1_after']:.4f} |"
        )
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
