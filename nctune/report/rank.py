"""Rendering of ``nctune rank``: the candidate table, the agreement table, ranking.png."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from rich.table import Table

from nctune.report import _fmt, _png
from nctune.runs._io import atomic_write_bytes
from nctune.scores import SCORES

#: Column titles, in table order.
LABELS = {
    "nc1": "NC1",
    "nc1_best": "NC1 best",
    "trace_ratio": "tr ratio",
    "cdnv": "CDNV",
    "ncc": "NCC acc",
    "logme": "LogME",
    "hscore": "H-score",
    "knn": "k-NN acc",
}

#: The three NC1-family scores whose disagreements the table calls out.
NC_FAMILY = ("nc1", "trace_ratio", "cdnv")


def _value(name: str, v: float | None) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if name in ("ncc", "knn") else _fmt(v)


def disagreements(ranking: Any) -> list[str]:
    """One line per pair of NC scores that order some candidates differently.

    Args:
        ranking: the result.

    Returns:
        E.g. ``"nc1 vs trace_ratio: 2 of 15 pairs reversed (A above B by nc1, below by
        trace_ratio)"``; empty when they agree.
    """
    lines = []
    for a, b in combinations(NC_FAMILY, 2):
        pa, pb = ranking.positions(a), ranking.positions(b)
        common = [s for s in pa if s in pb]
        pairs = list(combinations(common, 2))
        flipped = [(x, y) for x, y in pairs if (pa[x] < pa[y]) != (pb[x] < pb[y])]
        if flipped:
            x, y = flipped[0]
            hi, lo = (x, y) if pa[x] < pa[y] else (y, x)
            lines.append(
                f"{a} vs {b}: {len(flipped)} of {len(pairs)} pairs reversed "
                f"(e.g. {hi} above {lo} by {a}, below by {b})"
            )
    return lines


def ranking_table(ranking: Any) -> Table:
    """Candidates best first by ``ranking.by``; every score with its place, failures last.

    Each cell is ``value (place)``: the place of the candidate by that score, so rows where
    scores disagree stand out. The sorting column is bold; ↓ marks lower-is-better scores.
    """
    title = f"Backbones on {ranking.dataset or 'the data'}, by {ranking.by}"
    caption = (
        f"{ranking.num_classes} classes; LogME, H-score, k-NN (k={ranking.knn_k}, cosine) on "
        f"≤ {ranking.subsample} samples per split; {ranking.seconds:.1f} s"
    )
    table = Table(title=title, caption=caption, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("candidate")
    for name, label in LABELS.items():
        arrow = "" if SCORES[name] else " ↓"
        style = "bold" if name == ranking.by else None
        table.add_column(label + arrow, justify="right", style=style)
    table.add_column("best block")
    if ranking.validation:
        table.add_column(f"{ranking.validation} acc", justify="right")
    table.add_column("pass s", justify="right")
    places = {name: ranking.positions(name) for name in LABELS}
    for i, c in enumerate(ranking.ranked()):
        if not c.ok:
            cells = ["–", c.spec, f"[red]failed:[/] {c.reason}"]
            table.add_row(*cells, *[""] * (len(table.columns) - len(cells)), style="dim")
            continue
        cells = [str(i + 1), c.spec]
        for name in LABELS:
            v = c.scores.get(name)
            place = places[name].get(c.spec)
            cells.append(_value(name, v) + (f" ({place})" if place else ""))
        cells.append(c.best_block or "–")
        if ranking.validation:
            acc = c.accuracy(ranking.metric or "test_accuracy")
            err = (c.validation or {}).get("error")
            cells.append("failed" if err else ("–" if acc is None else f"{100 * acc:.1f}%"))
        cells.append(f"{c.seconds.get('pass', 0.0):.1f}")
        table.add_row(*cells)
    return table


def agreement_table(ranking: Any) -> Table:
    """Each score's weighted Kendall τ and Spearman ρ against the fine-tuned accuracy."""
    table = Table(
        title=f"Which score was right? ({ranking.validation} fine-tuning, {ranking.metric})",
        header_style="bold",
    )
    for col in ("score", "weighted τ", "Spearman ρ", "n"):
        table.add_column(col, justify="left" if col == "score" else "right")
    rows = sorted(
        ranking.agreement.items(),
        key=lambda kv: -(kv[1]["weighted_tau"] if kv[1]["weighted_tau"] is not None else -9),
    )
    for name, a in rows:
        table.add_row(
            LABELS.get(name, name),
            _fmt(a["weighted_tau"], ".3f"),
            _fmt(a["spearman"], ".3f"),
            str(a["n"]),
            style="bold" if name == ranking.by else None,
        )
    return table


def plot_ranking(ranking: Any, path: str | Path) -> Path:
    """Save a heat map of every candidate's place by every score (and by accuracy), atomically.

    Rows are candidates (best first by ``ranking.by``), columns the scores; a column that
    disagrees with its neighbours shows up as a different colour pattern.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [c for c in ranking.ranked() if c.ok]
    cols = list(LABELS)
    places = {name: ranking.positions(name) for name in cols}
    titles = [LABELS[n] for n in cols]
    if ranking.validation and ranking.metric:
        scored = sorted(
            (c for c in ok if c.accuracy(ranking.metric) is not None),
            key=lambda c: -c.accuracy(ranking.metric),
        )
        places["accuracy"] = {c.spec: i + 1 for i, c in enumerate(scored)}
        cols.append("accuracy")
        titles.append(f"{ranking.validation} acc")
    grid = np.full((max(1, len(ok)), len(cols)), np.nan)
    for i, c in enumerate(ok):
        for j, name in enumerate(cols):
            grid[i, j] = places[name].get(c.spec, np.nan)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.45 * len(ok) + 1.8))
    try:
        ax.imshow(grid, cmap="viridis_r", aspect="auto", vmin=1, vmax=max(2, len(ok)))
        for i in range(len(ok)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    # dark text on the light (best) end of viridis_r, light on the dark end
                    light = grid[i, j] <= (1 + max(2, len(ok))) / 2
                    ax.text(
                        j,
                        i,
                        str(int(grid[i, j])),
                        ha="center",
                        va="center",
                        color="k" if light else "w",
                    )
        ax.set_xticks(range(len(cols)), titles, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(ok)), [c.spec for c in ok], fontsize=8)
        tau = ranking.agreement.get(ranking.by, {}).get("weighted_tau")
        extra = f"; weighted τ of {ranking.by} vs accuracy: {tau:.2f}" if tau is not None else ""
        ax.set_title(f"Place by each score (1 = best) on {ranking.dataset}{extra}", fontsize=9)
        return atomic_write_bytes(path, _png(fig))
    finally:
        plt.close(fig)
