"""Streaming collapse engine vs a naive "store every feature, numpy pinv" baseline.

For each (D, N, K) the same seeded random features are produced batch by batch; the
engine consumes them as they come, the baseline stacks them into an (N, D) float64
matrix and computes NC1 = tr(Σ_W pinv(Σ_B)) / K with numpy. Each measurement runs in a
fresh subprocess so peak resident memory (ru_maxrss, minus the process's footprint
before the work starts) is the measurement's own. Both results are checked to agree.

    python benchmarks/collapse_engine.py            # D∈{512,2048}, N∈{10k,100k}, K∈{10,100}
    python benchmarks/collapse_engine.py --quick    # D∈{64,256}, N∈{2k,10k}, K∈{10}

The ratio lines (baseline / engine) come last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

BATCH = 1000


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _batches(n: int, d: int, k: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(k, d, generator=g)
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        y = torch.randint(0, k, (b,), generator=g)
        x = centres[y] + torch.randn(b, d, generator=g)
        yield x, y


def child(method: str, n: int, d: int, k: int) -> dict:
    import numpy as np
    import torch

    from nctune.collapse import CollapseStats

    torch.set_num_threads(os.cpu_count() or 1)
    list(_batches(BATCH, d, k))  # warm allocator and kernels outside the timed region
    base = _rss_mib()
    t0 = time.perf_counter()
    if method == "engine":
        stats = CollapseStats(k, mode="full")
        for x, y in _batches(n, d, k):
            stats.update(x, y)
        nc1 = stats.compute().nc1
    else:
        xs, ys = zip(*_batches(n, d, k), strict=True)
        h = torch.cat(xs).double().numpy()
        lab = torch.cat(ys).numpy()
        means = np.stack([h[lab == c].mean(0) for c in range(k)])
        resid = h - means[lab]
        sigma_w = resid.T @ resid / n
        mc = means - h.mean(0)
        sigma_b = mc.T @ mc / k
        nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / k)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": max(_peak_mib() - base, 0.0), "nc1": nc1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--child", nargs=4, metavar=("METHOD", "N", "D", "K"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        m, n, d, k = args.child
        print(json.dumps(child(m, int(n), int(d), int(k))))
        return

    dims, ns, ks = (
        ([64, 256], [2_000, 10_000], [10])
        if args.quick
        else ([512, 2048], [10_000, 100_000], [10, 100])
    )
    import torch

    print(f"# collapse engine benchmark — torch {torch.__version__}, {os.cpu_count()} CPU threads")
    print(
        f"{'D':>5} {'N':>7} {'K':>4} | {'engine s':>9} {'engine MiB':>10} | "
        f"{'naive s':>8} {'naive MiB':>9} | {'rel diff NC1':>12}"
    )
    ratios = []
    for d, n, k in itertools.product(dims, ns, ks):
        res = {}
        for method in ("engine", "naive"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(n), str(d), str(k)],
                capture_output=True,
                text=True,
                check=True,
            )
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        e, b = res["engine"], res["naive"]
        rel = abs(e["nc1"] - b["nc1"]) / abs(b["nc1"])
        print(
            f"{d:>5} {n:>7} {k:>4} | {e['seconds']:>9.2f} {e['peak_mib']:>10.0f} | "
            f"{b['seconds']:>8.2f} {b['peak_mib']:>9.0f} | {rel:>12.1e}",
            flush=True,
        )
        ratios.append(
            (d, n, k, b["seconds"] / e["seconds"], b["peak_mib"] / max(e["peak_mib"], 1.0))
        )
    print()
    for d, n, k, t, m in ratios:
        print(f"ratio naive/engine D={d} N={n} K={k}: time {t:.2f}x, peak memory {m:.1f}x")


if __name__ == "__main__":
    main()
