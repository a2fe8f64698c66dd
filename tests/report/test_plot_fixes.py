"""Issue 23's plot fixes, each read back from the matplotlib Figure (never from pixels).

- ``collapse.png``: the legend covers no data point.
- ``layer_sweep.png``: the rules' markers are inside the axes, with a margin.
- ``search.png``: one unit (percent) for accuracy on both panels.
- ``sweep``: "best" is chosen on validation accuracy and reports its test accuracy.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from nctune.analyze import CollapseProfile, LayerCollapse
from nctune.report import profile_figure, sweep_figure, sweep_table
from nctune.report.search import search_figure
from nctune.selection import Selection
from nctune.sweep import SweepPoint, SweepResult
from nctune.tune import SearchResult, TrialRecord

BLOCKS = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def _display_points(ax):
    """Every plotted data point of ``ax`` in display (pixel) coordinates."""
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        for xy in line.get_xydata():
            if all(v == v for v in xy):  # NaN: not drawn
                yield line, line.get_transform().transform(xy)


def test_collapse_legend_covers_no_data_point():
    # The usual shape: NC1 falls with depth, NCC accuracy rises. A legend placed "best"
    # inside the axes avoids the NC1 curve only (matplotlib ignores the twin axes' data)
    # and landed on the NCC accuracy points.
    nc1 = [10.0 / (i + 1) for i in range(8)]
    ncc = [0.1 + 0.11 * i for i in range(8)]
    names = [f"stages.{i}.blocks.0" for i in range(len(nc1))]
    layers = [
        LayerCollapse(i, n, 8, SimpleNamespace(nc1=v), a)
        for i, (n, v, a) in enumerate(zip(names, nc1, ncc, strict=True))
    ]
    profile = CollapseProfile(layers, 40, 4, 1.0, "timm:resnet10t", "digits")
    rec = Selection("elbow", [names[3]], "the knee of the NC1 curve")
    fig = profile_figure(profile, rec)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend()
    box = legend.get_window_extent(renderer)
    n = 0
    for ax in fig.axes:
        for line, (px, py) in _display_points(ax):
            r = line.get_markersize() * fig.dpi / 72 / 2  # the marker's radius in pixels
            assert not (box.x0 - r < px < box.x1 + r and box.y0 - r < py < box.y1 + r), (
                line.get_label(),
                (px, py),
                box,
            )
            n += 1
    assert n == 2 * len(layers)  # NC1 and NCC accuracy, every point checked


@pytest.fixture
def sweep() -> SweepResult:
    # val and test disagree on purpose: layer2.0 is best on validation, layer4.0 on test.
    val = {"layer1.0": 0.60, "layer2.0": 0.90, "layer3.0": 0.70, "layer4.0": 0.80}
    test = {"layer1.0": 0.55, "layer2.0": 0.70, "layer3.0": 0.65, "layer4.0": 0.95}
    points = [
        SweepPoint(b, i, m, test[b] - (0.01 if m == "scl" else 0), val[b], 10 * i + 1, 100,
                   2.0 / (i + 1), 1.0 / (i + 1), 1.0)
        for m in ("layer", "scl")
        for i, b in enumerate(BLOCKS)
    ]  # fmt: skip
    # three rules stacked on the best-scoring block: the highest marker sits highest
    picks = {"last": "layer4.0", "min_nc1": "layer4.0", "max_ncc": "layer4.0", "knee": "layer2.0"}
    result = SweepResult(points, picks, [], "timm:resnet10t", "digits", 3.0)
    result.regret = result.regrets(("layer", "scl"))
    return result


def test_sweep_best_is_chosen_on_validation_and_reports_test(sweep):
    best = sweep.best("layer")
    assert sweep.chosen_on == "val_accuracy" and sweep.metric == "test_accuracy"
    assert best.block == "layer2.0"  # not layer4.0, the best on test
    doc = json.loads(json.dumps(sweep.to_dict()))
    assert doc["best"] == {"layer": "layer2.0", "scl": "layer2.0"}
    assert doc["chosen_on"] == "val_accuracy"
    assert doc["best_score"]["layer"] == pytest.approx(0.70)  # its test accuracy
    # a rule that picked the best-on-test block beats the chosen block: negative regret
    assert doc["regret"]["last"]["layer"] == pytest.approx(100 * (0.70 - 0.95))
    assert doc["regret"]["knee"]["layer"] == pytest.approx(0.0)
    # the table marks the chosen block, on its test accuracy, and says how it was chosen
    console = Console(width=200, record=True)
    console.print(sweep_table(sweep))
    text = console.export_text()
    marked = [line for line in text.splitlines() if "◀" in line and "│" in line]
    assert len(marked) == 1 and "layer2.0" in marked[0] and "70.00% ◀" in marked[0], text
    assert "95.00% ◀" not in text
    assert "chosen on val accuracy" in " ".join(text.split())
    # the plot: a star per mode on the chosen block, at its test accuracy
    ax1 = sweep_figure(sweep).axes[0]
    star = [line for line in ax1.get_lines() if line.get_gid() == "best:layer"]
    assert len(star) == 1
    assert list(star[0].get_xdata()) == [BLOCKS.index("layer2.0")]
    assert list(star[0].get_ydata()) == pytest.approx([70.0])
    assert "best on val: layer2.0" in star[0].get_label()


def test_without_validation_the_sweep_chooses_on_its_only_score(sweep):
    for p in sweep.points:
        p.val_accuracy = None
    assert sweep.chosen_on == "test_accuracy" and sweep.best("layer").block == "layer4.0"


def test_sweep_rule_markers_are_inside_the_axes_with_a_margin(sweep):
    fig = sweep_figure(sweep)
    fig.canvas.draw()
    ax1 = fig.axes[0]
    top = ax1.get_window_extent(fig.canvas.get_renderer()).y1
    markers = [
        line
        for line in ax1.get_lines()
        if str(line.get_gid()).startswith("pick:") and line.get_marker() not in ("None", None)
    ]
    assert len(markers) == len(sweep.picks)
    lo, hi = ax1.get_ylim()
    for line in markers:
        (y,) = line.get_ydata()
        assert lo < y < hi
        _, py = line.get_transform().transform((line.get_xdata()[0], y))
        radius = line.get_markersize() * fig.dpi / 72 / 2
        assert py + radius + 2 <= top, (line.get_gid(), py, radius, top)  # 2 px of margin


def _search(metric: str) -> SearchResult:
    trials = [
        TrialRecord(i, "COMPLETE", {"train.lr": 0.01 * (i + 1)}, value=v, val_accuracy=acc,
                    nc1_after=nc1)
        for i, (v, acc, nc1) in enumerate(
            [(0.62, 0.62, 3.0), (0.81, 0.81, 1.0), (0.74, 0.74, 2.0)]
            if metric == "val_accuracy"
            else [(3.0, 0.62, 3.0), (1.0, 0.81, 1.0), (2.0, 0.74, 2.0)]
        )
    ]  # fmt: skip
    trials.append(TrialRecord(3, "PRUNED", {"train.lr": 0.5}, val_accuracy=0.3))
    direction = "maximize" if metric == "val_accuracy" else "minimize"
    return SearchResult(
        "s", "sqlite:///s.db", "out", metric, direction, 4, {}, trials, trials[1], None
    )


def test_search_figure_has_one_unit_for_accuracy_on_both_panels():
    fig = search_figure(_search("val_accuracy"))
    history, scatter = fig.axes[:2]
    assert history.get_ylabel() == "val accuracy (%)" and scatter.get_ylabel().endswith("(%)")
    trials = next(line for line in history.get_lines() if line.get_label() == "complete trial")
    assert list(trials.get_ydata()) == pytest.approx([62.0, 81.0, 74.0])  # percent, not 0.81
    pruned = next(line for line in history.get_lines() if line.get_label().startswith("pruned"))
    assert list(pruned.get_ydata()) == pytest.approx([30.0])
    ys = [y for line in scatter.get_lines() for y in line.get_ydata()]
    assert ys and all(1.0 < y <= 100.0 for y in ys)


def test_search_figure_on_nc1_puts_no_accuracy_on_the_nc1_axis():
    history, _ = search_figure(_search("nc1_after")).axes[:2]
    assert "%" not in history.get_ylabel() and "nc1" in history.get_ylabel().lower()
    assert not [line for line in history.get_lines() if line.get_label().startswith("pruned")]
