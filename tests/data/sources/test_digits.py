"""data.source=digits: scikit-learn's bundled digits."""

from __future__ import annotations

import sys

import pytest

from nctune.data import build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg


def test_digits():
    s = build_data(cfg(source="digits", val_fraction=0.1, test_fraction=0.2), IC, seed=1)
    assert s.classes == [str(i) for i in range(10)]
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.val) == 180 and len(s.test) == 359
    x, y = s.train[0]
    assert x.shape == (3, 16, 16) and 0 <= y < 10


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="needs scikit-learn: pip install scikit-learn"):
        build_data(cfg(source="digits"), IC)
