"""Selection rules when NC1 is undefined (NaN) or infinite on some or every block."""

from __future__ import annotations

import math

import pytest

from nctune.selection import select_layers
from tests.test_selection import profile

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("rule", ["knee", "min_nc1"])
def test_every_block_undefined_picks_the_deepest_and_says_why(rule):
    sel = select_layers(profile([NAN, NAN, NAN]), rule)
    assert sel.layers == ["blocks.2"] and "undefined on every block" in sel.reason


def test_min_nc1_skips_undefined_blocks_and_never_reports_nan():
    sel = select_layers(profile([NAN, 3.0, INF, 2.0, NAN]), "min_nc1")
    assert sel.layers == ["blocks.3"] and "nan" not in sel.reason


def test_knee_ignores_undefined_blocks():
    assert select_layers(profile([INF, 5.0, 1.0, NAN]), "knee").layers == ["blocks.2"]
