"""nctune.data.loaders: seeded order, and one-line DataErrors from worker processes."""

from __future__ import annotations

import pytest
import torch

from nctune.data import build_data, make_loader
from nctune.errors import DataError
from tests.data.helpers import IC, cfg, corrupt_folder


def test_loader_determinism_and_order(tmp_path):
    s = build_data(cfg(source="digits", val_fraction=0.1), IC)
    c = cfg(source="digits", batch_size=100)

    def labels(loader):
        return torch.cat([y for _, y in loader]).tolist()

    first = labels(make_loader(s.train, c, train=True, seed=7))
    assert first == labels(make_loader(s.train, c, train=True, seed=7))
    assert first != labels(make_loader(s.train, c, train=True, seed=8))
    assert sorted(first) == sorted(s.train.targets.tolist())  # drop_last=False
    assert labels(make_loader(s.val, c, train=False)) == s.val.targets.tolist()
    xb, _ = next(iter(make_loader(s.val, c, train=False)))
    assert xb.shape == (100, 3, 16, 16)


# workers=1 costs ~5 s: after a worker error, torch's DataLoader waits that long to join
# the worker when the loader is collected (torch behaviour, not nctune's).
@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_through_loader_is_one_line(tmp_path, workers):
    root, bad = corrupt_folder(tmp_path)
    c = cfg(source="imagefolder", path=root, val_fraction=0.0, num_workers=workers)
    s = build_data(c, IC)
    with pytest.raises(DataError) as info:
        for _ in make_loader(s.train, c, train=False):
            pass
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(bad))
