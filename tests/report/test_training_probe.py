"""The training figure shows ``auto``'s probe and range test: facts read back from the Figure.

The result is a hand-made namespace with only the fields the plotter reads, and the
``probe`` / ``lr_finder`` entries in the shape ``report.json`` stores them.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest

from nctune.report import training_figure

BLOCKS = ["blocks.3.0", "blocks.4.0", "blocks.4.1"]
NC1_BEFORE = [8.0, 5.0, 3.0]
NC1_AFTER = [2.5, 0.9, 1.6]
VAL = [0.71, 0.80, None]  # the third block was not scored


def _probe(criterion: str = "nc1_after", winner: str = "blocks.4.0") -> dict:
    return {
        "winner": winner,
        "criterion": criterion,
        "why": f"{winner} reached the lowest head-input NC1",
        "budget_steps": 60,
        "steps": 57,
        "seconds": 4.2,
        "candidates": [
            {"block": b, "rank": i, "steps": 19, "seconds": 1.4, "lr": 1e-3, "nc1_before": nb,
             "nc1_after": na, "val_accuracy": v, "train_loss": 0.5}
            for i, (b, nb, na, v) in enumerate(zip(BLOCKS, NC1_BEFORE, NC1_AFTER, VAL, strict=True))
        ],
    }  # fmt: skip


def _lr_finder() -> dict:
    lrs = [1e-5 * 10 ** (i / 4) for i in range(17)]  # 1e-5 … 1e-1
    smoothed = [2.3 - 0.1 * i if i < 12 else 1.1 + 0.5 * (i - 11) for i in range(17)]
    return {
        "lr": 3e-3,
        "lr_min_loss": lrs[11],
        "lr_steepest": lrs[5],
        "steps": 17,
        "diverged": True,
        "seconds": 0.8,
        "why": "a tenth of the lowest",
        "curve": {"lr": lrs, "loss": smoothed, "smoothed": smoothed},
    }


def _result(probe=None, lr_finder=None) -> SimpleNamespace:
    history = [
        {"epoch": e, "loss": 2.0 / e, "accuracy": 0.3 + 0.1 * e, "val_accuracy": 0.5,
         "nc1": 3.0 / e}
        for e in (1, 2, 3)
    ]  # fmt: skip
    return SimpleNamespace(
        strategy="auto", backbone="timm:resnet10t", dataset="digits", history=history,
        nc1_before=4.0, best_epoch=2, probe=probe, lr_finder=lr_finder,
    )  # fmt: skip


def _axes(fig, gid):
    found = [ax for ax in fig.axes if ax.get_gid() == gid]
    assert len(found) == 1, [ax.get_gid() for ax in fig.axes]
    return found[0]


def _line(ax, gid):
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def _values(line) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in line.get_ydata()]


def test_without_probe_or_lr_test_the_figure_is_as_before():
    fig = training_figure(_result())
    assert len(fig.axes) == 3
    assert not [ax for ax in fig.axes if ax.get_gid()]
    assert tuple(fig.get_size_inches()) == (11, 3.6)
    # a result type without the fields at all (an older RunResult) draws the same
    bare = _result()
    del bare.probe, bare.lr_finder
    assert len(training_figure(bare).axes) == 3


@pytest.mark.parametrize(
    ("criterion", "words"),
    [("nc1_after", "by lowest NC1 after"), ("val_accuracy", "by validation accuracy")],
)
def test_probe_panel_names_the_winner_and_the_criterion(criterion, words):
    fig = training_figure(_result(_probe(criterion)))
    ax = _axes(fig, "probe")
    assert ax.get_title() == f"probe: winner blocks.4.0 {words}"
    assert fig.axes.index(ax) == 3  # after the three per-epoch panels


def test_probe_panel_plots_the_candidates_nc1_and_val_accuracy():
    fig = training_figure(_result(_probe()))
    fig.canvas.draw()
    ax = _axes(fig, "probe")
    before, after = _line(ax, "probe:nc1_before"), _line(ax, "probe:nc1_after")
    assert list(before.get_xdata()) == list(after.get_xdata()) == [0, 1, 2]
    assert _values(before) == NC1_BEFORE
    assert _values(after) == NC1_AFTER
    assert [t.get_text() for t in ax.get_xticklabels()] == BLOCKS
    assert ax.get_yscale() == "linear"  # 0.9 … 8: under a decade and a bit, read linearly
    val = _line(_axes(fig, "probe:val_axis"), "probe:val_accuracy")
    assert _values(val)[:2] == pytest.approx([71.0, 80.0]) and _values(val)[2] is None


def test_probe_panel_highlights_the_winner():
    probe = _probe(winner="blocks.4.1")
    fig = training_figure(_result(probe))
    fig.canvas.draw()
    ax = _axes(fig, "probe")
    bands = [p for p in ax.patches if p.get_gid() == "probe:winner"]
    assert len(bands) == 1
    # the band's corners in data x (a Rectangle or a Polygon, by matplotlib version)
    xs = bands[0].get_patch_transform().transform(bands[0].get_path().vertices)[:, 0]
    assert min(xs) < BLOCKS.index("blocks.4.1") < max(xs) and max(xs) - min(xs) < 1
    labels = {t.get_text(): t for t in ax.get_xticklabels()}
    assert labels["blocks.4.1"].get_fontweight() == "bold"
    assert all(labels[b].get_fontweight() != "bold" for b in BLOCKS if b != "blocks.4.1")


def test_probe_panel_goes_log_when_nc1_spans_decades_and_skips_missing_values():
    probe = copy.deepcopy(_probe())
    probe["candidates"][0]["nc1_before"] = 400.0
    probe["candidates"][2]["nc1_after"] = None  # undefined NC1 is a gap, not a zero
    for c in probe["candidates"]:
        c["val_accuracy"] = None
    fig = training_figure(_result(probe))
    ax = _axes(fig, "probe")
    assert ax.get_yscale() == "log"
    assert _values(_line(ax, "probe:nc1_after")) == [2.5, 0.9, None]
    assert not [a for a in fig.axes if a.get_gid() == "probe:val_axis"]  # nothing to show


def test_lr_panel_marks_the_chosen_lr():
    lr = _lr_finder()
    fig = training_figure(_result(_probe(), lr))
    ax = _axes(fig, "lr_finder")
    assert fig.axes[-1] is ax or fig.axes.index(ax) == 4
    assert ax.get_xscale() == "log"
    curve = _line(ax, "lr:curve")
    assert list(curve.get_xdata()) == lr["curve"]["lr"]
    assert list(curve.get_ydata()) == lr["curve"]["smoothed"]
    chosen = _line(ax, "lr:chosen")
    assert set(chosen.get_xdata()) == {3e-3}
    assert "chosen lr 0.003" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_lr_panel_alone_and_flat_entry():
    """A range test without a probe is the fourth panel; a flat ``lrs``/``smoothed`` reads too."""
    flat = {"lr": 1e-3, "lrs": [1e-4, 1e-3, 1e-2], "smoothed": [2.0, 1.5, 3.0], "steps": 3}
    fig = training_figure(_result(lr_finder=flat))
    assert len(fig.axes) == 4
    ax = _axes(fig, "lr_finder")
    assert list(_line(ax, "lr:curve").get_xdata()) == flat["lrs"]
    assert set(_line(ax, "lr:chosen").get_xdata()) == {1e-3}
    fig.canvas.draw()  # renders without error on a log axis
