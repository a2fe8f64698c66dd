"""Small helpers the report modules share: number formats, a pyplot-free Figure, its PNG.

Their own module so that :mod:`nctune.report` and the modules it re-exports from (``sweep``)
import them without a circle.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # A constrained-layout figure (every :func:`_figure`) already fits its canvas
    # (tests/report/test_figures.py checks it): ``bbox_inches="tight"`` would only draw it a
    # second time to find the same box, ~30 % of the PNG's cost. Others still need it.
    tight = {"bbox_inches": "tight"} if fig.get_layout_engine() is None else {}
    fig.savefig(buf, format="png", dpi=120, **tight)
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
