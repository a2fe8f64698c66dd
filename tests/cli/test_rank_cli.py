"""``nctune rank`` end to end on a pool of tiny random-init models (seconds, offline).

Result files, the table with its failed row, ``--json``, ``--validate`` and the bad-input
contract (exit 2, one line on stderr, nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from nctune.cli import app

POOL = "timm:test_resnet@random,timm:test_efficientnet@random,timm:not_a_model@random"
SETS = ["rank.subsample=40", "rank.knn_k=3", "data.batch_size=32"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, ["rank", *map(str, args)])


def _sets(*extra: str) -> list[str]:
    return [x for s in (*SETS, *extra) for x in ("--set", s)]


@pytest.fixture
def recipe(make_image_folder, write_recipe) -> Path:
    data = make_image_folder("imgs", {"a": 10, "b": 10, "c": 10})
    return write_recipe(data={"path": str(data)})


def test_rank_writes_ranking_table_and_failures(recipe: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the table is wide; rich wraps cells at 80
    out = tmp_path / "out"
    result = invoke(recipe, "--backbones", POOL, "--by", "knn", "--out", out, *_sets())
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ranking.json", "ranking.png", "recipe.yaml"]
    doc = json.loads((out / "ranking.json").read_text())
    assert doc["by"] == "knn" and doc["num_classes"] == 3 and doc["knn_k"] == 3
    rows = doc["candidates"]
    assert [r["spec"] for r in rows][2] == "timm:not_a_model@random"  # failed: last
    ok, failed = rows[:2], rows[2]
    assert [r["rank"] for r in rows] == [1, 2, None]
    assert ok[0]["scores"]["knn"] >= ok[1]["scores"]["knn"]
    assert not failed["ok"] and "not_a_model" in failed["reason"] and failed["scores"] == {}
    for r in ok:
        assert set(r["scores"]) == set(doc["higher_is_better"])
        assert r["pretrained"] is False and r["image_size"] == 32
        assert r["best_block"] and r["seconds"]["pass"] > 0
    stdout = result.stdout
    assert "timm:test_resnet@random" in stdout and "Start from" in stdout
    assert "failed: backbone.name: unknown timm model 'not_a_model'" in stdout
    # the static baselines' order beside the score: both random init, so top-1 says nothing
    bigger = max(ok, key=lambda r: r["scores"]["params"])["spec"]
    assert all(r["scores"]["static_top1"] == 0.0 for r in ok)
    assert f"Without target data: by params {bigger} >" in " ".join(stdout.split())
    assert (out / "ranking.png").read_bytes()[:4] == b"\x89PNG"
    assert "rank:" in (out / "recipe.yaml").read_text()


def test_json_alone_on_stdout(recipe: Path, tmp_path: Path):
    result = invoke(
        recipe, "--backbones", POOL.rsplit(",", 1)[0], "--json", "--out", tmp_path / "o", *_sets()
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["by"] == "logme" and len(doc["candidates"]) == 2  # the default (evidence.md)


@pytest.mark.slow
def test_validate_reports_rank_correlations(recipe: Path, tmp_path: Path):
    result = invoke(
        recipe,
        "--backbones",
        POOL,
        "--validate",
        "linear",
        "--json",
        "--out",
        tmp_path / "v",
        *_sets("train.epochs=1", "train.track_collapse=false"),
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["validation"] == "linear" and doc["metric"] == "val_accuracy"
    ok = [r for r in doc["candidates"] if r["ok"]]
    assert all(r["validation"]["strategy"] == "linear" for r in ok)
    assert all(0 <= r["validation"]["val_accuracy"] <= 1 for r in ok)
    assert set(doc["agreement"]) == set(doc["higher_is_better"])
    assert all(a["n"] == 2 for a in doc["agreement"].values())


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--backbones", "timm:test_resnet@random"], "at least two candidates"),
        (["--backbones", POOL, "--by", "speed"], "rank.by"),
        (["--backbones", POOL, "--validate", "magic"], "rank.validation"),
        (
            [
                "--backbones",
                "packaged:efficientnet_lite0@random,packaged:efficientnet_lite2@random",
                "--set",
                "data.image_size=null",
            ],
            "data.image_size",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(recipe, tmp_path, args, needle):
    out = tmp_path / "bad"
    result = invoke(recipe, *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()


# ------------------------------------------------------------ issue 20, item 22
def _damaged_run(folder: Path) -> Path:
    """A run folder whose model.safetensors is not one (a truncated or foreign file)."""
    folder.mkdir()
    (folder / "recipe.yaml").write_text("backbone: {name: timm:resnet10t}\n")
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    return folder


@pytest.mark.parametrize("image_size", ["32", "null"])  # null: sizes are asked of each first
def test_a_damaged_or_missing_file_candidate_is_a_failed_row(recipe, tmp_path, image_size):
    damaged = _damaged_run(tmp_path / "damaged-run")
    missing = tmp_path / "missing.safetensors"
    pool = f"timm:test_resnet@random,file:{damaged},file:{missing}"
    sets = _sets(f"data.image_size={image_size}")
    result = invoke(recipe, "--backbones", pool, "--json", "--out", tmp_path / "o", *sets)
    assert result.exit_code == 0, result.output
    rows = {r["spec"]: r for r in json.loads(result.stdout)["candidates"]}
    assert rows["timm:test_resnet@random"]["ok"]
    assert not rows[f"file:{damaged}"]["ok"] and "damaged-run" in rows[f"file:{damaged}"]["reason"]
    assert not rows[f"file:{missing}"]["ok"] and "not found" in rows[f"file:{missing}"]["reason"]


def test_validate_where_every_fine_tune_fails_is_one_line_exit_2(recipe, tmp_path):
    out = tmp_path / "v"
    result = invoke(
        recipe,
        "--backbones",
        POOL,
        "--validate",
        "layers",
        "-q",
        "--out",
        out,
        *_sets("train.epochs=1", "strategy.layers=[no_such_block]"),
    )
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for part in ("rank.validation", "every layers fine-tune failed", "no_such_block"):
        assert part in lines[0], lines[0]
    assert not out.exists()


def test_the_table_keeps_names_and_reasons_whole_at_80_columns(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(recipe, "--backbones", POOL, "--out", tmp_path / "o", *_sets())
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout, result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    flat = " ".join(result.stdout.split())
    for spec in POOL.split(","):
        assert spec in flat, result.stdout
    assert "failed: backbone.name: unknown timm model 'not_a_model'" in flat, result.stdout
