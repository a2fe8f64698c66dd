"""Rendering: rich tables and PNG plots of library results. The library never prints.

Result types of higher floors (``RunResult``, ``SweepResult``, ``Ranking``) are taken
duck-typed (``Any``, named in each docstring): report sits below the modules that make them
and imports none of them, not even for annotations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.markup import escape

from nctune.report._common import _figure, _fmt, _pct, _plain_ticks, _png
from nctune.report.fit import Col, FitTable
from nctune.report.probe import lr_panel, probe_panel
from nctune.report.sweep import plot_sweep, sweep_figure, sweep_table  # noqa: F401 (public here)
from nctune.runs._io import atomic_write_bytes

if TYPE_CHECKING:
    from nctune.profile import CollapseProfile
    from nctune.selection import Selection


def profile_table(profile: CollapseProfile, recommendation: Selection | None = None) -> FitTable:
    """One row per tapped layer: index, name, width, NC1, trace ratio, CDNV, NCC accuracy.

    Layer names stay whole at any width; CDNV, the trace ratio and the width go first when
    the console is narrow (they stay in analysis.json).
    """
    title = (
        f"Neural collapse of {profile.backbone or 'the model'} on {profile.dataset or 'the data'}"
    )
    caption = f"{profile.num_samples} training samples, {profile.num_classes} classes, {profile.seconds:.1f} s"
    table = FitTable(
        [
            Col("#", "right", name=True),
            Col("layer", name=True),
            Col("width", "right", drop=2),
            Col("NC1", "right"),
            Col("tr ratio", "right", drop=3),
            Col("CDNV", "right", drop=4),
            Col("NCC acc", "right", drop=1),
        ],
        title=title,
        caption=caption,
        more="analysis.json",
    )
    chosen = set(recommendation.layers) if recommendation else set()
    for layer in profile.layers:
        m = layer.metrics
        name = escape(layer.name) + (" ◀" if layer.name in chosen else "")
        style = "bold green" if layer.name in chosen else ("dim" if not layer.tunable else None)
        ncc = None if layer.ncc_accuracy is None else 100 * layer.ncc_accuracy
        table.add_row(
            str(layer.index),
            name,
            str(layer.dim),
            _fmt(m.nc1),
            _fmt(m.trace_ratio),
            _fmt(m.cdnv),
            "–" if ncc is None else f"{ncc:.1f}%",
            style=style,
        )
    return table


#: Axis label of NC1, in mathtext (no raw underscores).
NC1_LABEL = r"NC1 = tr($\Sigma_W \Sigma_B^{+}$)/K"


def profile_figure(profile: CollapseProfile, recommendation: Selection | None = None) -> Figure:
    """The ``collapse.png`` figure: NC1 (log) and NCC accuracy against depth.

    The recommended blocks are shaded, and the band has its own legend entry. The legend
    sits above the axes (on the first axes, outside them), so it covers no point.

    Returns:
        A :class:`matplotlib.figure.Figure` (axes: NC1 first, NCC accuracy twin second).
    """
    layers = profile.layers
    x = list(range(len(layers)))
    fig = _figure(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.2))
    ax = fig.subplots()
    ax.plot(x, [layer.nc1 for layer in layers], "o-", color="tab:blue", label="NC1 (train)")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_ylabel(NC1_LABEL + "  (log)", color="tab:blue")
    ax.set_xticks(x, [layer.name for layer in layers], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer (shallow → deep)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(layer.ncc_accuracy is not None for layer in layers):
        ax2 = ax.twinx()
        ncc = [
            float("nan") if layer.ncc_accuracy is None else 100 * layer.ncc_accuracy
            for layer in layers
        ]
        ax2.plot(x, ncc, "s--", color="tab:orange", label="NCC accuracy (val)")
        ax2.set_ylabel("NCC accuracy (%)", color="tab:orange")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if recommendation:
        band = None
        for i, layer in enumerate(layers):
            if layer.name in recommendation.layers:
                band = ax.axvspan(i - 0.3, i + 0.3, color="tab:green", alpha=0.25, lw=0)
        if band is not None:
            handles.append(band)
            labels.append(
                f"recommended ({recommendation.rule}): {', '.join(recommendation.layers)}"
            )
    # Above the axes, not in them: inside, "best" still lands on a point when the curves
    # fill every corner (a legend must never hide data).
    ax.legend(
        handles,
        labels,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.02, 1.0, 0.1),
        mode="expand",
        ncol=2,
        borderaxespad=0.0,
        fontsize=8,
    )
    fig.suptitle(f"{profile.backbone or 'model'} on {profile.dataset or 'data'}", fontsize=9)
    return fig


def plot_profile(
    profile: CollapseProfile, path: str | Path, recommendation: Selection | None = None
) -> Path:
    """Save :func:`profile_figure` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(profile_figure(profile, recommendation)))


def probe_table(probe: dict[str, Any]) -> FitTable:
    """``auto``'s collapse probe: every probed block's figures, the winner in bold, and why."""
    t = FitTable(
        [
            Col("block", name=True),
            Col("steps", "right", drop=3),
            Col("NC1 before", "right", drop=2),
            Col("NC1 after", "right"),
            Col("val acc", "right"),
            Col("train loss", "right", drop=1),
        ],
        title=f"Collapse probe: {probe['steps']} steps over {len(probe['candidates'])} blocks",
        caption=probe["why"],
        more="report.json",
    )
    for c in probe["candidates"]:
        won = c["block"] == probe["winner"]
        acc = "–" if c["val_accuracy"] is None else f"{100 * c['val_accuracy']:.1f}%"
        t.add_row(
            escape(c["block"]) + (" ◀" if won else ""),
            str(c["steps"]),
            _fmt(c["nc1_before"]),
            _fmt(c["nc1_after"]),
            acc,
            _fmt(c["train_loss"]),
            style="bold green" if won else None,
        )
    return t


def _blocks_table(result: Any) -> FitTable:
    """NC1 (and NCC accuracy) per block before → after fine-tuning."""
    t = FitTable(
        [
            Col("layer", name=True),
            Col("width", "right", drop=2),
            Col("NC1 before", "right"),
            Col("NC1 after", "right"),
            Col("change", "right", drop=1),
            Col("NCC before", "right", drop=4),
            Col("NCC after", "right", drop=3),
        ],
        title=f"NC1 per block before → after {result.strategy} fine-tuning",
        more="report.json",
    )
    for row in result.layers:
        b, a = row["nc1_before"], row["nc1_after"]
        change = "–" if not (b and a) else f"{(a - b) / b:+.0%}"
        if row.get("remeasured") is False:  # before the first tuned block: not re-run
            change = "frozen"
        style = "bold green" if row["tuned"] and result.tuned_layers != ["*"] else None
        t.add_row(
            escape(row["name"]) + (" (tuned)" if style else ""),
            str(row["dim"]),
            _fmt(b),
            _fmt(a),
            change,
            _pct(row["ncc_before"]),
            _pct(row["ncc_after"]),
            style=style,
        )
    return t


def finetune_tables(result: Any) -> list[FitTable]:
    """The collapse-versus-accuracy report of a fine-tuning run: per-block NC1 before/after,
    then the summary (accuracy, trainable parameters, time)."""
    tables = [_blocks_table(result)] if result.layers else []
    if getattr(result, "probe", None):
        tables.append(probe_table(result.probe))
    s = FitTable([Col("", style="bold"), Col("", wrap=True)], title="Result", show_header=False)
    s.add_row(
        "strategy",
        result.strategy + (f" (rule {result.selection['rule']})" if result.selection else ""),
    )
    s.add_row("tuned blocks", escape(", ".join(result.tuned_layers)) or "head only")
    s.add_row(
        "trainable params",
        f"{result.trainable_params:,} of {result.total_params:,} "
        f"({100 * result.trainable_params / max(1, result.total_params):.2f}%)",
    )
    s.add_row(
        "val accuracy",
        _pct(result.val_accuracy, 2)
        + (f" (epoch {result.best_epoch})" if result.best_epoch else ""),
    )
    s.add_row("test accuracy", _pct(result.test_accuracy, 2))
    s.add_row(
        "NC1 of head input", f"{_fmt(result.nc1_before)} → {_fmt(result.nc1_after)} (train split)"
    )
    cache = result.cache or {}
    s.add_row(
        "prefix cache",
        escape(f"{cache.get('where')} at {cache.get('cut')}, {cache.get('megabytes')} MiB")
        if cache.get("used")
        else escape(f"off ({cache.get('reason') or 'n/a'})"),
    )
    sessions = getattr(result, "sessions", 1)  # a resumed run: its time over every session
    over = f", {sessions} sessions" if sessions > 1 else ""
    s.add_row(
        "training time", f"{result.wall_seconds:.1f} s (total {result.total_seconds:.1f} s{over})"
    )
    tables.append(s)
    return tables


def training_figure(result: Any) -> Figure:
    """The ``training.png`` figure: loss, accuracy and the head input's NC1 per epoch.

    Epoch ticks are integers; the kept (best) epoch is a vertical line on every panel, and
    the NC1 before training (``result.nc1_before``, eval mode) a horizontal reference line.

    A run of ``auto`` with a collapse probe (``result.probe``) gets a fourth panel, the
    probed blocks' NC1 before → after and the winner (:func:`nctune.report.probe.probe_panel`);
    with a learning-rate range test (``result.lr_finder``) one more, its loss curve and the
    chosen rate (:func:`nctune.report.probe.lr_panel`). Without either the figure is the three
    per-epoch panels.

    Returns:
        A :class:`matplotlib.figure.Figure` whose first three axes are loss, accuracy, NC1;
        then the probe's (and its validation-accuracy twin) and the range test's, if any.
    """
    h = result.history
    epochs = [e["epoch"] for e in h]
    probe = getattr(result, "probe", None)
    lr_finder = getattr(result, "lr_finder", None)
    ratios = [1.0, 1.0, 1.0] + ([1.1] if probe else []) + ([0.9] if lr_finder else [])
    fig = _figure(figsize=(11 + 3.7 * (len(ratios) - 3), 3.6))
    axes = fig.subplots(1, len(ratios), width_ratios=ratios)
    ax0, ax1, ax2 = axes[:3]
    ax0.plot(epochs, [e["loss"] for e in h], "o-", color="tab:red", label="train loss")
    ax0.set_ylabel("cross-entropy")
    ax1.plot(epochs, [100 * e["accuracy"] for e in h], "o-", label="train (running)")
    if any(e["val_accuracy"] is not None for e in h):
        ax1.plot(
            epochs,
            [float("nan") if e["val_accuracy"] is None else 100 * e["val_accuracy"] for e in h],
            "s-",
            label="val",
        )
    ax1.set_ylabel("accuracy (%)")
    nc1 = [float("nan") if e["nc1"] is None else e["nc1"] for e in h]
    ax2.plot(epochs, nc1, "o-", color="tab:purple", label="during training")
    if result.nc1_before is not None:
        ax2.axhline(
            result.nc1_before,
            color="gray",
            ls=":",
            label=f"before training ({result.nc1_before:.3g})",
        )
    if any(v == v and v > 0 for v in [*nc1, result.nc1_before or float("nan")]):
        ax2.set_yscale("log")
        _plain_ticks(ax2)
    ax2.set_ylabel("NC1 of head input (train, log)", labelpad=8)
    best = result.best_epoch if result.best_epoch and result.best_epoch > 0 else None
    for ax in (ax0, ax1, ax2):
        if best is not None:
            ax.axvline(best, color="tab:green", alpha=0.6, lw=2, label=f"kept epoch {best}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if probe:
        probe_panel(axes[3], probe)
    if lr_finder:
        lr_panel(axes[-1], lr_finder)
    fig.suptitle(
        f"{result.strategy} fine-tuning · {result.backbone} on {result.dataset or 'data'}",
        fontsize=9,
    )
    return fig


def plot_training(result: Any, path: str | Path) -> Path:
    """Save :func:`training_figure` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(training_figure(result)))
