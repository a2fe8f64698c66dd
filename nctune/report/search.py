"""Rendering of a search (:class:`nctune.tune.SearchResult`): the trial table and search.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.markup import escape

from nctune.report import _figure, _fmt, _png
from nctune.report.fit import Col, FitTable
from nctune.runs._io import atomic_write_bytes

_STATE_STYLE = {
    "COMPLETE": "green",
    "PRUNED": "yellow",
    "FAIL": "red",
    "RUNNING": "cyan",
    "WAITING": "dim",
}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return format(v, ".3g")
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def trials_table(trials: list, best: int | None = None, title: str = "Trials") -> FitTable:
    """One row per trial: number, state, params, val/test accuracy, NC1 after, seconds.

    Parameters wrap between ``name=value`` pairs, never inside one; on a narrow console the
    seconds, trainable share, NC1 and epochs go first (they stay in search.json), then the
    table turns into one block per trial.

    Args:
        trials: :class:`~nctune.tune.TrialRecord` objects (finished or running).
        best: the best trial's number, marked with a star.
        title: the table's title.
    """
    table = FitTable(
        [
            Col("#", "right", name=True),
            Col("state", name=True),
            Col("params", wrap=True),
            Col("epochs", "right", drop=3),
            Col("val acc", "right"),
            Col("test acc", "right", drop=2),
            Col("NC1 after", "right", drop=4),
            Col("trainable", "right", drop=5),
            Col("s", "right", drop=6),
        ],
        title=title,
        more="search.json",
    )
    for t in sorted(trials, key=lambda t: t.number):
        style = _STATE_STYLE.get(t.state, "")
        params = escape(
            "  ".join(f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in t.params.items())
        )
        state = f"[{style}]{t.state.lower()}[/]" if style else t.state.lower()
        if t.state == "FAIL":
            params = f"{params}  [red]{escape(t.reason or '')}[/]"
        table.add_row(
            f"{t.number}{' ★' if best is not None and t.number == best else ''}",
            state,
            params,
            _fmt(t.epochs, "d") if t.epochs is not None else "–",
            _pct(t.val_accuracy),
            _pct(t.test_accuracy),
            _fmt(t.nc1_after),
            "–" if t.trainable_percent is None else f"{t.trainable_percent:.1f}%",
            "–" if t.wall_seconds is None else f"{t.wall_seconds:.1f}",
        )
    return table


def _metric_words(metric: str) -> str:
    return metric.replace("_accuracy", " accuracy").replace("_", " ")


def search_tables(result) -> list[FitTable]:
    """The trial table and the parameter importances of a finished search."""
    better = "higher" if result.direction == "maximize" else "lower"
    title = (
        f"Trials of study {result.study_name!r}, by {_metric_words(result.metric)} "
        f"({better} is better)"
    )
    tables = [trials_table(result.trials, result.best.number if result.best else None, title)]
    if result.importances:
        imp = FitTable(
            [Col("parameter", name=True), Col("importance", "right")],
            title="Parameter importance",
        )
        for name, value in result.importances.items():
            imp.add_row(escape(name), f"{value:.2f}")
        tables.append(imp)
    return tables


def _is_accuracy(metric: str) -> bool:
    return metric.endswith("accuracy")


def search_figure(result) -> Figure:
    """The ``search.png`` figure: the optimisation history and, across trials, accuracy
    against the NC1 of the head input after training.

    Accuracies are percentages on both panels (an accuracy metric is scaled by 100 on the
    history panel too, and each axis says "(%)"); a pruned trial's best validation accuracy
    is drawn on the history panel only when the metric is that accuracy.

    Returns:
        A :class:`matplotlib.figure.Figure` with two axes: history, then NC1 versus accuracy.
    """
    fig = _figure(figsize=(10.0, 4.0))
    ax1, ax2 = fig.subplots(1, 2)
    scale = 100.0 if _is_accuracy(result.metric) else 1.0
    done = [t for t in result.trials if t.state == "COMPLETE" and t.value is not None]
    if done:
        xs = [t.number for t in done]
        ys = [scale * t.value for t in done]
        better = max if result.direction == "maximize" else min
        running = [better(ys[: i + 1]) for i in range(len(ys))]
        ax1.plot(xs, ys, "o", label="complete trial")
        ax1.step(xs, running, where="post", color="k", lw=1.2, label="best so far")
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    if pruned and result.metric == "val_accuracy":  # on another metric's axis: no
        ax1.plot(
            [t.number for t in pruned],
            [100 * t.val_accuracy if t.val_accuracy is not None else math.nan for t in pruned],
            "x",
            color="tab:orange",
            label="pruned (best val acc so far)",
        )
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("trial")
    unit = " (%)" if scale == 100.0 else ""
    ax1.set_ylabel(_metric_words(result.metric) + unit)
    ax1.set_title("Optimisation history", fontsize=9)
    ax1.grid(alpha=0.3)
    if ax1.get_lines():  # an empty legend is a matplotlib warning (a search stopped early)
        ax1.legend(fontsize=7)
    pts = [
        t
        for t in result.trials
        if t.state == "COMPLETE" and t.nc1_after is not None and t.val_accuracy is not None
    ]
    for t in pts:  # validation accuracy: the test split is measured for the best trial only
        acc = t.val_accuracy
        star = result.best is not None and t.number == result.best.number
        ax2.plot(
            t.nc1_after,
            100 * acc,
            "*" if star else "o",
            ms=14 if star else 6,
            color="tab:red" if star else "tab:blue",
        )
        ax2.annotate(f" {t.number}", (t.nc1_after, 100 * acc), fontsize=7)
    nc1 = [t.nc1_after for t in pts]
    if nc1 and min(nc1) > 0 and max(nc1) / min(nc1) > 10:  # log only when it spans decades
        ax2.set_xscale("log")
    ax2.set_xlabel("NC1 of the head input after training (train)")
    ax2.set_ylabel("val accuracy (%)")
    ax2.set_title("Collapse versus accuracy across trials (★ best)", fontsize=9)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"nctune tune: {result.study_name}", fontsize=9)
    return fig


def plot_search(result, path: str | Path) -> Path:
    """Save :func:`search_figure` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(search_figure(result)))
