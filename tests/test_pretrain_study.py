"""The pretraining study (benchmarks/pretrain_study.py): table, statistics, repeatability."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_study.py"
_spec = importlib.util.spec_from_file_location("pretrain_study", _PATH)
assert _spec is not None and _spec.loader is not None
study = importlib.util.module_from_spec(_spec)
sys.modules["pretrain_study"] = study  # dataclasses look their module up by name
_spec.loader.exec_module(study)

# A few images per class, a 4-wide ResNet, one epoch: seconds, not minutes.
TINY = [
    "data=vendored",
    "width=4",
    "samples_per_class=8",
    "downstream_per_class=6",
    "test_per_class=6",
    "epochs=1",
    "batch_size=16",
    "probe_iters=20",
    "probe_l2=1e-3,1e-1",
    "eval_batch_size=32",
]
# one setting with the plain head and weak augmentation, one with the MLP head and strong aug
SETTINGS = ["baseline", "proj+strong"]


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread, as the script uses: fast on a shared machine and a fixed reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_config():
    return study.apply_overrides(study.QUICK, TINY)


def test_table_shape_columns_and_repeatability(tiny_config):
    a = study.run_study(tiny_config, SETTINGS, seeds=[0], device="cpu")
    assert [(r["setting"], r["seed"]) for r in a.rows] == [("baseline", 0), ("proj+strong", 0)]
    for r in a.rows:
        assert set(study.METRIC_COLUMNS) <= set(r)
        assert r["source_nc1"] > 0 and r["downstream_nc1"] > 0 and r["source_nc1_head"] > 0
        for col in ("transfer_acc", "transfer_ncc", "source_acc"):
            assert 0.0 <= r[col] <= 1.0
        assert math.isfinite(r["train_loss"]) and r["epochs"] == 1
        assert r["probe_l2"] in tiny_config.probe_l2_grid
    # no projection head: the classifier sees the backbone features themselves
    assert a.rows[0]["source_nc1_head"] == a.rows[0]["source_nc1"]
    assert a.rows[1]["source_nc1_head"] != a.rows[1]["source_nc1"]
    assert [m["setting"] for m in a.means] == SETTINGS and all(m["runs"] == 1 for m in a.means)
    pairs = len(study.CORRELATION_PAIRS)
    assert len(a.correlations) == 2 * pairs
    assert {c["over"] for c in a.correlations} == {"runs", "setting means"}
    text = study.format_rows(a.rows)
    assert len(text.splitlines()) == 2 + len(a.rows) and "proj+strong" in text
    json.dumps(a.to_dict())  # JSON-ready

    # same seed, same numbers: initialisation, batch order, augmentation and probe are seeded
    b = study.run_study(tiny_config, SETTINGS, seeds=[0], device="cpu")
    keys = [*study.METRIC_COLUMNS, "probe_l2"]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}


def test_seeds_change_the_run_but_not_the_data(tiny_config):
    data = study.load_data(tiny_config)
    assert data.source_train[0].shape == (5 * 8, 3, 32, 32)
    assert data.down_train[1].tolist() == [k for k in range(5) for _ in range(6)]
    s = study.SETTINGS["baseline"]
    r0 = study.run_one(s, 0, tiny_config, data, torch.device("cpu"))
    r1 = study.run_one(s, 1, tiny_config, data, torch.device("cpu"))
    assert r0["source_nc1"] != r1["source_nc1"]


def test_rankdata_and_spearman_on_known_inputs():
    np.testing.assert_array_equal(study.rankdata([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(study.rankdata([3, 1, 2]), [3, 1, 2])
    x = [0.1, 0.5, 0.2, 3.0, 1.0]
    assert study.spearman(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert study.spearman(x, [math.exp(v) for v in x]) == pytest.approx(1.0)  # monotone
    assert study.spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    # ties: centred ranks (−1.5, 0, 0, 1.5)·(−1.5, −0.5, 0.5, 1.5) = 4.5, norms² 4.5 and 5
    assert study.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(study.spearman([1, 1, 1], [1, 2, 3]))  # constant side
    assert study.spearman([1, 2, float("nan"), 3], [1, 2, 0, 3]) == pytest.approx(1.0)


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.integers(0, 5, 20).astype(float)  # many ties
        y = x + rng.integers(0, 3, 20)
        assert study.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-12)


def test_permutation_pvalue():
    x = np.arange(10.0)
    assert study.spearman_pvalue(x, x) < 0.01  # perfect order: no permutation reaches it
    p = study.spearman_pvalue(x, np.random.default_rng(1).permutation(10))
    assert 0.0 < p <= 1.0
    assert study.spearman_pvalue(x, x[::-1]) == study.spearman_pvalue(x, x)  # two-sided


def test_tuned_probe_selects_on_held_out_data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat_interleave(20)
    x = torch.randn(100, 8, generator=g) + 3 * torch.nn.functional.one_hot(y, 8).double()
    acc, l2 = study.tuned_probe(x, y, x, y, l2s=[1e-3, 1e-1], iters=50)
    assert l2 in (1e-3, 1e-1) and acc > 0.9
    assert study.tuned_probe(x, y, x, y, l2s=[0.5], iters=50)[1] == 0.5


def test_weak_augmentation_only_mirrors_and_is_seeded():
    x = torch.randn(16, 3, 8, 8)
    out = study.augment(x, "weak", torch.Generator().manual_seed(0))
    for a, b in zip(x, out, strict=True):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    s1 = study.augment(x, "strong", torch.Generator().manual_seed(3))
    s2 = study.augment(x, "strong", torch.Generator().manual_seed(3))
    assert s1.shape == x.shape and torch.equal(s1, s2)
    assert study.augment(x, "none", torch.Generator()) is x


def test_overrides_are_typed_and_checked():
    cfg = study.apply_overrides(study.QUICK, ["epochs=3", "lr=0.1", "short_epochs=1"])
    assert (cfg.epochs, cfg.lr, cfg.short_epochs, cfg.resolved_short_epochs) == (3, 0.1, 1, 1)
    assert study.apply_overrides(study.QUICK, ["epochs=8"]).resolved_short_epochs == 2
    with pytest.raises(ValueError, match="did you mean epochs"):
        study.apply_overrides(study.QUICK, ["epoch=3"])
    with pytest.raises(ValueError, match="width"):
        study.apply_overrides(study.QUICK, ["width=wide"])
    with pytest.raises(ValueError, match="model"):
        study.apply_overrides(study.QUICK, ["model=resnet18"])
    with pytest.raises(ValueError, match="did you mean timm:resnet18"):
        study.apply_overrides(study.QUICK, ["model=timm:resnet18x"])
    with pytest.raises(ValueError, match="probe_l2"):
        study.apply_overrides(study.QUICK, ["probe_l2=small"])
    assert study.apply_overrides(study.QUICK, ["probe_l2=0.1, 1e-3"]).probe_l2_grid == (1e-3, 0.1)


def test_main_writes_json_and_plot(tmp_path, capsys):
    out, fig = tmp_path / "study.json", tmp_path / "study.png"
    argv = ["--quick", "--settings", "baseline", "--seeds", "0,1", "--json", str(out)]
    argv += ["--plot", str(fig), *[a for kv in TINY for a in ("--set", kv)]]
    assert study.main(argv) == 0
    payload = json.loads(out.read_text())
    assert [r["seed"] for r in payload["rows"]] == [0, 1]
    assert payload["means"][0]["runs"] == 2 and fig.stat().st_size > 0
    assert "Spearman" in capsys.readouterr().out


def test_main_bad_input_exits_2(capsys, tmp_path):
    assert study.main(["--set", "nope=1", "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    assert not (tmp_path / "x.json").exists()
    assert study.main(["--settings", "baseline,bogus"]) == 2
