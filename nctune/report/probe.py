"""The panels ``auto``'s levers add to the training figure: the collapse probe and the lr test.

Both take the ``report.json`` entries of a run (``RunResult.probe``, ``RunResult.lr_finder``)
as plain dicts and draw on an axes they are given, so :func:`nctune.report.training_figure`
lays them out beside its per-epoch panels. Every drawn series carries a ``gid`` (``probe:…``,
``lr:…``) and each panel's axes its own (``probe``, ``lr_finder``), so tests read the facts
back from the Figure.
"""

from __future__ import annotations

import math
from typing import Any

#: How the probe's criterion reads in the panel title ("winner blocks.4.0 by …").
CRITERION_WORDS = {
    "nc1_after": "lowest NC1 after",
    "val_accuracy": "validation accuracy",
}

#: A log NC1 axis once the probe's values span more than this ratio (a linear one squashes
#: the small values to the floor); below it, linear reads the differences directly.
LOG_SPAN = 10.0

_WINNER = "tab:green"


def _num(v: float | None) -> float:
    """``v`` as a plottable float: NaN for None or a non-finite value (matplotlib skips it)."""
    return float("nan") if v is None or not math.isfinite(v) else float(v)


def criterion_words(criterion: str) -> str:
    """The title's phrase for a probe criterion (an unknown one reads as itself)."""
    return CRITERION_WORDS.get(criterion, criterion.replace("_", " "))


def probe_title(probe: dict[str, Any]) -> str:
    """``"probe: winner blocks.4.0 by lowest NC1 after"``."""
    return f"probe: winner {probe['winner']} by {criterion_words(probe['criterion'])}"


def lr_curve(lr_finder: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(learning rates, smoothed loss) of a range test's entry.

    ``report.json`` nests the curve (``curve: {lr, loss, smoothed}``); a flat entry
    (``lrs``, ``smoothed``) is read too. Without a smoothed curve the raw losses stand in.
    """
    curve = lr_finder.get("curve") or {}
    lrs = curve.get("lr") or lr_finder.get("lrs") or []
    smoothed = (
        curve.get("smoothed")
        or lr_finder.get("smoothed")
        or curve.get("loss")
        or lr_finder.get("losses")
        or []
    )
    n = min(len(lrs), len(smoothed))
    return [float(x) for x in lrs[:n]], [float(y) for y in smoothed[:n]]


def _nc1_scale(ax, values: list[float]) -> None:
    """Log y when the positive values span more than :data:`LOG_SPAN`, else linear."""
    pos = [v for v in values if v == v and v > 0]
    if pos and max(pos) / min(pos) > LOG_SPAN:
        ax.set_yscale("log")
        ax.set_ylabel("NC1 of head input (train, log)")
    else:
        ax.set_ylabel("NC1 of head input (train)")


def probe_panel(ax, probe: dict[str, Any]) -> None:
    """Draw the collapse probe on ``ax``: per candidate block, head-input NC1 before → after.

    Candidates sit at ``x = 0..n-1`` in the rule's order. NC1 before is a hollow marker,
    NC1 after a filled one, joined by a segment per block; validation accuracy (where the
    probe measured it) goes on a twin axis in percent. The winner's column is shaded, its
    tick label bold and green, and the title names it and the criterion that decided.

    Args:
        ax: the axes to draw on (its ``gid`` becomes ``"probe"``).
        probe: ``RunResult.probe`` (``winner``, ``criterion``, ``steps``, ``budget_steps``,
            ``candidates`` with ``block``, ``nc1_before``, ``nc1_after``, ``val_accuracy``).
    """
    cands = probe["candidates"]
    x = list(range(len(cands)))
    before = [_num(c.get("nc1_before")) for c in cands]
    after = [_num(c.get("nc1_after")) for c in cands]
    ax.set_gid("probe")
    win = next((i for i, c in enumerate(cands) if c["block"] == probe["winner"]), None)
    if win is not None:
        ax.axvspan(win - 0.35, win + 0.35, color=_WINNER, alpha=0.2, lw=0, gid="probe:winner")
    for i, b, a in zip(x, before, after, strict=True):
        ax.plot([i, i], [b, a], "-", color="gray", lw=1, gid="probe:change")
    ax.plot(
        x,
        before,
        "o",
        mfc="none",
        color="tab:purple",
        ls="none",
        label="NC1 before",
        gid="probe:nc1_before",
    )
    ax.plot(x, after, "o", color="tab:purple", ls="none", label="NC1 after", gid="probe:nc1_after")
    _nc1_scale(ax, before + after)
    ax.set_xticks(x, [c["block"] for c in cands], rotation=30, ha="right", fontsize=7)
    if win is not None:
        label = ax.get_xticklabels()[win]
        label.set_fontweight("bold")
        label.set_color(_WINNER)
    ax.set_xlim(-0.6, len(cands) - 0.4)
    ax.set_xlabel(
        f"probed block ({probe.get('steps', '?')} of {probe.get('budget_steps', '?')} steps)"
    )
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    accs = [c.get("val_accuracy") for c in cands]
    if any(v is not None for v in accs):
        twin = ax.twinx()
        twin.set_gid("probe:val_axis")
        pct = [100 * _num(v) for v in accs]
        twin.plot(
            x,
            pct,
            "D",
            color="tab:orange",
            ls="none",
            label="val accuracy",
            gid="probe:val_accuracy",
        )
        twin.set_ylabel("val accuracy (%)", color="tab:orange")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_title(probe_title(probe), fontsize=8)


def lr_panel(ax, lr_finder: dict[str, Any]) -> None:
    """Draw the learning-rate range test on ``ax``: smoothed loss against lr (log x).

    The chosen rate is a vertical line (``gid`` ``"lr:chosen"``) labelled with its value;
    where the smoothed loss was lowest, a dotted one (the pick is a tenth of it, clipped).

    Args:
        ax: the axes to draw on (its ``gid`` becomes ``"lr_finder"``).
        lr_finder: ``RunResult.lr_finder`` (``lr``, ``lr_min_loss``, ``curve``).
    """
    ax.set_gid("lr_finder")
    lrs, loss = lr_curve(lr_finder)
    if lrs:
        ax.plot(lrs, loss, "-", color="tab:blue", label="smoothed loss", gid="lr:curve")
    lr = lr_finder["lr"]
    ax.axvline(lr, color=_WINNER, lw=2, label=f"chosen lr {lr:.2g}", gid="lr:chosen")
    low = lr_finder.get("lr_min_loss")
    if low is not None and not math.isclose(low, lr):
        ax.axvline(low, color="gray", ls=":", label=f"lowest loss at {low:.2g}", gid="lr:min")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"lr range test: {lr_finder.get('steps', len(lrs))} steps", fontsize=8)
