"""The figures tell the truth: structural facts read back from the Figure objects.

Each figure is rendered from a fixed, hand-made result (no model, no data), so the expected
positions and labels are known exactly.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from matplotlib.lines import Line2D

from nctune.analyze import CollapseProfile, LayerCollapse
from nctune.finetune import RunResult
from nctune.report import profile_figure, sweep_figure, training_figure
from nctune.selection import Selection
from nctune.sweep import SweepPoint, SweepResult

BLOCKS = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def _no_raw_underscores(label: str) -> bool:
    return "_" not in re.sub(r"\$[^$]*\$", "", label)  # mathtext ($Σ_W$) renders subscripts


@pytest.fixture
def sweep() -> SweepResult:
    points = [
        SweepPoint(
            b,
            i,
            mode,
            0.5 + 0.1 * i - (0.05 if mode == "scl" else 0),
            None,
            10 * i,
            100,
            2.0 / (i + 1),
            1.0 / (i + 1),
            1.0,
        )
        for mode in ("layer", "scl")
        for i, b in enumerate(BLOCKS)
    ]
    picks = {"last": "layer4.0", "elbow": "layer2.0", "knee": "layer2.0", "first": "layer1.0"}
    return SweepResult(points, picks, [], "timm:resnet10t", "digits", 3.0)


def test_sweep_rule_markers_sit_on_the_picked_block(sweep):
    fig = sweep_figure(sweep)
    ax1, ax2 = fig.axes[:2]
    for rule, block in sweep.picks.items():
        want = BLOCKS.index(block)
        for ax in (ax1, ax2):
            lines = [a for a in ax.get_lines() if a.get_gid() == f"pick:{rule}"]
            assert lines, f"no mark of rule {rule}"
            for line in lines:
                assert set(line.get_xdata()) == {want}, (rule, line.get_xdata())
        assert f"rule {rule} → {block}" in _legend_texts(ax1)
    # the block labels are the ticks 0..n-1, so "x = index" really is "on that block"
    fig.canvas.draw()
    assert list(ax2.get_xticks()) == list(range(len(BLOCKS)))
    assert [t.get_text() for t in ax2.get_xticklabels()] == BLOCKS
    # two rules on one block keep distinct markers
    markers = {
        line.get_gid(): (line.get_marker(), tuple(line.get_ydata()))
        for line in ax1.get_lines()
        if line.get_gid() in ("pick:elbow", "pick:knee")
        and line.get_marker() not in ("None", None, "")
    }
    assert len(set(markers.values())) == 2


def test_sweep_rule_outside_the_swept_blocks_is_not_drawn(sweep):
    sweep.picks["deep"] = "layer9.9"
    fig = sweep_figure(sweep)
    assert not [a for a in fig.axes[0].get_lines() if a.get_gid() == "pick:deep"]


@pytest.fixture
def run() -> RunResult:
    history = [
        {
            "epoch": e,
            "phase": "main",
            "loss": 2.0 / e,
            "accuracy": 0.3 + 0.1 * e,
            "val_accuracy": [0.4, 0.6, 0.55][e - 1],
            "nc1": 3.0 / e,
            "lr": 0.01,
            "seconds": 1.0,
        }
        for e in (1, 2, 3)
    ]
    return RunResult(
        strategy="scl", tuned_layers=["layer3.0"], trainable_params=10, total_params=100,
        val_accuracy=0.6, test_accuracy=None, nc1_before=4.0, nc1_after=1.0,
        wall_seconds=3.0, history=history, best_epoch=2, backbone="timm:resnet10t",
        dataset="fashion-mnist (vendored subset)",
    )  # fmt: skip


def test_training_figure(run):
    fig = training_figure(run)
    fig.canvas.draw()
    loss, acc, nc1 = fig.axes[:3]
    for ax in (loss, acc, nc1):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        best = [line for line in ax.get_lines() if line.get_label() == "kept epoch 2"]
        assert len(best) == 1 and set(best[0].get_xdata()) == {2}
    assert list(loss.get_lines()[0].get_ydata()) == [2.0, 1.0, 2.0 / 3]
    assert "train loss" in _legend_texts(loss)
    ref = [line for line in nc1.get_lines() if line.get_label().startswith("before training")]
    assert len(ref) == 1 and set(ref[0].get_ydata()) == {4.0}
    # plain decimals on the NC1 axis, no 10^x mathtext
    labels = [t.get_text() for t in nc1.get_yticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels
    # the NC1 label does not overlap its tick labels
    r = fig.canvas.get_renderer()
    label_box = nc1.yaxis.label.get_window_extent(r)
    for t in nc1.get_yticklabels():
        if t.get_text():
            assert not label_box.overlaps(t.get_window_extent(r)), t.get_text()
    title = fig._suptitle.get_text()
    assert "((" not in title and "))" not in title and title.count("(") == title.count(")")
    assert "timm:resnet10t" in title and "fashion-mnist" in title


def _collapse_figure():
    layers = [
        LayerCollapse(i, name, 8, SimpleNamespace(nc1=5.0 / (i + 1)), 0.5 + 0.1 * i)
        for i, name in enumerate(BLOCKS)
    ]
    profile = CollapseProfile(layers, 40, 4, 1.0, "timm:resnet10t", "digits")
    return profile_figure(profile, Selection("elbow", ["layer3.0"], "the knee of the NC1 curve"))


def test_collapse_figure_shows_the_recommended_band_in_the_legend():
    fig = _collapse_figure()
    ax = fig.axes[0]
    texts = _legend_texts(ax)
    assert "recommended (elbow): layer3.0" in texts
    assert "NC1 (train)" in texts and "NCC accuracy (val)" in texts
    band = ax.get_legend().legend_handles[texts.index("recommended (elbow): layer3.0")]
    assert not isinstance(band, Line2D)  # a patch: the band itself
    x0 = ax.patches[-1].get_x()
    x1 = x0 + ax.patches[-1].get_width()
    assert x0 < BLOCKS.index("layer3.0") < x1 and x1 - x0 < 1
    for a in fig.axes:
        assert _no_raw_underscores(a.get_ylabel()) and _no_raw_underscores(a.get_xlabel())


def test_every_figure_fits_its_canvas(run, sweep):
    # The PNGs are saved without bbox_inches="tight" (report/_common.py: it drew each figure
    # twice): constrained layout must then keep every label, legend and title on the canvas.
    from nctune.report.evaluation import confusion_figure
    from nctune.report.search import search_figure
    from tests.report.test_plot_fixes import _search
    from tests.report.test_training_probe import _lr_finder, _probe, _result
    from tests.test_evaluate import Evaluation

    confusion = Evaluation(
        run="r", data="d", split=None, classes=[f"class_{k}" for k in range(12)], num_images=5,
        num_failed=0, accuracy=0.8, top_k=1, top_k_accuracy=0.8, per_class=[], macro={},
        weighted={}, confusion=[[k + j for j in range(12)] for k in range(12)],
    )  # fmt: skip
    figures = {
        "training": training_figure(run),
        "training, probe and lr test": training_figure(_result(_probe(), _lr_finder())),
        "collapse": _collapse_figure(),
        "sweep": sweep_figure(sweep),
        "search": search_figure(_search("val_accuracy")),
        "search on nc1": search_figure(_search("nc1_after")),
        "confusion": confusion_figure(confusion),
    }
    for name, fig in figures.items():
        fig.canvas.draw()
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, every artist drawn
        w, h = fig.get_size_inches()
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= w and box.y1 <= h, (name, box, w, h)
