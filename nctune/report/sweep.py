"""Rendering of ``nctune sweep`` (:class:`nctune.sweep.SweepResult`): the table and
``layer_sweep.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from rich.markup import escape

from nctune.report._common import _figure, _fmt, _pct, _plain_ticks, _png
from nctune.report.fit import Col, FitTable
from nctune.runs._io import atomic_write_bytes


def _mode_label(mode: str) -> str:
    return "Layer-FT" if mode == "layer" else "SCL-FT"


def sweep_table(result: Any, width: int | None = None) -> FitTable:
    """One row per swept block: accuracy and NC1 after for each mode, and which rules picked it.

    ◀ marks each mode's best block, chosen on validation accuracy; the table reports its
    test accuracy (:attr:`~nctune.sweep.SweepResult.metric`) beside the validation accuracy
    it was chosen by.

    Args:
        result: a :class:`~nctune.sweep.SweepResult`.
        width: at most this wide (default: the console's width). On a narrow console the
            per-mode "NC1 after", "params" and validation columns go first (they stay in
            sweep.json); block names are never wrapped or cut, at any width.
    """
    modes = sorted({p.mode for p in result.points}, key=["layer", "scl"].index)
    metric = result.metric.replace("_accuracy", "")
    chosen_on = result.chosen_on.replace("_accuracy", "")
    val = chosen_on != metric  # a validation column of its own beside the reported score
    cols = [Col("#", "right", name=True), Col("block", name=True)]
    cols.append(Col("NC1 pre", "right", drop=2))
    for m in modes:
        label = _mode_label(m)
        if val:
            cols.append(Col(f"{label} val", "right", drop=1))
        cols.append(Col(f"{label} {metric}", "right"))
        cols.append(Col(f"{label} NC1 after", "right", drop=4))
        cols.append(Col(f"{label} params", "right", drop=3))
    cols.append(Col("picked by", wrap=True))
    caption = (
        f"accuracy per tuned block; ◀ best per mode, chosen on {chosen_on} accuracy; "
        "NC1 pre: the block's NC1 before tuning"
    )
    t = FitTable(cols, title=f"Layer sweep: {result.backbone} on {result.dataset}",
                 caption=caption, more="sweep.json", width=width)  # fmt: skip
    best = {m: getattr(result.best(m), "block", None) for m in modes}
    blocks = list(dict.fromkeys(p.block for p in result.points))
    for block in blocks:
        row_pts = {p.mode: p for p in result.points if p.block == block}
        first = next(iter(row_pts.values()))
        cells = [str(first.index), escape(block), _fmt(first.nc1_before)]
        for m in modes:
            p = row_pts.get(m)
            score = None if p is None else getattr(p, result.metric)
            mark = " ◀" if best[m] == block else ""
            if val:
                cells.append(_pct(None if p is None else p.val_accuracy, 2))
            cells.append("–" if score is None else f"{100 * score:.2f}%{mark}")
            cells += [
                _fmt(p.nc1_after if p else None),
                "–" if p is None else f"{100 * p.trainable_params / p.total_params:.1f}%",
            ]
        cells.append(", ".join(r for r, b in result.picks.items() if b == block))
        t.add_row(*cells)
    return t


#: Marker shapes of the rules' picks, so picks of one block stay distinguishable.
_PICK_MARKERS = "v^<>Dp*h"


def _pick_markers(ax, result: Any, x: dict[str, int], top: float, step: float) -> float:
    """Each rule's pick: a dashed line at its block and a marker above the score curves,
    stacked per block from ``top`` by ``step`` (data units); returns the highest marker."""
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    stacked: dict[str, int] = {}
    highest = top
    for i, (rule, block) in enumerate(sorted(result.picks.items())):
        if block not in x:  # the rule picked a block outside the swept subset
            continue
        color = colors[(i + 2) % len(colors)]
        k = stacked[block] = stacked.get(block, -1) + 1
        for a in ax:
            a.axvline(x[block], color=color, ls="--", lw=1.2, alpha=0.7, gid=f"pick:{rule}")
        y = top + step * (k + 1)
        highest = max(highest, y)
        ax[0].plot(
            [x[block]],
            [y],
            _PICK_MARKERS[i % len(_PICK_MARKERS)],
            color=color,
            ms=8,
            ls="none",
            label=f"rule {rule} → {block}",
            gid=f"pick:{rule}",
        )
    return highest


def sweep_figure(result: Any) -> Figure:
    """The ``layer_sweep.png`` figure: score and NC1 after tuning against the tuned block.

    Each selection rule's pick is a vertical line at exactly the x position of the block it
    picked (block ``i`` of the sweep sits at ``x = i``), plus a marker above the score
    curves; rules that pick the same block share the line and stack their markers, and the
    y-limits hold every marker with a margin. Each mode's best block (chosen on validation,
    :meth:`~nctune.sweep.SweepResult.best`) is a star on its score curve (gid ``best:MODE``);
    the validation accuracy it was chosen by is a thin dotted curve.

    Returns:
        A :class:`matplotlib.figure.Figure` with two axes (score, NC1) sharing x.
    """
    blocks = list(dict.fromkeys(p.block for p in sorted(result.points, key=lambda p: p.index)))
    x = {b: i for i, b in enumerate(blocks)}
    fig = _figure(figsize=(max(6.0, 0.4 * len(blocks) + 2) + 3.0, 6.0))  # + the legends
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    metric = result.metric.replace("_accuracy", "")
    shown: list[float] = []
    for mode, style in (("layer", "o-"), ("scl", "s-")):
        pts = sorted((p for p in result.points if p.mode == mode), key=lambda p: x[p.block])
        if not pts:
            continue
        label = _mode_label(mode)
        xs = [x[p.block] for p in pts]
        ys = [100 * (getattr(p, result.metric) or float("nan")) for p in pts]
        (line,) = ax1.plot(xs, ys, style, label=f"{label} ({metric})")
        shown += ys
        if result.chosen_on != result.metric:
            val = [100 * (p.val_accuracy or float("nan")) for p in pts]
            ax1.plot(xs, val, ":", color=line.get_color(), lw=1, alpha=0.8, label=f"{label} (val)")
            shown += val
        best = result.best(mode)
        if best is not None and getattr(best, result.metric) is not None:
            score = 100 * getattr(best, result.metric)
            ax1.plot([x[best.block]], [score], "*", ms=13, color=line.get_color(), ls="none",
                     label=f"{label} best on {result.chosen_on.replace('_accuracy', '')}: "
                     f"{best.block} ({metric} {score:.1f}%)", gid=f"best:{mode}")  # fmt: skip
        ax2.plot(
            xs,
            [p.nc1_after or float("nan") for p in pts],
            style,
            label=f"{label}: head input after",
        )
    ax2.plot(
        range(len(blocks)),
        [next(p.nc1_before for p in result.points if p.block == b) or float("nan") for b in blocks],
        "k:",
        label="block, pretrained",
    )
    finite = [v for v in shown if v == v] or [0.0, 100.0]
    lo, hi = min(finite), max(finite)
    step = max(0.08 * (hi - lo), 1.0)  # one marker's room, in accuracy points
    highest = _pick_markers((ax1, ax2), result, x, hi, step)
    ax1.set_ylim(lo - step, highest + 1.5 * step)  # every marker inside, with a margin
    # the markers' strip may reach past 100 %: no accuracy tick there
    ax1.set_yticks([t for t in ax1.get_yticks() if lo - step <= t <= min(100.0, hi + step)])
    ax1.set_ylabel(f"{result.metric.replace('_', ' ')} (%)")
    ax1.grid(alpha=0.3)
    # legends beside the axes, where they cover no curve and no marker
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax2.set_yscale("log")
    _plain_ticks(ax2)
    ax2.set_ylabel("NC1 (train, log)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax2.set_xticks(range(len(blocks)), blocks, rotation=60, ha="right", fontsize=7)
    ax2.set_xlabel("tuned block")
    fig.suptitle(f"Layer sweep: {result.backbone} on {result.dataset}", fontsize=9)
    return fig


def plot_sweep(result: Any, path: str | Path) -> Path:
    """Save :func:`sweep_figure` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(sweep_figure(result)))
