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
