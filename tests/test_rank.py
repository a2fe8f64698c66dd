"""nctune.rank: candidates, the streaming subsample, the rank correlations, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nctune.analyze import profiled_train
from nctune.backbones import create_backbone
from nctune.config import load_recipe
from nctune.data import build_data
from nctune.errors import ConfigError
from nctune.rank import Candidate, Ranking, _agreement, parse_candidate, rank
from nctune.rank_scores import class_geometry
from nctune.scores import SCORES, hscore, hscore_reg, knn_accuracy, logme, stratified_indices

#: digits at 32 px, few samples: a pass of a tiny model takes well under a second.
SETS = [
    "data.source=digits",
    "data.image_size=32",
    "data.samples_per_class=12",
    "data.val_fraction=0.3",
    "data.batch_size=32",
    "device=cpu",
    "rank.subsample=50",
    "rank.knn_k=3",
]


def test_parse_candidate():
    assert parse_candidate("packaged:efficientnet_lite0@random") == (
        "packaged:efficientnet_lite0",
        False,
    )
    assert parse_candidate(" timm:resnet18 ") == ("timm:resnet18", True)
    with pytest.raises(ConfigError, match="names no model"):
        parse_candidate("@random")


def test_config_scores_match_the_maths():
    from nctune.config import RankConfig

    assert set(RankConfig.model_fields["by"].annotation.__args__) == set(SCORES)


def _cand(spec, scores, acc=None, ok=True):
    c = Candidate(spec, spec, True, ok=ok, scores=scores)
    if acc is not None:
        c.validation = {"test_accuracy": acc}
    return c


def _weighted_tau_by_hand(x, y):
    """Vigna's weighted τ, hyperbolic additive weights, no ties; the mean of the two
    rankings (by x, then by y, decreasing) — what scipy's weightedtau(rank=True) means."""

    def tau(order):
        place = np.empty(len(order), dtype=int)
        place[order] = np.arange(len(order))
        num = den = 0.0
        for i, j in itertools.combinations(range(len(x)), 2):
            w = 1 / (place[i] + 1) + 1 / (place[j] + 1)
            num += w * np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            den += w
        return num / den

    return (tau(np.argsort(-x)) + tau(np.argsort(-y))) / 2


def _spearman_by_hand(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    n = len(x)
    return 1 - 6 * np.sum((rx - ry) ** 2) / (n * (n * n - 1))


def test_agreement_orients_scores_and_skips_failures():
    acc = np.array([0.9, 0.7, 0.8, 0.4, 0.6])
    knn = np.array([0.85, 0.8, 0.6, 0.3, 0.5])  # higher is better, imperfect
    nc1 = np.array([0.5, 2.0, 1.0, 9.0, 3.0])  # lower is better: perfect after negation
    cands = [
        _cand(f"m{i}", {"knn": float(knn[i]), "nc1": float(nc1[i]), "logme": None}, acc[i])
        for i in range(5)
    ]
    cands.append(_cand("broken", {}, ok=False))
    cands.append(_cand("no-val", {"knn": 0.99, "nc1": 0.1}))  # not validated: left out
    out = _agreement(cands, "test_accuracy")
    assert out["nc1"]["weighted_tau"] == pytest.approx(1.0)
    assert out["nc1"]["spearman"] == pytest.approx(1.0)
    assert out["nc1"]["n"] == 5
    assert out["knn"]["weighted_tau"] == pytest.approx(_weighted_tau_by_hand(knn, acc))
    assert out["knn"]["spearman"] == pytest.approx(_spearman_by_hand(knn, acc))
    assert 0 < out["knn"]["weighted_tau"] < 1
    reversed_ = _agreement(
        [_cand(f"m{i}", {"nc1": float(-nc1[i])}, acc[i]) for i in range(5)], "test_accuracy"
    )
    assert reversed_["nc1"]["weighted_tau"] == pytest.approx(-1.0)
    assert out["logme"] == {"weighted_tau": None, "spearman": None, "n": 0}
    # a score equal up to rounding everywhere ranks nothing (not float noise)
    flat = [_cand(f"m{i}", {"hscore": 9.0 + 1e-13 * i}, acc[i]) for i in range(5)]
    assert _agreement(flat, "test_accuracy")["hscore"] == {
        "weighted_tau": None,
        "spearman": None,
        "n": 5,
    }


def test_ranked_puts_unscored_then_failed_last():
    cands = [
        _cand("a", {"nc1": 2.0, "knn": 0.5}),
        _cand("bad", {}, ok=False),
        _cand("b", {"nc1": 1.0, "knn": 0.4}),
        _cand("c", {"nc1": None, "knn": 0.9}),
    ]
    r = Ranking(cands, "nc1")
    assert [c.spec for c in r.ranked()] == ["b", "a", "c", "bad"]
    assert [c.spec for c in r.ranked("knn")] == ["c", "a", "b", "bad"]
    assert r.positions("nc1") == {"b": 1, "a": 2}
    doc = r.to_dict()
    assert [row["rank"] for row in doc["candidates"]] == [1, 2, 3, None]


def test_fewer_than_two_or_repeated_candidates_are_refused():
    recipe = load_recipe(None, SETS)
    with pytest.raises(ConfigError, match="at least two candidates"):
        rank(recipe, ["timm:test_resnet@random"])
    with pytest.raises(ConfigError, match="listed twice"):
        rank(recipe, ["timm:test_resnet@random", " timm:test_resnet@random"])
    with pytest.raises(ConfigError, match="rank.by"):
        rank(recipe, ["timm:test_resnet@random", "timm:test_vit@random"], by="accuracy")


def test_different_input_sizes_need_a_fixed_image_size():
    recipe = load_recipe(None, [*SETS, "data.image_size=null"])
    with pytest.raises(ConfigError, match=r"data.image_size: .*224 px.*240 px"):
        rank(recipe, ["packaged:efficientnet_lite0@random", "packaged:efficientnet_lite1@random"])


def test_rank_streams_once_and_scores_the_same_subsample_as_computed_directly():
    recipe = load_recipe(None, SETS)
    result = rank(
        recipe, ["timm:test_resnet@random", "timm:test_efficientnet@random", "timm:test_vit"]
    )
    ok = {c.spec: c for c in result.candidates if c.ok}
    assert set(ok) == {"timm:test_resnet@random", "timm:test_efficientnet@random"}
    failed = next(c for c in result.candidates if not c.ok)
    assert failed.spec == "timm:test_vit" and failed.reason and "\n" not in failed.reason
    assert result.dataset.startswith("digits") and result.num_classes == 10

    # the scores must equal the same maths on features extracted independently
    c = ok["timm:test_resnet@random"]
    torch.manual_seed(recipe.seed)
    backbone = create_backbone("timm:test_resnet", pretrained=False)
    splits = build_data(recipe.data, backbone.input_config, seed=recipe.seed)
    train = profiled_train(splits, recipe)

    def feats(ds, positions):
        x = torch.stack([ds[int(i)][0] for i in positions])
        with torch.inference_mode():
            return backbone.features(x).double().numpy(), np.asarray(ds.targets)[positions]

    tr = feats(train, stratified_indices(np.asarray(train.targets), 50, seed=recipe.seed))
    va = feats(splits.val, stratified_indices(np.asarray(splits.val.targets), 50, seed=0))
    assert c.subsample == 50 and c.num_samples == len(train)
    assert c.scores["logme"] == pytest.approx(logme(*tr), rel=1e-4)
    assert c.scores["hscore"] == pytest.approx(hscore(*tr), rel=1e-3)
    assert c.scores["hscore_reg"] == pytest.approx(hscore_reg(*tr), rel=1e-3)
    assert c.geometry == pytest.approx(class_geometry(*tr), rel=1e-4)
    assert c.scores["static_top1"] == 0.0  # random init: no source accuracy to speak of
    assert c.scores["params"] == sum(p.numel() for p in backbone.model.parameters()) - sum(
        p.numel() for p in backbone.classifier.parameters()
    )
    # NCTI is relative to the pool: with two candidates each term is 0 or 1
    other = ok["timm:test_efficientnet@random"]
    assert {c.scores["ncti"], other.scores["ncti"]} <= {0.0, 1 / 3, 2 / 3, 1.0}
    assert c.scores["knn"] == pytest.approx(knn_accuracy(*tr, *va, k=3))
    assert c.scores["nc1_best"] <= c.scores["nc1"]
    assert set(c.seconds) == {"load", "pass", "scores", "pass_cpu", "scores_cpu"}
    assert all(v is not None for v in c.scores.values())


def test_validation_without_scipy_is_one_clear_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails as if not installed
    recipe = load_recipe(None, SETS)
    with pytest.raises(ConfigError, match=r'pip install "nctune\[rank\]"'):
        rank(
            recipe, ["timm:test_resnet@random", "timm:test_efficientnet@random"], validate="linear"
        )
