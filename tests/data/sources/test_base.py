"""nctune.data.sources._base: the data.path checks every path-based source shares."""

from __future__ import annotations

import pytest

from nctune.data import build_data
from nctune.errors import DataError
from tests.data.helpers import IC, cfg


@pytest.mark.parametrize("source", ["imagefolder", "csv", "fashion_mnist"])
def test_missing_path(tmp_path, source):
    with pytest.raises(DataError, match=r"^data\.path: .*/nope does not exist$"):
        build_data(cfg(source=source, path=tmp_path / "nope"), IC)


def test_path_required(tmp_path):
    with pytest.raises(DataError, match=r"^data\.path: required for data\.source=imagefolder"):
        build_data(cfg(source="imagefolder"), IC)
