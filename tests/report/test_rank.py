"""Rendering of a ranking: places per score, disagreements, failed rows, the PNG."""

from __future__ import annotations

from rich.console import Console

from nctune.rank import Candidate, Ranking
from nctune.report.rank import (
    agreement_table,
    disagreements,
    failures,
    plot_ranking,
    ranking_table,
)


def _ranking() -> Ranking:
    def cand(spec, nc1, tr, cdnv, acc):
        c = Candidate(spec, spec, True, scores={"nc1": nc1, "trace_ratio": tr, "cdnv": cdnv})
        c.validation = {"test_accuracy": acc}
        c.seconds = {"pass": 1.0}
        return c

    cands = [
        cand("imagenet", 1.5, 1.0, 0.5, 0.9),  # trace ratio and CDNV say: best
        cand("random", 1.2, 2.0, 1.0, 0.5),  # pinv NC1 says: best
        Candidate("broken", "broken", True, ok=False, reason="backbone.name: no such model"),
    ]
    agreement = {"nc1": {"weighted_tau": -1.0, "spearman": -1.0, "n": 2}}
    return Ranking(cands, "nc1", "toy", 2, 10, 3, "linear", "test_accuracy", agreement=agreement)


def _text(renderable) -> str:
    console = Console(width=250, record=True)
    console.print(renderable)
    return console.export_text()


def test_disagreements_name_the_reversed_pair():
    lines = disagreements(_ranking())
    assert len(lines) == 2  # nc1 vs trace_ratio and nc1 vs cdnv; trace_ratio and cdnv agree
    assert lines[0] == (
        "nc1 vs trace_ratio: 1 of 1 pairs reversed (e.g. random above imagenet by nc1, "
        "below by trace_ratio)"
    )


def test_table_shows_places_accuracy_and_the_failure():
    text = _text(ranking_table(_ranking()))
    rows = [line for line in text.splitlines() if "random" in line or "imagenet" in line]
    assert rows[0].split("│")[2].strip() == "random"  # sorted by nc1
    assert "1.2 (1)" in rows[0] and "2 (2)" in rows[0] and "50.0%" in rows[0]
    assert "failed" in text  # in the row; the reason on a line of its own, never cut
    assert any("failed:[/] backbone.name: no such model" in x for x in failures(_ranking()))
    assert "-1.000" in _text(agreement_table(_ranking()))


def test_a_score_equal_everywhere_gets_no_places():
    r = _ranking()
    for i, c in enumerate(r.candidates[:2]):
        c.scores["hscore"] = 9.0 + 1e-14 * i  # saturated: only rounding differs
    assert r.positions("hscore") == {}
    row = next(x for x in _text(ranking_table(r)).splitlines() if "random" in x)
    assert "9 (" not in row


def test_png(tmp_path):
    path = plot_ranking(_ranking(), tmp_path / "ranking.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
