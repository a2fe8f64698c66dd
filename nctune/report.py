"""Rendering: rich tables and PNG plots of library results. The library never prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from nctune.artifacts import atomic_write_bytes

if TYPE_CHECKING:
    from nctune.analyze import CollapseProfile
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
        table.add_column(col, justify=justify)
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


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def plot_profile(
    profile: CollapseProfile, path: str | Path, recommendation: Selection | None = None
) -> Path:
    """Save NC1 (log axis) and NCC accuracy against depth as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    layers = profile.layers
    x = list(range(len(layers)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.0))
    try:
        ax.plot(x, [layer.nc1 for layer in layers], "o-", color="tab:blue", label="NC1 (train)")
        ax.set_yscale("log")
        ax.set_ylabel("NC1 = tr(Σ_W Σ_B⁺)/K  (log)", color="tab:blue")
        ax.set_xticks(x, [layer.name for layer in layers], rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("layer (shallow → deep)")
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()
        if any(layer.ncc_accuracy is not None for layer in layers):
            ax2 = ax.twinx()
            ncc = [
                float("nan") if layer.ncc_accuracy is None else 100 * layer.ncc_accuracy
                for layer in layers
            ]
            ax2.plot(x, ncc, "s--", color="tab:orange", label="NCC accuracy (val)")
            ax2.set_ylabel("NCC accuracy (%)", color="tab:orange")
            h2 = ax2.get_legend_handles_labels()
            handles = (handles[0] + h2[0], handles[1] + h2[1])
        if recommendation:
            for i, layer in enumerate(layers):
                if layer.name in recommendation.layers:
                    ax.axvline(i, color="tab:green", alpha=0.5, lw=6, label=None)
        ax.legend(*handles, loc="upper right", fontsize=8)
        ax.set_title(f"{profile.backbone or 'model'} on {profile.dataset or 'data'}", fontsize=9)
        return atomic_write_bytes(path, _png(fig))
    finally:
        plt.close(fig)
