"""The commands under mutated input keep their contract (tests/fuzz/contract.py): exit 0
with valid, finite outputs, or exit 2 with one line and nothing written or changed; never
a traceback. A bounded, derandomised sample per target (the ``ci`` profile); the long
campaign is ``benchmarks/fuzz.py``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.contract import enforce
from tests.fuzz.targets import TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_contract_holds(seeds, name):
    target = TARGETS[name]

    @given(data=st.data())
    def prop(data):
        example = data.draw(target.examples(seeds), label=name)
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
            enforce(target.run(seeds, example, Path(tmp)), repr(example))

    prop()
