"""What measuring neural collapse costs on top of the forward pass it needs anyway.

Two questions, on the same data in one run:

(a) time: ``analyze`` over every block of a backbone (pre-logits included) against a bare
    forward pass that stops at the same deepest tap. Both run on the same batches, already
    in memory on the device, in eval mode under ``torch.inference_mode`` (and autocast on
    CUDA); one warm-up of each is excluded, then the two alternate (bare/analyze, then
    analyze/bare, …) so drift on a noisy machine hits both alike; the headline ratio is the
    median over these back-to-back pairs. Only analyze's training pass is timed: no
    validation split is given, so no NCC pass runs. Wall and process CPU time are both
    shown; on a CPU box shared with other jobs, ``--threads 1`` avoids OpenMP threads
    waiting on a descheduled sibling, which can slow either contender tenfold.
(b) memory: peak memory of ``analyze`` at N and at 10·N samples, each in a fresh
    subprocess: resident memory above the footprint after setup (backbone, dataset and
    loader built, one warm-up batch analysed) on CPU, ``torch.cuda.max_memory_allocated``
    above the allocation after setup on CUDA. The statistics are O(D² + KD) per layer, so
    the two should match.

Defaults are the offline quickstart: packaged EfficientNet-Lite0 on Fashion-MNIST at
64 px (the full Debian files when installed, else the vendored 3,000-image subset). On a
GPU box, e.g.::

    python benchmarks/analyze_overhead.py --backbone timm:resnet50 --size 224 --n 5000

The ratio lines come last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import suppress

DEFAULT_BACKBONE = "packaged:efficientnet_lite0"


# ----------------------------------------------------------------------- memory probes
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS, if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Hand freed heap pages back to the OS, so the baseline is what setup really holds."""
    import ctypes
    import gc

    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_mib() -> float:
    """VmHWM (resettable) when readable, else ru_maxrss (the whole process lifetime)."""
    with suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------- setup
def _setup(args: argparse.Namespace, n: int):
    """(backbone, dataset of n training images, class count, data description, device)."""
    import torch

    from nctune.backbones import create_backbone
    from nctune.config import BackboneConfig, DataConfig
    from nctune.data import build_data, subsample
    from nctune.errors import BackboneError
    from nctune.taps import resolve_device

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:
        backbone = create_backbone(
            BackboneConfig(name=args.backbone, pretrained=not args.random_init)
        )
    except BackboneError as err:  # no weights here: the cost does not depend on their values
        print(f"# {err}; using random init", file=sys.stderr)
        backbone = create_backbone(BackboneConfig(name=args.backbone, pretrained=False))
    backbone.model.to(device).eval()
    cfg = DataConfig(
        source="fashion_mnist",
        subset=args.subset,
        image_size=args.size,
        val_fraction=0.0,
        batch_size=args.batch_size,
    )
    splits = build_data(cfg, backbone.input_config, seed=0)
    if len(splits.train) < n:
        raise SystemExit(
            f"only {len(splits.train)} training images in {splits.source}; lower --n "
            "(the 10·N memory run needs 10·N) or install dataset-fashion-mnist"
        )
    train = subsample(splits.train, n, seed=0)
    return backbone, train, splits.num_classes, splits.source, device, cfg


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------- (a) time
class _Stop(Exception):
    pass


def _raise_stop(*_args) -> None:
    raise _Stop


def _bare(backbone, batches, device) -> tuple[float, float]:
    """(wall, CPU) seconds of a plain forward over ``batches`` that stops at the classifier's
    input, in the same modes analyze runs in."""
    import torch

    from nctune.taps import autocast, eval_mode

    model = backbone.model
    handle = backbone.classifier.register_forward_pre_hook(_raise_stop)
    try:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with eval_mode(model), torch.inference_mode():
            for x, _ in batches:
                with autocast(device), suppress(_Stop):
                    model(x)
        _sync(device)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        handle.remove()


def _analyze(backbone, batches, k, device) -> tuple[float, float]:
    """(wall, CPU) seconds of ``analyze`` (every block + pre-logits, training pass only)."""
    from nctune.analyze import analyze

    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    analyze(backbone, batches, num_classes=k, include_pre_logits=True, device=device)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _breakdown(backbone, batches, k, device) -> list[tuple[str, int, float]]:
    """(layer, width, seconds of CollapseStats.update alone) on the pooled features analyze
    sees, replayed from memory: what the statistics cost apart from the forward."""
    import torch

    from nctune.analyze import _tap_specs
    from nctune.collapse import CollapseStats
    from nctune.taps import LayerTaps, autocast, eval_mode

    module, specs, prefix = _tap_specs(backbone, None, True)
    feats: dict[str, list[torch.Tensor]] = {s.name: [] for s in specs}
    with eval_mode(module), torch.inference_mode():
        with LayerTaps(module, specs, lambda n, f: feats[n].append(f), prefix_tokens=prefix) as t:
            for x, _ in batches:
                with autocast(device):
                    t.forward(x)
        rows = []
        for s in specs:
            stats = CollapseStats(k)
            _sync(device)
            t0 = time.perf_counter()
            for f, (_, y) in zip(feats[s.name], batches, strict=True):
                stats.update(f, y)
            _sync(device)
            rows.append((s.name, int(feats[s.name][0].shape[1]), time.perf_counter() - t0))
            del stats
    return rows


def time_overhead(args: argparse.Namespace) -> dict:
    import torch

    from nctune.taps import to_device

    backbone, train, k, source, device, _ = _setup(args, args.n)
    # the same batches, decoded once and already on the device, for both contenders
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=False)
    batches = [(to_device(x, device), y.to(device)) for x, y in loader]
    _bare(backbone, batches, device)  # warm-up: kernels, allocator, lazy init
    _analyze(backbone, batches, k, device)
    bare, full = [], []
    for r in range(args.repeats):
        order = ("bare", "analyze") if r % 2 == 0 else ("analyze", "bare")
        for which in order:
            if which == "bare":
                bare.append(_bare(backbone, batches, device))
            else:
                full.append(_analyze(backbone, batches, k, device))
    return {
        "backbone": backbone.spec,
        "source": source,
        "device": str(device),
        "num_blocks": len(backbone.block_names),
        "num_batches": len(batches),
        "bare": bare,
        "analyze": full,
        "breakdown": _breakdown(backbone, batches, k, device) if args.breakdown else [],
    }


# ----------------------------------------------------------------------- (b) memory
def memory_child(args: argparse.Namespace, n: int) -> dict:
    """Peak memory of one analyze over n samples, above the footprint after setup."""
    import torch

    from nctune.analyze import analyze
    from nctune.data import make_loader

    backbone, train, k, source, device, cfg = _setup(args, n)
    loader = make_loader(train, cfg, train=False, device=device)
    warm = [next(iter(loader))]  # kernels, allocator pools, lazy module init
    analyze(backbone, [(x.to(device), y) for x, y in warm], num_classes=k, device=device)
    del warm
    _sync(device)
    _trim()
    base = _rss_mib()
    reset = _reset_peak()
    base_peak = _peak_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    profile = analyze(backbone, loader, num_classes=k, device=device)
    _sync(device)
    seconds = time.perf_counter() - t0
    out = {
        "n": profile.num_samples,
        "seconds": seconds,
        "baseline_mib": base,
        "peak_mib": max(_peak_mib() - (base if reset else base_peak), 0.0),
        "hwm_reset": reset,
        "source": source,
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_base) / 2**20
    return out


def _run_child(args: argparse.Namespace, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child-memory", str(n), *_passthrough(args)]
    # a fixed mmap threshold: large tensors are mapped and unmapped as they come and go,
    # so resident memory follows what is alive instead of glibc's adaptive heap
    env = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), **os.environ}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"memory run at n={n} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _passthrough(args: argparse.Namespace) -> list[str]:
    opts = [
        "--backbone", args.backbone, "--size", str(args.size), "--batch-size",
        str(args.batch_size), "--device", args.device, "--subset", args.subset,
    ]  # fmt: skip
    if args.random_init:
        opts.append("--random-init")
    if args.threads:
        opts += ["--threads", str(args.threads)]
    return opts


# ----------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="'source:name' backbone spec")
    p.add_argument("--size", type=int, default=64, help="input side in pixels (default 64)")
    p.add_argument("--n", type=int, default=1000, help="samples for the timing and memory N")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each contender")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--subset", default="auto", choices=["auto", "full", "vendored"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--random-init", action="store_true", help="skip pretrained weights")
    p.add_argument("--no-memory", action="store_true", help="skip the N vs 10·N memory runs")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    p.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_memory:
        print(json.dumps(memory_child(args, args.child_memory)))
        return

    import torch

    t = time_overhead(args)
    load = os.getloadavg()[0]
    print(
        f"# analyze overhead — torch {torch.__version__}, device {t['device']}, "
        f"{torch.get_num_threads()} CPU threads, load average {load:.1f} on {os.cpu_count()} cores"
        + (" (other processes compete: expect noisy timings)" if load > 0.5 else "")
    )
    print(
        f"# {t['backbone']} ({t['num_blocks']} blocks + pre_logits) on {t['source']}, "
        f"{args.size} px, N={args.n} in {t['num_batches']} batches of {args.batch_size}"
    )
    print(
        f"{'run':>4} | {'bare wall s':>11} {'analyze wall s':>14} {'ratio':>6} | "
        f"{'bare CPU s':>10} {'analyze CPU s':>13} {'ratio':>6}"
    )

    def row(label: str, b: tuple[float, float], a: tuple[float, float]) -> None:
        print(
            f"{label:>4} | {b[0]:>11.3f} {a[0]:>14.3f} {a[0] / b[0]:>6.3f} | "
            f"{b[1]:>10.3f} {a[1]:>13.3f} {a[1] / b[1]:>6.3f}"
        )

    for i, (b, a) in enumerate(zip(t["bare"], t["analyze"], strict=True)):
        row(str(i), b, a)

    def summary(fn, runs):
        return tuple(fn(r[j] for r in runs) for j in (0, 1))

    med_b, med_a = summary(statistics.median, t["bare"]), summary(statistics.median, t["analyze"])
    min_b, min_a = summary(min, t["bare"]), summary(min, t["analyze"])
    row("med", med_b, med_a)
    row("min", min_b, min_a)
    # each pair ran back to back, so its ratio sees one state of a shared machine; the
    # median over pairs resists a burst of load that hits a single run
    pair = [
        statistics.median(a[j] / b[j] for b, a in zip(t["bare"], t["analyze"], strict=True))
        for j in (0, 1)
    ]
    if t["breakdown"]:
        total = sum(s for _, _, s in t["breakdown"])
        print(
            f"# CollapseStats.update alone, replayed on the same pooled features: {total:.3f} s "
            f"({100 * total / med_b[0]:.1f}% of the bare forward's wall time); costliest layers:"
        )
        for name, dim, sec in sorted(t["breakdown"], key=lambda r: -r[2])[:4]:
            print(f"#   {name:<14} D={dim:<5} {sec:.3f} s")

    mem = []
    if not args.no_memory:
        print(f"{'N':>7} | {'peak MiB':>8} | {'baseline MiB':>12} | {'seconds':>7} | source")
        for n in (args.n, 10 * args.n):
            m = _run_child(args, n)
            peak = m.get("cuda_peak_mib", m["peak_mib"])
            mem.append(peak)
            kind = "CUDA" if "cuda_peak_mib" in m else "RSS"
            print(
                f"{m['n']:>7} | {peak:>8.1f} | {m['baseline_mib']:>12.0f} | {m['seconds']:>7.1f} "
                f"| {m['source']} ({kind}{'' if m['hwm_reset'] else ', lifetime peak'})",
                flush=True,
            )

    print()
    print(
        f"ratio analyze/bare forward, wall time, median of {args.repeats} back-to-back pairs: "
        f"{pair[0]:.3f} (min/min {min_a[0] / min_b[0]:.3f}, median/median "
        f"{med_a[0] / med_b[0]:.3f}; goal <= 1.05)"
    )
    print(
        f"ratio analyze/bare forward, process CPU time, median of {args.repeats} pairs: "
        f"{pair[1]:.3f} (min/min {min_a[1] / min_b[1]:.3f}, median/median "
        f"{med_a[1] / med_b[1]:.3f})"
    )
    if mem:
        print(
            f"ratio peak memory 10N/N (N={args.n}): {mem[1] / max(mem[0], 1e-9):.3f} "
            f"({mem[1]:.1f} / {mem[0]:.1f} MiB; goal <= 1.05)"
        )


if __name__ == "__main__":
    main()
