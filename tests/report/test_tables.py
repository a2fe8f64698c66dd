"""Wide tables stay readable at 80 columns, on a terminal or not: block names never cut."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from nctune.report import profile_table, sweep_table
from nctune.sweep import SweepPoint, SweepResult

#: ConvNeXt/ViT-style paths: long enough that a squeezed column would cut them.
BLOCKS = [f"stages.{s}.blocks.{b}.conv_dw" for s in range(4) for b in (0, 11)]


def _sweep() -> SweepResult:
    points = [
        SweepPoint(b, i, mode, 0.5 + 0.01 * i, 0.5, 10 * i + 1, 10_000, 3.14159 / (i + 1),
                   1.2345 / (i + 1), 1.0)
        for i, b in enumerate(BLOCKS)
        for mode in ("layer", "scl")
    ]  # fmt: skip
    picks = {"knee": BLOCKS[2], "last": BLOCKS[-1], "min_nc1": BLOCKS[-1], "max_ncc": BLOCKS[5]}
    return SweepResult(
        points, picks, [], "timm:convnext_tiny.fb_in22k_ft_in1k", "imagefolder:/data/x", 9.0
    )


def _printed(table_fn, monkeypatch, columns: int) -> str:
    """What the CLI prints with COLUMNS set and stdout not a terminal."""
    monkeypatch.setenv("COLUMNS", str(columns))
    buf = io.StringIO()
    console = Console(file=buf)  # as the commands make it: width from COLUMNS
    assert console.width == columns
    console.print(table_fn(console.width))
    return buf.getvalue()


@pytest.mark.parametrize("columns", [80, 200])
def test_sweep_table_keeps_every_block_name_whole(monkeypatch, columns):
    result = _sweep()
    text = _printed(lambda w: sweep_table(result, width=w), monkeypatch, columns)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= columns
    for block in BLOCKS:
        assert sum(block in line for line in lines) == 1, (block, text)
    assert "◀" in text  # the best block is still marked
    if columns == 80:  # secondary columns go, and the caption says where they are
        assert "params" not in text.split("\n\n")[0].splitlines()[2] and "sweep.json" in text
    else:
        assert "SCL-FT params" in text and "Layer-FT NC1 after" in text


def test_profile_table_keeps_layer_names_whole_at_80_columns(monkeypatch):
    from types import SimpleNamespace

    from nctune.analyze import CollapseProfile, LayerCollapse

    metrics = SimpleNamespace(nc1=1.23456, trace_ratio=2.34567, cdnv=0.345678)
    layers = [LayerCollapse(i, b, 768, metrics, 0.5) for i, b in enumerate(BLOCKS)]
    profile = CollapseProfile(layers, 1000, 10, 3.0, "timm:convnext_tiny", "imagefolder:/x")
    text = _printed(lambda w: profile_table(profile), monkeypatch, 80)
    for block in BLOCKS:
        assert sum(block in line for line in text.splitlines()) == 1, text
