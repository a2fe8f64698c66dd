"""The layer sweep: table shape, rule regrets, determinism, and the `nctune sweep` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from nctune.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import layer_sweep as bench

TINY = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=8",
    "data.val_fraction=0.03",
    "data.max_test_samples=60",
    "data.image_size=32",
    "data.batch_size=16",
    "train.epochs=1",
]


def test_quick_sweep_table_shape_and_determinism():
    a = bench.run(TINY, quick=True)
    blocks = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert [(p.block, p.mode) for p in a.points] == [
        (b, m) for b in blocks for m in ("layer", "scl")
    ]
    assert set(a.picks) >= {"knee", "last", "min_nc1", "max_ncc"} and a.picks["last"] == "layer4.0"
    for p in a.points:
        assert 0.0 <= p.test_accuracy <= 1.0 and 0 < p.trainable_params < p.total_params
    # SCL adds only the skip weights on top of the same block + head.
    for layer, scl in zip(a.points[::2], a.points[1::2], strict=True):
        assert scl.trainable_params > layer.trainable_params
    for rule, regret in a.regret.items():  # negative: the pick beat the block chosen on val
        assert all(g is not None for g in regret.values()), rule
    for mode in ("layer", "scl"):  # the best block is the best on validation
        top = a.best(mode)
        assert top.val_accuracy == max(p.val_accuracy for p in a.points if p.mode == mode)
    b = bench.run(TINY, quick=True)
    strip = lambda r: [{k: v for k, v in vars(p).items() if k != "wall_seconds"} for p in r.points]  # noqa: E731
    assert strip(a) == strip(b)
    assert a.picks == b.picks and a.regret == b.regret


def test_sweep_cli_writes_results(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--blocks", "layer3.0,layer4.0", "--modes", "scl", "--out", str(out), "--json"]
    for s in TINY:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["layer_sweep.png", "recipe.yaml", "sweep.json"]
    assert [p["block"] for p in doc["points"]] == ["layer3.0", "layer4.0"]
    # a rule may pick a block outside the swept subset: no regret for it, and no crash
    swept = ("layer3.0", "layer4.0")
    assert all(
        (v["scl"] is None) == (doc["picks"][r] not in swept) for r, v in doc["regret"].items()
    )
    bad = CliRunner().invoke(app, ["sweep", "--modes", "everything", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--modes" in bad.stderr and not (tmp_path / "x").exists()
    # a folder of the user's own files is refused before any work, and left alone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    bad = CliRunner().invoke(app, ["sweep", "--out", str(mine)])
    assert bad.exit_code == 2 and "sweep.json" in bad.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
