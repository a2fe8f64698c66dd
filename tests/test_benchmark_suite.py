"""The benchmark suite (benchmarks/suite.py): selection, statistics, goals, caching, end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
_spec = importlib.util.spec_from_file_location("nctune_bench_suite", _PATH)
assert _spec is not None and _spec.loader is not None
suite = importlib.util.module_from_spec(_spec)
sys.modules["nctune_bench_suite"] = suite  # dataclasses look their module up by name
_spec.loader.exec_module(suite)


def _record(task, strategy, seed, lr, test, val, *, cpu, trainable, wall=10.0, train=5.0):
    return {
        "task": task,
        "strategy": strategy,
        "kind": "finetune",
        "seed": seed,
        "lr": lr,
        "rc": 0,
        "cpu_s": cpu,
        "wall_s": wall,
        "result": {
            "test_accuracy": test,
            "val_accuracy": val,
            "trainable_percent": trainable,
            "tuned_layers": [],
            "wall_seconds": train,
            "total_seconds": train + 2.0,
            "profile_seconds": 1.0,
        },
    }


def _settings(**kw):
    base = dict(tasks=["a", "b"], strategies=["linear", "full", "auto"], seeds=[0, 1], epochs=1)
    base["lrs"] = {s: [1e-3, 1e-2] for s in base["strategies"]}
    base.update(kw)
    return suite.Settings(**base)


def test_mean_and_standard_error():
    assert suite.mean_se([]) == (None, None)
    assert suite.mean_se([2.0]) == (2.0, None)
    m, se = suite.mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(se, 1.0 / math.sqrt(3))


def test_selection_by_validation_ties_to_the_earlier_rate():
    r1 = _record("a", "full", 0, 1e-3, 0.5, 0.8, cpu=1, trainable=100)
    r2 = _record("a", "full", 0, 1e-2, 0.9, 0.8, cpu=1, trainable=100)
    r3 = _record("a", "full", 0, 3e-2, 0.1, 0.7, cpu=1, trainable=100)
    assert suite.select([r1, r2, r3]) is r1
    r2["result"]["val_accuracy"] = 0.85
    assert suite.select([r1, r2, r3]) is r2
    r2["rc"] = 1
    assert suite.select([r1, r2, r3]) is r1


def test_goals_are_decided_by_the_numbers():
    """Task a: auto matches full cheaply; task b: auto loses 2 points and costs half of full."""
    records = []
    for seed in (0, 1):
        for lr in (1e-3, 1e-2):
            good = lr == 1e-2  # the second rate wins validation everywhere
            v = 0.9 if good else 0.5
            records += [
                _record("a", "linear", seed, lr, 0.80, v, cpu=4, trainable=0.4, wall=6, train=5),
                _record("a", "full", seed, lr, 0.90, v, cpu=100, trainable=100),
                _record("a", "auto", seed, lr, 0.90 if good else 0.1, v, cpu=20, trainable=3.5),
                _record("b", "linear", seed, lr, 0.70, v, cpu=4, trainable=0.4, wall=20, train=5),
                _record("b", "full", seed, lr, 0.90, v, cpu=100, trainable=100),
                _record("b", "auto", seed, lr, 0.88 + 0.01 * seed, v, cpu=50, trainable=12),
            ]
    settings = _settings()
    cells = suite.summarize(records, settings)
    by = {(c["task"], c["strategy"]): c for c in cells}
    assert by["a", "auto"]["test_mean"] == pytest.approx(90.0)
    assert by["a", "auto"]["lrs_kept"] == [1e-2, 1e-2]
    assert by["b", "auto"]["test_se"] == pytest.approx(0.5)
    assert by["a", "auto"]["x_full_run"] == pytest.approx(0.2)
    assert by["b", "auto"]["cpu_per_seed"] == pytest.approx(100)
    goals = suite.evaluate_goals(cells, settings)
    status = {(g["id"], g["task"]): g["status"] for g in goals}
    assert status["auto_vs_full", "a"] == "met"
    assert status["auto_vs_full", "b"] == "NOT met"  # 88.5 vs 90: 1.5 points below
    assert status["auto_vs_linear", "a"] == "met" and status["auto_vs_linear", "b"] == "met"
    assert status["auto_trainable", "a"] == "met" and status["auto_trainable", "b"] == "NOT met"
    assert status["auto_cpu", "a"] == "met" and status["auto_cpu", "b"] == "NOT met"
    assert status["linear_overhead", "a"] == "met"  # 6 s end to end / 5 s training = 1.2×
    assert status["linear_overhead", "b"] == "NOT met"  # 4×
    assert status["suite_auto_vs_full", "suite"] == "NOT met"
    md = suite.render_markdown(cells, goals, settings)
    assert "| a | auto | 90.00 ± 0.00 % |" in md and "**NOT met**" in md


def test_missing_strategies_leave_goals_undecided():
    records = [_record("a", "auto", 0, 1e-3, 0.9, 0.9, cpu=1, trainable=3)]
    settings = _settings(tasks=["a"], strategies=["auto"], seeds=[0], lrs={"auto": [1e-3]})
    goals = suite.evaluate_goals(suite.summarize(records, settings), settings)
    assert {g["status"] for g in goals} == {"met", "n/a"}


def test_rates_of_own_choice_and_budget():
    lrs = suite._parse_lrs(["auto=None"], ["full", "auto"], 2)
    assert lrs == {"full": suite.LR_GRID["full"][:2], "auto": [None]}
    settings = _settings(tasks=["digits"], strategies=["auto"], seeds=[0], lrs=lrs)
    (spec,) = suite.plan(settings)
    assert not any(o.startswith("train.lr=") for o in spec.overrides)
    assert "--threads" in spec.args() and "lrown" in spec.folder(Path("w")).name


def test_shapes_are_written_once(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "SHAPES_PER_CLASS", 2)
    root = suite.make_shapes(tmp_path)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 20 and len({f.parent.name for f in files}) == 10
    before = files[0].read_bytes()
    assert suite.make_shapes(tmp_path) == root and files[0].read_bytes() == before


def test_tiny_suite_end_to_end_and_resumed(tmp_path, monkeypatch, capsys):
    """Two real nctune processes (random-init test_resnet, 32 px, 1 epoch), then a cached re-run."""
    tiny = ["data.source=digits", "data.val_fraction=0.15", "data.test_fraction=0.3"]
    monkeypatch.setattr(suite, "TASKS", {"tiny": [*tiny, "data.samples_per_class=10"]})
    argv = [
        "--tasks=tiny",
        "--strategies=linear,auto",
        "--seeds=1",
        "--epochs=1",
        "--lr-budget=1",
        "--backbone=timm:test_resnet",
        "--set=backbone.pretrained=false",
        "--image-size=32",
        f"--work={tmp_path / 'work'}",
        f"--out-md={tmp_path / 'suite.md'}",
        f"--out-json={tmp_path / 'suite.json'}",
    ]
    assert suite.main(argv) == 0
    doc = json.loads((tmp_path / "suite.json").read_text())
    assert len(doc["runs"]) == 2
    for r in doc["runs"]:
        assert r["rc"] == 0 and r["cpu_s"] > 0 and "--threads" in r["cmd"] and r["code"]
        assert 0 <= r["result"]["test_accuracy"] <= 1
        assert not list((Path(r["cmd"][-1])).rglob("*.safetensors"))  # weights dropped
    goals = {g["id"]: g for g in doc["goals"]}
    assert goals["auto_vs_linear"]["met"] in (True, False)  # decided from the numbers
    assert goals["auto_vs_full"]["met"] is None  # no full run: undecided
    assert goals["linear_overhead"]["met"] in (True, False)
    md = (tmp_path / "suite.md").read_text()
    assert "| tiny | linear |" in md and "| tiny | auto |" in md and "Goals:" in md

    def no_process(*a, **k):
        raise AssertionError("a cached run ran again")

    monkeypatch.setattr(suite, "measure", no_process)
    capsys.readouterr()
    assert suite.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cached, 0 to run" in out and out.count("(cached)") == 2
