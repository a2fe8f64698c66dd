"""One home for what a command shows on stdout (the shape of Optuna's ``_format_output``).

A command describes its result as an :class:`Output` — the result document, the tables and
summary lines made from that result, the folder it wrote and the files in it — and hands it
to :func:`render`. With ``--json`` the document is printed alone on stdout (strict JSON, the
same text as the result file); otherwise the console gets the tables and lines in order,
then one ``Results in DIR (file, file, …)`` line. A table given as records
(:func:`records_table`) shows the same rows that ``--json`` prints.

Tables fit the console (:class:`nctune.report.fit.FitTable`): its width is ``COLUMNS`` when
set, the terminal's, or :data:`LOG_WIDTH` when stdout is a log file or pipe; names are never
cut, secondary columns go first, then a table turns into one block per row.

Progress, warnings and errors go to stderr (:mod:`nctune.cli.common`), never here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

if TYPE_CHECKING:
    from nctune.report.fit import FitTable

#: The width of a log file or pipe (stdout not a terminal, ``COLUMNS`` unset): generous, so
#: tables keep their columns; still finite, so a table never grows without bound.
LOG_WIDTH = 200


@dataclass(frozen=True)
class Column:
    """One column of a records table.

    Attributes:
        key: the record's key (the JSON name).
        header: the table's header; default ``key``.
        style: the column's rich style.
        no_wrap: the cells are names: never wrapped, they head a row's block on a narrow
            console.
        ratio: accepted for compatibility; a column with one wraps between words.
        show: the cell text of a value (the JSON keeps the value itself).
        drop: 0 = always shown; larger numbers are left out first on a narrow console.
    """

    key: str
    header: str | None = None
    style: str | None = None
    no_wrap: bool = False
    ratio: int | None = None
    show: Callable[[Any], str] = str
    drop: int = 0


@dataclass
class Output:
    """What a command shows: one description, rendered as JSON or for the console.

    Attributes:
        doc: the result document; ``--json`` prints it alone.
        body: tables and summary lines (rich markup), printed in order.
        folder: the result folder; with it, a ``Results in DIR (files)`` line ends the output.
        files: the names listed in that line, in order.
        note: markup appended to that line (e.g. where a study lives).
        highlight: let rich colour numbers and paths in the lines (on a terminal).
    """

    doc: Any
    body: list[RenderableType] = field(default_factory=list)
    folder: str | Path | None = None
    files: Sequence[str] = ()
    note: str = ""
    highlight: bool = True


def emit_json(text: str) -> None:
    """Write the result JSON alone on stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def results_line(folder: str | Path, files: Sequence[str]) -> str:
    """``Results in [cyan]DIR[/] (a, b, c)``: where a command's files are (markup)."""
    return f"Results in [cyan]{escape(str(folder))}[/] ({', '.join(files)})"


def records_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], title: str | None = None
) -> FitTable:
    """Records (the rows ``--json`` prints) as a table of the given columns that fits the
    console (:class:`nctune.report.fit.FitTable`): cells are plain text, never markup."""
    from nctune.report.fit import Col, FitTable  # here: report loads matplotlib

    table = FitTable(
        [
            Col(c.header or c.key, style=c.style, drop=c.drop, wrap=not c.no_wrap, name=c.no_wrap)
            for c in columns
        ],
        title=title,
    )
    for row in rows:
        table.add_row(*(Text(c.show(row[c.key])) for c in columns))
    return table


def console_width() -> int:
    """The width :func:`render`'s console has: ``COLUMNS`` when set, else the terminal's,
    else (a log file, a pipe, CI) :data:`LOG_WIDTH`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    console = Console()
    return console.width if console.is_terminal else LOG_WIDTH


def render(output: Output, json_: bool = False) -> None:
    """Print a command's result: its document alone with ``--json``, else tables and lines.

    Args:
        output: what the command produced.
        json_: ``--json`` was given.
    """
    if json_:
        from nctune.runs._io import to_json  # here: pydantic loads only when a command runs

        emit_json(to_json(output.doc))
        return
    console = Console(highlight=output.highlight, width=console_width())
    for item in output.body:
        console.print(item)
    if output.folder is not None:
        console.print(results_line(output.folder, output.files) + output.note)
