"""The fuzz contract's checker catches each way a command can break it (a checker that
passes everything would make the fuzz suite vacuous)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.fuzz.contract import Run, snapshot, violations


def _run(tmp_path: Path, exit_code: int, stderr: str = "", exception=None, change=None) -> Run:
    tmp_path.mkdir(exist_ok=True)
    inp, out = tmp_path / "in.yaml", tmp_path / "out"
    inp.write_text("a: 1\n")
    before_in, before_out = snapshot(inp), snapshot(out)
    if change:
        change(inp, out)
    res = SimpleNamespace(
        exit_code=exit_code, stderr=stderr, output=stderr, exception=exception or SystemExit(0)
    )
    return Run(res, before_in, snapshot(inp), before_out, snapshot(out), out)


def test_a_kept_contract_has_no_violations(tmp_path):
    assert violations(_run(tmp_path, 2, "error: x: bad\n")) == []


def test_each_breach_is_named(tmp_path):
    def write_out(inp, out):
        out.mkdir()
        (out / "report.json").write_text('{"acc": NaN}')

    assert violations(_run(tmp_path, 1, exception=KeyError("k")))[0].startswith("traceback:")
    assert violations(_run(tmp_path, 2, "error: one\nerror: two\n")) == ["refusal: 2 stderr lines"]
    changed = violations(_run(tmp_path, 2, "e\n", change=lambda i, o: i.write_text("b")))
    assert changed == ["changed input: in.yaml"]
    assert violations(_run(tmp_path / "a", 2, "e\n", change=write_out)) == [
        "refusal wrote or removed: report.json"
    ]
    nan = violations(_run(tmp_path / "b", 0, change=write_out))
    assert nan and nan[0].startswith("non-finite save: report.json")
