"""One home for what a command shows on stdout (the shape of Optuna's ``_format_output``).

A command describes its result as an :class:`Output` — the result document, the tables and
summary lines made from that result, the folder it wrote and the files in it — and hands it
to :func:`render`. With ``--json`` the document is printed alone on stdout (strict JSON, the
same text as the result file); otherwise the console gets the tables and lines in order,
then one ``Results in DIR (file, file, …)`` line. A table given as records
(:func:`records_table`) shows the same rows that ``--json`` prints.

Progress, warnings and errors go to stderr (:mod:`nctune.cli.common`), never here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table


@dataclass(frozen=True)
class Column:
    """One column of a records table.

    Attributes:
        key: the record's key (the JSON name).
        header: the table's header; default ``key``.
        style, no_wrap, ratio: as :meth:`rich.table.Table.add_column`.
        show: the cell text of a value (the JSON keeps the value itself).
    """

    key: str
    header: str | None = None
    style: str | None = None
    no_wrap: bool = False
    ratio: int | None = None
    show: Callable[[Any], str] = str


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
) -> Table:
    """Records (the rows ``--json`` prints) as a rich table of the given columns."""
    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c.header or c.key, style=c.style, no_wrap=c.no_wrap, ratio=c.ratio)
    for row in rows:
        table.add_row(*(c.show(row[c.key]) for c in columns))
    return table


def console_width() -> int:
    """The width :func:`render`'s console will have (for tables that fit themselves to it)."""
    return Console().width


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
    console = Console(highlight=output.highlight)
    for item in output.body:
        console.print(item)
    if output.folder is not None:
        console.print(results_line(output.folder, output.files) + output.note)
