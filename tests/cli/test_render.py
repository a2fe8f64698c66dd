"""The one renderer of command output: summary, file list, tables and --json from one description."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from nctune.cli.render import Column, Output, records_table, render, results_line

ROWS = [
    {"key": "train.lr", "type": "`float`", "default": "`0.001`", "description": "learning rate"},
    {"key": "train.epochs", "type": "`int`", "default": "`5`", "description": "epochs"},
]
COLUMNS = (
    Column("key", header="field", no_wrap=True),
    Column("type", show=lambda v: v.replace("`", "")),
    Column("default", show=lambda v: v.replace("`", "")),
    Column("description", ratio=1),
)


def _summary() -> Output:
    table = records_table(ROWS, COLUMNS, title="Fields")
    return Output(
        {"best": "train.lr", "rows": ROWS},
        body=[table, "[bold]Best[/]: train.lr"],
        folder=Path("out"),
        files=("report.json", "plot.png", "recipe.yaml"),
        note="; study s in sqlite",
    )


def test_one_description_renders_a_summary_a_table_and_a_file_list(capsys):
    render(_summary(), json_=False)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "Fields" in lines[0]  # the table first, in body order
    assert "field" in out and "train.epochs" in out and "`" not in out  # cells shown by `show`
    assert "Best: train.lr" in lines  # markup rendered, not printed
    assert lines[-1] == "Results in out (report.json, plot.png, recipe.yaml); study s in sqlite"


def test_json_prints_the_document_alone(capsys):
    render(_summary(), json_=True)
    out = capsys.readouterr().out
    assert json.loads(out) == {"best": "train.lr", "rows": ROWS}  # values as they are
    assert "Results in" not in out and out.endswith("}\n")


def test_records_table_has_the_rows_and_columns_json_prints():
    table = records_table(ROWS, COLUMNS).table()  # the rich Table it prints as, when wide
    assert isinstance(table, Table)
    assert [c.header for c in table.columns] == ["field", "type", "default", "description"]
    assert [str(c) for c in table.columns[1].cells] == ["float", "int"]
    assert table.row_count == len(ROWS)


def test_a_folder_with_brackets_is_shown_as_it_is(capsys):
    render(Output({}, folder="runs/[red]x", files=("a.json",)))
    assert capsys.readouterr().out == "Results in runs/[red]x (a.json)\n"
    assert results_line("d", ("a", "b")) == "Results in [cyan]d[/] (a, b)"


def test_no_folder_means_no_results_line(capsys):
    render(Output({"n": 1}, body=["Wrote [cyan]x[/]."], highlight=False))
    assert capsys.readouterr().out == "Wrote x.\n"
