"""Rendering of ``nctune rank``: the candidate table, the agreement table, ranking.png."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from rich.markup import escape

from nctune.report import _fmt, _png
from nctune.report.fit import Col, FitTable
from nctune.runs._io import atomic_write_bytes
from nctune.scores import SCORES, STATIC_SCORES

#: Column titles, in table order.
LABELS = {
    "nc1": "NC1",
    "nc1_best": "NC1 best",
    "trace_ratio": "tr ratio",
    "cdnv": "CDNV",
    "ncc": "NCC acc",
    "logme": "LogME",
    "hscore": "H-score",
    "hscore_reg": "H-score reg",
    "knn": "k-NN acc",
    "ncti": "NCTI",
    "static_top1": "top-1*",
    "params": "params",
}

#: The three NC1-family scores whose disagreements the table calls out.
NC_FAMILY = ("nc1", "trace_ratio", "cdnv")


def _value(name: str, v: float | None) -> str:
    if v is None:
        return "–"
    if name == "static_top1":  # already a percentage (published or source-task top-1)
        return f"{v:.1f}%"
    if name == "params":
        return f"{v / 1e6:.2f}M"
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


#: The columns a narrow console loses first, in order (the sorting score always stays).
_SECONDARY = (
    "pass s", "best block", "params", "hscore", "cdnv", "nc1_best", "hscore_reg", "ncti",
    "trace_ratio", "knn", "ncc", "nc1", "logme", "static_top1",
)  # fmt: skip


def ranking_table(ranking: Any, width: int | None = None) -> FitTable:
    """Candidates best first by ``ranking.by``; every score with its place, failures last.

    Each cell is ``value (place)``: the place of the candidate by that score, so rows where
    scores disagree stand out. The sorting column is bold; ↓ marks lower-is-better scores.
    A failed candidate's row says ``failed``; :func:`failures` gives the reasons, which no
    cell has room for.

    Args:
        ranking: the result.
        width: at most this wide (default: the console's width). Columns are left out
            (see :data:`_SECONDARY`; they stay in ranking.json) until the table fits, then
            it turns into one block per candidate; no name is ever cut to ``…``.
    """
    keys = ["#", "candidate", *LABELS, "best block"]
    keys += ["validation"] if ranking.validation else []
    keys.append("pass s")

    def col(key: str) -> Col:
        drop = 0 if key == ranking.by or key not in _SECONDARY else 99 - _SECONDARY.index(key)
        style = "bold" if key == ranking.by else None
        if key in LABELS:
            label = LABELS[key] + ("" if SCORES[key] else " ↓")
            return Col(label, "right", drop=drop, style=style)
        if key == "validation":
            return Col(f"{ranking.validation} acc", "right", style=style)
        right = key in ("#", "pass s")
        return Col(key, "right" if right else "left", drop=drop, name=key in ("#", "candidate"))

    places = {name: ranking.positions(name) for name in LABELS}
    caption = (
        f"{ranking.num_classes} classes; LogME, H-score, k-NN (k={ranking.knn_k}, cosine) on "
        f"≤ {ranking.subsample} samples per split; top-1*: published ImageNet top-1, else "
        f"source-task accuracy (no target data); {ranking.seconds:.1f} s"
    )
    title = f"Backbones on {ranking.dataset or 'the data'}, by {ranking.by}"
    table = FitTable([col(k) for k in keys], title, caption, more="ranking.json", width=width)
    for i, c in enumerate(ranking.ranked()):
        if not c.ok:
            cells = {"#": "–", "candidate": escape(c.spec), ranking.by: "[red]failed[/]"}
            table.add_row(*(cells.get(k, "") for k in keys), style="dim")
            continue
        cells = {"#": str(i + 1), "candidate": escape(c.spec)}
        for name in LABELS:
            place = places[name].get(c.spec)
            cells[name] = _value(name, c.scores.get(name)) + (f" ({place})" if place else "")
        cells["best block"] = escape(c.best_block or "–")
        if ranking.validation:
            acc = c.accuracy(ranking.metric or "test_accuracy")
            err = (c.validation or {}).get("error")
            cells["validation"] = "failed" if err else ("–" if acc is None else f"{100 * acc:.1f}%")
        cells["pass s"] = f"{c.seconds.get('pass', 0.0):.1f}"
        table.add_row(*(cells[k] for k in keys))
    return table


def static_line(ranking: Any) -> str | None:
    """The order the static baselines give (no target data), to read beside the score's.

    Returns:
        E.g. ``"Without target data: by top-1* A > B > C; by params C > A > B."``; None
        when neither baseline has two candidates to order.
    """
    parts = []
    for name in STATIC_SCORES:
        order = sorted(ranking.positions(name).items(), key=lambda kv: kv[1])
        if len(order) > 1:
            parts.append(f"by {LABELS[name]} " + " > ".join(escape(s) for s, _ in order))
    return f"Without target data: {'; '.join(parts)}." if parts else None


def failures(ranking: Any) -> list[str]:
    """One line per failed candidate and per failed validation fine-tune, with the reason."""
    lines = []
    for c in ranking.ranked():
        if not c.ok:
            lines.append(f"[red]{escape(c.spec)} failed:[/] {escape(c.reason or '?')}")
        elif c.validation and c.validation.get("error"):
            what = f"{c.validation.get('strategy') or ranking.validation} fine-tune"
            lines.append(
                f"[red]{escape(c.spec)}: the {what} failed:[/] {escape(c.validation['error'])}"
            )
    return lines


def agreement_table(ranking: Any) -> FitTable:
    """Each score's weighted Kendall τ and Spearman ρ against the fine-tuned accuracy."""
    table = FitTable(
        [Col("score", name=True), Col("weighted τ", "right"), Col("Spearman ρ", "right"),
         Col("n", "right", drop=1)],
        title=f"Which score was right? ({ranking.validation} fine-tuning, {ranking.metric})",
        more="ranking.json",
    )  # fmt: skip
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
