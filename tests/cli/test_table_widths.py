"""Every command's tables fit 60, 80 and 200 columns: names and parameters are never cut.

Each table is built from a hand-made result with long, realistic names (ConvNeXt block paths,
timm specs with pretrained tags), printed on a ``Console(width=W)`` as the commands print it,
and read back as text: no line wider than W, no "…", and every name / parameter whole on
one line. ``COLUMNS`` and the log-file width are checked on the renderer itself.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nctune.analyze import CollapseProfile, LayerCollapse
from nctune.cli import app
from nctune.cli.render import LOG_WIDTH, Output, console_width, render
from nctune.rank import Candidate, Ranking
from nctune.report import finetune_tables, probe_table, profile_table, sweep_table
from nctune.report.fit import Col, FitTable
from nctune.report.rank import agreement_table, ranking_table
from nctune.report.search import search_tables, trials_table
from nctune.selection import Selection
from nctune.sweep import SweepPoint, SweepResult
from nctune.tune import SearchResult, TrialRecord

WIDTHS = (60, 80, 200)
BLOCKS = [f"stages.{s}.blocks.{b}.conv_dw" for s in range(4) for b in (0, 11)]
SPECS = [
    "timm:convnext_tiny.fb_in22k_ft_in1k",
    "timm:efficientnet_b0.ra_in1k@random",
    "packaged:efficientnet_lite0",
]


def printed(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def assert_fits(text: str, width: int, names: list[str]) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "…" not in text, text
    for name in names:
        assert any(name in line for line in lines), (name, width, text)


# -- analyze ---------------------------------------------------------------------------


def _profile() -> CollapseProfile:
    metrics = SimpleNamespace(nc1=1.23456, trace_ratio=2.34567, cdnv=0.345678)
    layers = [LayerCollapse(i, b, 768, metrics, 0.5) for i, b in enumerate(BLOCKS)]
    return CollapseProfile(layers, 1000, 10, 3.0, SPECS[0], "imagefolder:/data/x")


@pytest.mark.parametrize("width", WIDTHS)
def test_analyze_table(width):
    rec = Selection("elbow", [BLOCKS[3]], "why")
    assert_fits(printed(profile_table(_profile(), rec), width), width, BLOCKS)


# -- finetune --------------------------------------------------------------------------


def _run() -> SimpleNamespace:
    layers = [
        {"name": b, "dim": 768, "nc1_before": 2.0, "nc1_after": 1.0, "ncc_before": 0.5,
         "ncc_after": 0.7, "tuned": i >= 6, "remeasured": i >= 6}
        for i, b in enumerate(BLOCKS)
    ]  # fmt: skip
    probe = {
        "steps": 20,
        "winner": BLOCKS[6],
        "why": "largest NC1 drop per step",
        "candidates": [
            {"block": b, "steps": 20, "nc1_before": 2.0, "nc1_after": 1.5, "val_accuracy": 0.6,
             "train_loss": 1.2345}
            for b in BLOCKS[4:]
        ],
    }  # fmt: skip
    return SimpleNamespace(
        layers=layers, strategy="auto", tuned_layers=BLOCKS[6:], probe=probe,
        selection={"rule": "elbow"}, trainable_params=1_234_567, total_params=28_000_000,
        val_accuracy=0.8123, best_epoch=3, test_accuracy=0.8011, nc1_before=2.5, nc1_after=0.9,
        cache={"used": True, "where": "cpu", "cut": BLOCKS[5], "megabytes": 12.5},
        wall_seconds=12.3, total_seconds=15.0,
    )  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_finetune_tables(width):
    tables = finetune_tables(_run())
    assert len(tables) == 3  # per block, the probe, the result
    text = "\n".join(printed(t, width) for t in tables)
    assert_fits(text, width, BLOCKS)
    assert_fits(printed(probe_table(_run().probe), width), width, BLOCKS[4:])


# -- sweep -----------------------------------------------------------------------------


def _sweep() -> SweepResult:
    points = [
        SweepPoint(b, i, m, 0.5 + 0.01 * i, 0.6 - 0.01 * i, 10 * i + 1, 10_000, 3.14159 / (i + 1),
                   1.2345 / (i + 1), 1.0)
        for i, b in enumerate(BLOCKS)
        for m in ("layer", "scl")
    ]  # fmt: skip
    picks = {"knee": BLOCKS[2], "last": BLOCKS[-1], "min_nc1": BLOCKS[-1], "max_ncc": BLOCKS[5]}
    return SweepResult(points, picks, [], SPECS[0], "imagefolder:/data/x", 9.0)


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep_table(width):
    text = printed(sweep_table(_sweep()), width)
    assert_fits(text, width, BLOCKS)
    assert "◀" in text


# -- rank ------------------------------------------------------------------------------


def _ranking() -> Ranking:
    cands = []
    for i, spec in enumerate(SPECS):
        c = Candidate(spec, spec, True, scores={"nc1": 1.0 + i, "trace_ratio": 2.0 - i,
                      "cdnv": 0.5 * i, "ncc": 0.5, "logme": -1.2, "hscore": 3.4, "knn": 0.4,
                      "nc1_best": 0.9 + i})  # fmt: skip
        c.best_block = BLOCKS[i]
        c.validation = {"test_accuracy": 0.9 - 0.1 * i}
        c.seconds = {"pass": 1.0}
        cands.append(c)
    cands.append(Candidate("timm:not_a_model", "timm:not_a_model", True, ok=False, reason="no"))
    agreement = {"nc1": {"weighted_tau": -1.0, "spearman": -1.0, "n": 3}}
    return Ranking(cands, "nc1", "toy", 2, 10, 3, "linear", "test_accuracy", agreement=agreement)


@pytest.mark.parametrize("width", WIDTHS)
def test_rank_tables(width):
    r = _ranking()
    text = printed(ranking_table(r), width)
    assert_fits(text, width, [*SPECS, "timm:not_a_model"])
    if width == 200:  # a wide log keeps a table, the sorting score and the accuracy
        assert "┃" in text and "NC1 ↓" in text and "linear" in text and "90.0%" in text
    assert_fits(printed(agreement_table(r), width), width, ["NC1"])


# -- tune ------------------------------------------------------------------------------

PARAMS = {"train.lr": 0.00123, "strategy.layers": [BLOCKS[6]], "train.weight_decay": 0.05}
SHOWN = ["lr=0.00123", f"layers={BLOCKS[6]}", "weight_decay=0.05"]


def _search() -> SearchResult:
    trials = [
        TrialRecord(i, "COMPLETE", PARAMS, value=0.8, val_accuracy=0.8, test_accuracy=0.79,
                    nc1_after=0.5, trainable_percent=4.2, epochs=3, wall_seconds=12.0)
        for i in range(3)
    ]  # fmt: skip
    trials.append(TrialRecord(3, "FAIL", PARAMS, reason="CUDA out of memory [device 0]"))
    return SearchResult(
        "search", "sqlite:///s.db", "out", "val_accuracy", "maximize", 4, {}, trials, trials[0],
        None, importances={"train.weight_decay": 0.7, "strategy.layers": 0.3},
    )  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_tune_tables(width):
    tables = search_tables(_search())
    text = "\n".join(printed(t, width) for t in tables)
    assert_fits(text, width, [*SHOWN, "train.weight_decay", "strategy.layers"])
    flat = " ".join(text.split())
    assert "[device" in text  # a failure's reason is text, not markup (it may wrap)
    assert "Search search:" not in flat
    assert "Trials of study 'search', by val accuracy (higher is better)" in flat
    live = printed(trials_table(_search().trials), width)  # the live table on stderr
    assert_fits(live, width, SHOWN)


# -- evaluate --------------------------------------------------------------------------

CLASSES = ["Ankle boot (category 9)", "Pullover — long sleeves", "T-shirt/top"]


@pytest.mark.parametrize("width", WIDTHS)
def test_evaluate_table(width):
    from nctune.cli.evaluate import _table

    scores = {"precision": 0.8125, "recall": 0.75, "f1": 0.78}
    doc = {
        "run": "runs/finetune-convnext_tiny.fb_in22k_ft_in1k",
        "data": "test split",
        "per_class": [{"class": c, **scores, "support": 100} for c in CLASSES],
        "macro": scores,
        "weighted": scores,
    }
    assert_fits(printed(_table(doc), width), width, [*CLASSES, "81.2%"])


# -- init --fields (through the CLI, with COLUMNS) -------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_init_fields_with_columns(width):
    from nctune.recipe_fields import field_rows

    res = CliRunner().invoke(app, ["init", "--fields"], env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    assert_fits(res.stdout, width, [r.key for r in field_rows()])


# -- the fitting itself and the console's width ----------------------------------------


def _two_names() -> FitTable:
    t = FitTable(
        [Col("#", "right", name=True), Col("name", name=True), Col("score", "right"),
         Col("extra", "right", drop=1), Col("more", "right", drop=2)],
        title="T", caption="c", more="x.json",
    )  # fmt: skip
    t.add_row("1", SPECS[0], "0.5", "1.25", "2.5")
    return t


def test_secondary_columns_go_first_then_one_block_per_row():
    # natural widths 1 + 35 + 5 + 5 + 4, plus 3 a column and 1: 66 columns in all
    assert _two_names().plan(66)[0] == [0, 1, 2, 3, 4]
    assert _two_names().plan(65)[0] == [0, 1, 2, 3]  # "more" (drop=2) first
    assert _two_names().plan(58)[0] == [0, 1, 2]
    text = printed(_two_names(), 58)
    assert "not shown: extra, more (in x.json or a wider terminal)" in " ".join(text.split())
    assert _two_names().plan(50) is None
    text = printed(_two_names(), 50)
    assert text.splitlines()[1] == f"1 {SPECS[0]}"  # the block's name line
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "score: 0.5" in lines and "more: 2.5" in lines  # every column, in blocks


def test_console_width_is_columns_or_a_generous_log_width(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "60")
    assert console_width() == 60
    monkeypatch.delenv("COLUMNS")
    assert console_width() == LOG_WIDTH  # pytest's stdout is not a terminal
    render(Output({}, body=[sweep_table(_sweep())]))
    out = capsys.readouterr().out
    assert "SCL-FT NC1 after" in out and max(len(line) for line in out.splitlines()) <= LOG_WIDTH


# -- a real command, end to end ---------------------------------------------------------


@pytest.mark.parametrize("width", [60, None])
def test_analyze_command_fits_columns_or_the_log_width(tmp_path, width):
    from tests.tiny import set_args, tiny

    env = {"COLUMNS": str(width)} if width else {"COLUMNS": None}  # None: unset
    args = ["analyze", *set_args(tiny()), "--out", str(tmp_path / "a")]
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads((tmp_path / "a" / "analysis.json").read_text())
    names = [layer["name"] for layer in doc["layers"]]
    assert len(names) >= 4 and all(
        any(n in line for line in res.stdout.splitlines()) for n in names
    )
    assert max(len(line) for line in res.stdout.splitlines()) <= (width or LOG_WIDTH)
    assert "…" not in res.stdout
