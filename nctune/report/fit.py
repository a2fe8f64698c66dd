"""Tables that fit the console: names are never cut, secondary columns go first.

A :class:`FitTable` is a rich renderable that lays itself out when printed, for the width
it is printed at (a terminal, ``COLUMNS``, or a log file's generous default):

1. every column at its natural width, when that fits;
2. headers wrap at spaces and :attr:`Col.wrap` columns (descriptions, lists of names) wrap
   between words, never inside one;
3. the columns with the largest :attr:`Col.drop` are left out, one at a time (the caption
   names them and where to find them);
4. when even the essential columns do not fit, one block per row: the row's name on a line,
   then ``header: value`` lines (every column, the left-out ones too).

No cell is ever cut to ``…``. The module imports rich only (no plotting), so the CLI's
renderer can use it without loading matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

#: Width of a rich table's frame: one rule left of every column, one at the right edge,
#: and one space of padding each side of a cell.
_PER_COLUMN = 3


@dataclass(frozen=True)
class Col:
    """One column of a :class:`FitTable`.

    Attributes:
        header: the column's title.
        justify: ``"left"``, ``"right"`` or ``"center"``.
        drop: 0 = always shown; columns with larger numbers are left out first when the
            table is too wide (ties: the rightmost first).
        wrap: cells may wrap between words (descriptions, reasons, lists of names); a word
            is never split.
        style: the column's rich style.
        name: the column names the row: it heads the row's block when the table turns into
            blocks (default: the first column).
    """

    header: str
    justify: Literal["left", "right", "center"] = "left"
    drop: int = 0
    wrap: bool = False
    style: str | None = None
    name: bool = False


def _text(cell: str | Text) -> Text:
    return cell if isinstance(cell, Text) else Text.from_markup(cell)


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


def _longest_line(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


class FitTable:
    """A table that fits the width it is printed at (see the module docstring).

    Args:
        columns: the columns, in order.
        title: shown above the table (wraps).
        caption: shown below it (wraps).
        show_header: False for a key/value table (its blocks are ``key: value`` lines).
        more: where left-out columns can be read (e.g. ``"ranking.json"``); the caption
            names them.
        width: at most this many columns wide, even on a wider console.
    """

    def __init__(
        self,
        columns: Sequence[Col],
        title: str | None = None,
        caption: str | None = None,
        show_header: bool = True,
        more: str | None = None,
        width: int | None = None,
    ) -> None:
        self.columns = list(columns)
        self.title, self.caption, self.show_header = title, caption, show_header
        self.more, self.width = more, width
        self.rows: list[tuple[list[Text], str | None]] = []

    def add_row(self, *cells: str | Text, style: str | None = None) -> None:
        """Add a row: one cell per column (rich markup or Text); missing cells are empty."""
        texts = [_text(c) for c in cells] + [Text()] * (len(self.columns) - len(cells))
        self.rows.append((texts, style))

    @property
    def row_count(self) -> int:
        return len(self.rows)

    # -- layout ------------------------------------------------------------------------

    def _natural(self, i: int) -> int:
        head = Text.from_markup(self.columns[i].header).plain if self.show_header else ""
        cells = [r[i].plain for r, _ in self.rows]
        return max([_longest_line(head)] + [_longest_line(c) for c in cells] + [1])

    def _minimum(self, i: int) -> int:
        head = Text.from_markup(self.columns[i].header).plain if self.show_header else ""
        cells = [r[i].plain for r, _ in self.rows]
        each = _longest_word if self.columns[i].wrap else _longest_line
        return max([_longest_word(head)] + [each(c) for c in cells] + [1])

    def _widths(self, kept: list[int], width: int) -> list[int] | None:
        """Content widths of the ``kept`` columns within ``width``, or None if they can't fit."""
        room = width - 1 - _PER_COLUMN * len(kept)
        natural = [self._natural(i) for i in kept]
        if sum(natural) <= room:
            return natural
        widths = [self._minimum(i) for i in kept]
        if sum(widths) > room:
            return None
        spare = room - sum(widths)
        # Wrapping data columns widen first (a wrapped cell costs a line on every row, a
        # wrapped header one line in all), narrowest first; then headers unwrap.
        order = sorted(range(len(kept)), key=lambda k: (not self.columns[kept[k]].wrap, natural[k]))
        for k in order:
            give = min(spare, natural[k] - widths[k])
            widths[k] += give
            spare -= give
        return widths

    def plan(self, width: int) -> tuple[list[int], list[int]] | None:
        """The columns kept at ``width`` and their content widths; None: blocks instead."""
        kept = list(range(len(self.columns)))
        droppable = sorted(
            (i for i, c in enumerate(self.columns) if c.drop > 0),
            key=lambda i: (-self.columns[i].drop, -i),
        )
        while True:
            widths = self._widths(kept, width)
            if widths is not None:
                return kept, widths
            if not droppable:
                return None
            kept.remove(droppable.pop(0))

    def table(self, width: int = 10_000) -> Table | None:
        """The rich Table this renders as at ``width``; None where it turns into blocks."""
        planned = self.plan(width)
        if planned is None:
            return None
        kept, widths = planned
        left_out = [self.columns[i].header for i in range(len(self.columns)) if i not in kept]
        table = Table(
            title=self.title,
            caption=self._caption(left_out),
            show_header=self.show_header,
            header_style="bold",
        )
        for i, w in zip(kept, widths, strict=True):
            c = self.columns[i]
            # no_wrap=False everywhere: a cell no wider than w never wraps, a header wraps at
            # spaces; overflow "fold" rather than "…" (never needed: w ≥ the longest word)
            table.add_column(c.header, justify=c.justify, style=c.style, width=w, overflow="fold")
        for cells, style in self.rows:
            table.add_row(*(cells[i] for i in kept), style=style)
        return table

    def _caption(self, left_out: list[str]) -> str | None:
        if not left_out:
            return self.caption
        names = ", ".join(Text.from_markup(h).plain for h in left_out)
        where = f"{self.more} or a wider terminal" if self.more else "a wider terminal"
        extra = f"not shown: {names} (in {where})"
        return f"{self.caption}; {extra}" if self.caption else extra

    def blocks(self) -> Iterable[RenderableType]:
        """One block per row: its name, then ``header: value`` lines (every column)."""
        if self.title:
            yield Text(self.title, style="italic")
        names = [i for i, c in enumerate(self.columns) if c.name] or [0]
        for cells, style in self.rows:
            if not self.show_header:  # a key/value table: one "key: value" line a row
                yield Text(": ").join(c for c in cells if c.plain) if len(cells) > 1 else cells[0]
                continue
            head = Text(" ").join(cells[i] for i in names if cells[i].plain)
            head.stylize(style or "bold")
            yield head
            # a grid, so a value that wraps stays indented under itself; a word longer
            # than the line folds, never "…"
            grid = Table.grid(padding=(0, 1))
            grid.add_column(style="dim", no_wrap=True)
            grid.add_column(overflow="fold")
            for i, c in enumerate(self.columns):
                if i not in names and cells[i].plain:
                    grid.add_row(Text.from_markup(c.header).plain + ":", cells[i], style=c.style)
            yield Padding(grid, (0, 0, 0, 2), expand=False)
        if self.caption:
            yield Text(self.caption, style="dim italic")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width if self.width is None else min(self.width, options.max_width)
        table = self.table(width)
        if table is not None:
            yield table
            return
        for part in self.blocks():
            if isinstance(part, Text):
                part.overflow = "fold"  # a word longer than the whole line folds, never "…"
            yield part
