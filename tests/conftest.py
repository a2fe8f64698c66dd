"""Suite-wide test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the
    # OpenMP threads of concurrent processes spin against each other (forward passes ran
    # ~100x slower). One thread keeps test times stable; subprocess tests set
    # OMP_NUM_THREADS=1 for the same reason.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """``tiny_runs(strategy)`` → the folder of a finished tiny fine-tune (cached per strategy).

    An image folder with train/val/test splits of non-square PNGs (so resize and crop
    matter), fine-tuned at ``data.image_size: 32`` — not the backbone's default 224 — with
    a random-init resnet10t on CPU in a few seconds. The run folder holds what
    ``nctune finetune`` writes; the data stay next to it for predict and export.
    """
    from tests.runs import make_tiny_run

    root = tmp_path_factory.mktemp("tiny_runs")
    cache: dict[str, object] = {}

    def get(strategy: str = "scl"):
        if strategy not in cache:
            cache[strategy] = make_tiny_run(root, strategy)
        return cache[strategy]

    return get
