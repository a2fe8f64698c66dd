"""Rendering of a search (:class:`nctune.tune.SearchResult`): the trial table and search.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.table import Table

from nctune.report import _fmt, _png
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


def trials_table(trials: list, best: int | None = None, title: str = "Trials") -> Table:
    """One row per trial: number, state, params, val/test accuracy, NC1 after, seconds.

    Args:
        trials: :class:`~nctune.tune.TrialRecord` objects (finished or running).
        best: the best trial's number, marked with a star.
        title: the table's title.
    """
    table = Table(title=title, header_style="bold")
    for col, justify in [
        ("#", "right"),
        ("state", "left"),
        ("params", "left"),
        ("epochs", "right"),
        ("val acc", "right"),
        ("test acc", "right"),
        ("NC1 after", "right"),
        ("trainable", "right"),
        ("s", "right"),
    ]:
        table.add_column(col, justify=justify)
    for t in sorted(trials, key=lambda t: t.number):
        style = _STATE_STYLE.get(t.state, "")
        params = "  ".join(f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in t.params.items())
        state = f"[{style}]{t.state.lower()}[/]" if style else t.state.lower()
        table.add_row(
            f"{t.number}{' ★' if best is not None and t.number == best else ''}",
            state,
            params if t.state != "FAIL" else f"{params}  [red]{(t.reason or '')[:80]}[/]",
            _fmt(t.epochs, "d") if t.epochs is not None else "–",
            _pct(t.val_accuracy),
            _pct(t.test_accuracy),
            _fmt(t.nc1_after),
            "–" if t.trainable_percent is None else f"{t.trainable_percent:.1f}%",
            "–" if t.wall_seconds is None else f"{t.wall_seconds:.1f}",
        )
    return table


def search_tables(result) -> list[Table]:
    """The trial table and the parameter importances of a finished search."""
    tables = [
        trials_table(
            result.trials,
            result.best.number if result.best else None,
            title=f"Search {result.study_name}: {result.metric} ({result.direction})",
        )
    ]
    if result.importances:
        imp = Table(title="Parameter importance", header_style="bold")
        imp.add_column("parameter")
        imp.add_column("importance", justify="right")
        for name, value in result.importances.items():
            imp.add_row(name, f"{value:.2f}")
        tables.append(imp)
    return tables


def plot_search(result, path: str | Path) -> Path:
    """Optimisation history (each trial's score and the running best) and, across trials,
    accuracy against the NC1 of the head input after training."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    done = [t for t in result.trials if t.state == "COMPLETE" and t.value is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    try:
        if done:
            xs = [t.number for t in done]
            ys = [t.value for t in done]
            better = max if result.direction == "maximize" else min
            running = [better(ys[: i + 1]) for i in range(len(ys))]
            ax1.plot(xs, ys, "o", label="complete trial")
            ax1.step(xs, running, where="post", color="k", lw=1.2, label="best so far")
        pruned = [t for t in result.trials if t.state == "PRUNED"]
        if pruned:
            ax1.plot(
                [t.number for t in pruned],
                [t.val_accuracy if t.val_accuracy is not None else math.nan for t in pruned],
                "x",
                color="tab:orange",
                label="pruned (best val acc so far)",
            )
        ax1.xaxis.get_major_locator().set_params(integer=True)
        ax1.set_xlabel("trial")
        ax1.set_ylabel(result.metric.replace("_", " "))
        ax1.set_title("Optimisation history", fontsize=9)
        ax1.grid(alpha=0.3)
        if done or pruned:  # an empty legend is a matplotlib warning (a search stopped early)
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
        return atomic_write_bytes(path, _png(fig))
    finally:
        plt.close(fig)
