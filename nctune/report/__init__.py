"""Rendering: rich tables and PNG plots of library results. The library never prints.

Result types of higher floors (``RunResult``, ``SweepResult``, ``Ranking``) are taken
duck-typed (``Any``, named in each docstring): report sits below the modules that make them
and imports none of them, not even for annotations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from rich.table import Table

from nctune.report.probe import lr_panel, probe_panel
from nctune.runs._io import atomic_write_bytes

if TYPE_CHECKING:
    from nctune.profile import CollapseProfile
    from nctune.selection import Selection


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def profile_table(profile: CollapseProfile, recommendation: Selection | None = None) -> Table:
    """One row per tapped layer: index, name, width, NC1, trace ratio, CDNV, NCC accuracy."""
    title = (
        f"Neural collapse of {profile.backbone or 'the model'} on {profile.dataset or 'the data'}"
    )
    caption = f"{profile.num_samples} training samples, {profile.num_classes} classes, {profile.seconds:.1f} s"
    table = Table(title=title, caption=caption, header_style="bold")
    for col, justify in [
        ("#", "right"),
        ("layer", "left"),
        ("width", "right"),
        ("NC1", "right"),
        ("tr ratio", "right"),
        ("CDNV", "right"),
        ("NCC acc", "right"),
    ]:
        table.add_column(col, justify=justify, no_wrap=col == "layer")  # names stay whole
    chosen = set(recommendation.layers) if recommendation else set()
    for layer in profile.layers:
        m = layer.metrics
        name = layer.name + (" ◀" if layer.name in chosen else "")
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


def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _figure(**kw) -> Figure:
    """A pyplot-free Figure on an Agg canvas: no global state, no display, nothing to close."""
    fig = Figure(layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def _plain_ticks(ax, axis: str = "y") -> None:
    """Plain-decimal tick labels on a log axis (0.5, 2, 10 — not 5×10⁻¹), where they fit."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


#: Axis label of NC1, in mathtext (no raw underscores).
NC1_LABEL = r"NC1 = tr($\Sigma_W \Sigma_B^{+}$)/K"


def profile_figure(profile: CollapseProfile, recommendation: Selection | None = None) -> Figure:
    """The ``collapse.png`` figure: NC1 (log) and NCC accuracy against depth.

    The recommended blocks are shaded, and the band has its own legend entry.

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
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(f"{profile.backbone or 'model'} on {profile.dataset or 'data'}", fontsize=9)
    return fig


def plot_profile(
    profile: CollapseProfile, path: str | Path, recommendation: Selection | None = None
) -> Path:
    """Save :func:`profile_figure` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(profile_figure(profile, recommendation)))


def probe_table(probe: dict[str, Any]) -> Table:
    """``auto``'s collapse probe: every probed block's figures, the winner in bold, and why."""
    t = Table(
        title=f"Collapse probe: {probe['steps']} steps over {len(probe['candidates'])} blocks",
        caption=probe["why"],
        header_style="bold",
    )
    for col in ("block", "steps", "NC1 before", "NC1 after", "val acc", "train loss"):
        t.add_column(col, justify="left" if col == "block" else "right", no_wrap=col == "block")
    for c in probe["candidates"]:
        won = c["block"] == probe["winner"]
        acc = "–" if c["val_accuracy"] is None else f"{100 * c['val_accuracy']:.1f}%"
        t.add_row(
            c["block"] + (" ◀" if won else ""),
            str(c["steps"]),
            _fmt(c["nc1_before"]),
            _fmt(c["nc1_after"]),
            acc,
            _fmt(c["train_loss"]),
            style="bold green" if won else None,
        )
    return t


def finetune_tables(result: Any) -> list[Table]:
    """The collapse-versus-accuracy report of a fine-tuning run: per-block NC1 before/after,
    then the summary (accuracy, trainable parameters, time)."""
    tables = []
    if result.layers:
        t = Table(
            title=f"NC1 per block before → after {result.strategy} fine-tuning", header_style="bold"
        )
        for col, justify in [
            ("layer", "left"),
            ("width", "right"),
            ("NC1 before", "right"),
            ("NC1 after", "right"),
            ("change", "right"),
            ("NCC before", "right"),
            ("NCC after", "right"),
        ]:
            t.add_column(col, justify=justify, no_wrap=col == "layer")
        for row in result.layers:
            b, a = row["nc1_before"], row["nc1_after"]
            change = "–" if not (b and a) else f"{(a - b) / b:+.0%}"
            if row.get("remeasured") is False:  # before the first tuned block: not re-run
                change = "frozen"
            pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
            style = "bold green" if row["tuned"] and result.tuned_layers != ["*"] else None
            t.add_row(
                row["name"] + (" (tuned)" if style else ""),
                str(row["dim"]),
                _fmt(b),
                _fmt(a),
                change,
                pct(row["ncc_before"]),
                pct(row["ncc_after"]),
                style=style,
            )
        tables.append(t)
    if getattr(result, "probe", None):
        tables.append(probe_table(result.probe))
    s = Table(title="Result", show_header=False)
    s.add_column(style="bold")
    s.add_column()

    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}%"

    s.add_row(
        "strategy",
        result.strategy + (f" (rule {result.selection['rule']})" if result.selection else ""),
    )
    s.add_row("tuned blocks", ", ".join(result.tuned_layers) or "head only")
    s.add_row(
        "trainable params",
        f"{result.trainable_params:,} of {result.total_params:,} "
        f"({100 * result.trainable_params / max(1, result.total_params):.2f}%)",
    )
    s.add_row(
        "val accuracy",
        pct(result.val_accuracy) + (f" (epoch {result.best_epoch})" if result.best_epoch else ""),
    )
    s.add_row("test accuracy", pct(result.test_accuracy))
    s.add_row(
        "NC1 of head input", f"{_fmt(result.nc1_before)} → {_fmt(result.nc1_after)} (train split)"
    )
    cache = result.cache or {}
    s.add_row(
        "prefix cache",
        f"{cache.get('where')} at {cache.get('cut')}, {cache.get('megabytes')} MiB"
        if cache.get("used")
        else f"off ({cache.get('reason') or 'n/a'})",
    )
    s.add_row("training time", f"{result.wall_seconds:.1f} s (total {result.total_seconds:.1f} s)")
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


#: Below this console width the sweep table drops its secondary columns (NC1 after, params).
SWEEP_FULL_WIDTH = 130


def sweep_table(result: Any, width: int | None = None) -> Table:
    """One row per swept block: accuracy and NC1 after for each mode, and which rules picked it.

    Args:
        result: a :class:`~nctune.sweep.SweepResult`.
        width: the console width; below :data:`SWEEP_FULL_WIDTH` the per-mode "NC1 after"
            and "params" columns are left out (they stay in sweep.json). Block names never
            wrap or get cut, at any width.
    """
    modes = sorted({p.mode for p in result.points}, key=["layer", "scl"].index)
    compact = width is not None and width < SWEEP_FULL_WIDTH
    caption = f"{result.metric.replace('_', ' ')} per tuned block; ◀ best per mode"
    if compact:
        caption += "; NC1 after and trainable params: sweep.json (or a wider terminal)"
    t = Table(title=f"Layer sweep: {result.backbone} on {result.dataset}", header_style="bold",
              caption=caption)  # fmt: skip
    t.add_column("#", justify="right")
    t.add_column("block", no_wrap=True)
    t.add_column("NC1 pre" if compact else "NC1 (pretrained)", justify="right")
    for m in modes:
        label = "Layer-FT" if m == "layer" else "SCL-FT"
        t.add_column(label if compact else f"{label} acc", justify="right", no_wrap=True)
        if not compact:
            t.add_column(f"{label} NC1 after", justify="right")
            t.add_column(f"{label} params", justify="right")
    t.add_column("picked by")
    best = {m: getattr(result.best(m), "block", None) for m in modes}
    blocks = list(dict.fromkeys(p.block for p in result.points))
    for block in blocks:
        row_pts = {p.mode: p for p in result.points if p.block == block}
        first = next(iter(row_pts.values()))
        cells = [str(first.index), block, _fmt(first.nc1_before)]
        for m in modes:
            p = row_pts.get(m)
            score = None if p is None else getattr(p, result.metric)
            mark = " ◀" if best[m] == block else ""
            cells.append("–" if score is None else f"{100 * score:.2f}%{mark}")
            if not compact:
                cells += [
                    _fmt(p.nc1_after if p else None),
                    "–" if p is None else f"{100 * p.trainable_params / p.total_params:.1f}%",
                ]
        cells.append(", ".join(r for r, b in result.picks.items() if b == block))
        t.add_row(*cells)
    return t


#: Marker shapes of the rules' picks, so picks of one block stay distinguishable.
_PICK_MARKERS = "v^<>Dp*h"


def sweep_figure(result: Any) -> Figure:
    """The ``layer_sweep.png`` figure: score and NC1 after tuning against the tuned block.

    Each selection rule's pick is a vertical line at exactly the x position of the block it
    picked (block ``i`` of the sweep sits at ``x = i``), plus a marker on the score curve;
    rules that pick the same block share the line and stack their markers.

    Returns:
        A :class:`matplotlib.figure.Figure` with two axes (score, NC1) sharing x.
    """
    blocks = list(dict.fromkeys(p.block for p in sorted(result.points, key=lambda p: p.index)))
    x = {b: i for i, b in enumerate(blocks)}
    fig = _figure(figsize=(max(6.0, 0.4 * len(blocks) + 2), 6.0))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for mode, style in (("layer", "o-"), ("scl", "s-")):
        pts = sorted((p for p in result.points if p.mode == mode), key=lambda p: x[p.block])
        if not pts:
            continue
        label = "Layer-FT" if mode == "layer" else "SCL-FT"
        xs = [x[p.block] for p in pts]
        ax1.plot(
            xs,
            [100 * (getattr(p, result.metric) or float("nan")) for p in pts],
            style,
            label=label,
        )
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
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    stacked: dict[str, int] = {}
    for i, (rule, block) in enumerate(sorted(result.picks.items())):
        if block not in x:  # the rule picked a block outside the swept subset
            continue
        color = colors[(i + 2) % len(colors)]
        k = stacked[block] = stacked.get(block, -1) + 1
        for ax in (ax1, ax2):
            ax.axvline(x[block], color=color, ls="--", lw=1.2, alpha=0.7, gid=f"pick:{rule}")
        # A marker at the block's x, near the top of the score panel, stacked per block.
        ax1.plot(
            [x[block]],
            [0.97 - 0.07 * k],
            _PICK_MARKERS[i % len(_PICK_MARKERS)],
            color=color,
            ms=8,
            transform=ax1.get_xaxis_transform(),
            ls="none",
            label=f"rule {rule} → {block}",
            gid=f"pick:{rule}",
        )
    ax1.set_ylabel(f"{result.metric.replace('_', ' ')} (%)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    ax2.set_yscale("log")
    _plain_ticks(ax2)
    ax2.set_ylabel("NC1 (train, log)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_xticks(range(len(blocks)), blocks, rotation=60, ha="right", fontsize=7)
    ax2.set_xlabel("tuned block")
    fig.suptitle(f"Layer sweep: {result.backbone} on {result.dataset}", fontsize=9)
    return fig


def plot_sweep(result: Any, path: str | Path) -> Path:
    """Save :func:`sweep_figure` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(sweep_figure(result)))
