"""The levers of ``auto``: the collapse probe, the learning-rate range test and the
linear-probe warm start of the head.

A random-init ``timm:test_resnet`` at 32 px on 30 synthetic images (3 classes that
differ in one channel's brightness) on CPU; nothing is downloaded and every test runs in
well under a second of model time. Optimizer steps are counted by a global optimizer
step hook, independently of what the levers report.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader, TensorDataset

from nctune.backbones import create_backbone
from nctune.selection import rank_blocks, select_layers
from nctune.training.lr_finder import SANE_LR, lr_range_test
from nctune.training.probe import (
    MIN_VAL_PER_CLASS,
    ProbeCandidate,
    _choose,
    probe_blocks,
)
from nctune.training.strategies import apply_strategy
from nctune.training.suffix import as_source, measure
from nctune.training.warm_start import fit_linear_head, warm_start_head
from tests.test_selection import profile

K = 3
CANDIDATES = ["layer3.0", "layer2.0", "layer4.0"]  # the rule's order, not depth order


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(K).repeat_interleave(10)
    x = 0.5 * torch.randn(len(y), 3, 32, 32, generator=gen)
    x[:, 0] += y.float()[:, None, None] - 1  # a learnable, not trivial, class signal
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("timm:test_resnet", pretrained=False)


@pytest.fixture
def count_steps():
    """``count_steps()`` → optimizer steps taken so far, per optimizer class name."""
    counts: dict[str, int] = {}

    def hook(optimizer, args, kwargs):
        name = type(optimizer).__name__
        counts[name] = counts.get(name, 0) + 1

    handle = register_optimizer_step_post_hook(hook)
    yield lambda: dict(counts)
    handle.remove()


def without_seconds(d):
    if isinstance(d, dict):
        return {k: without_seconds(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [without_seconds(v) for v in d]
    return d


def run_probe(backbone, data, **kw):
    kw = {"budget_steps": 9, "lr": 1e-3, "batch_size": 8, "seed": 3, **kw}
    return probe_blocks(backbone, CANDIDATES, data, K, **kw)


# ------------------------------------------------------------------ the collapse probe
def test_probe_choice_is_deterministic_for_a_seed(backbone, data):
    rng = torch.get_rng_state()
    first, second = run_probe(backbone, data), run_probe(backbone, data)
    assert first.winner == second.winner
    assert without_seconds(first.to_dict()) == without_seconds(second.to_dict())
    for key, value in first.winner_state.items():
        assert torch.equal(value, second.winner_state[key]), key
    # the probe draws from a forked RNG: the caller's random stream is where it was
    assert torch.equal(rng, torch.get_rng_state())


def test_probe_never_costs_more_than_its_budget(backbone, data, count_steps):
    result = run_probe(backbone, data, budget_steps=8, warm_start=True)
    counted = count_steps()
    # 8 steps for 3 candidates: 2 each, the remainder unused; L-BFGS fits of the warm
    # start are not optimizer steps of the block and are counted apart
    assert counted.get("AdamW", 0) == result.steps == 6 <= result.budget_steps
    assert [c.steps for c in result.candidates] == [2, 2, 2]
    assert set(counted) <= {"AdamW", "LBFGS"}
    with pytest.raises(ValueError, match="below one per candidate"):
        run_probe(backbone, data, budget_steps=2)


def test_probe_records_every_block_and_why_the_winner_won(backbone, data):
    result = run_probe(backbone, data, val_data=DataLoader(data, batch_size=4))
    report = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON
    assert [c["block"] for c in report["candidates"]] == CANDIDATES
    assert [c["rank"] for c in report["candidates"]] == [0, 1, 2]
    fields = {"block", "steps", "seconds", "lr", "nc1_before", "nc1_after"}
    fields |= {"val_accuracy", "train_loss"}
    for c in report["candidates"]:
        assert fields <= set(c) and c["steps"] == 3 and c["lr"] == 1e-3
        assert c["nc1_before"] > 0 and c["nc1_after"] > 0 and 0 <= c["val_accuracy"] <= 1
    assert report["winner"] in CANDIDATES and report["winner"] in report["why"]
    # 30 validation images for 3 classes cannot rank: the lowest NC1 after decides
    assert len(data) < MIN_VAL_PER_CLASS * K
    assert report["criterion"] == "nc1_after" and "too small to rank" in report["why"]
    lowest = min(result.candidates, key=lambda c: c.nc1_after)
    assert result.winner == lowest.block
    assert report["cache"]["used"] and report["cache"]["cut"] == "backbone.layer2.0"
    assert "winner_state" not in report


def test_probe_leaves_the_backbone_as_it_was(backbone, data):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    classifier = backbone.classifier
    run_probe(backbone, data, warm_start=True)
    after = backbone.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert backbone.classifier is classifier  # not swapped for the SCL head
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in backbone.model.modules())


def test_probe_gives_the_same_figures_without_the_cache(backbone, data):
    cached = run_probe(backbone, data)
    plain = run_probe(backbone, data, cache_max_mb=0.0)
    assert cached.cache["used"] and not plain.cache["used"]
    assert plain.winner == cached.winner
    for a, b in zip(cached.candidates, plain.candidates, strict=True):
        assert a.steps == b.steps
        assert math.isclose(a.nc1_after, b.nc1_after, rel_tol=1e-3)


def test_the_winner_state_continues_in_a_fresh_scl_model(backbone, data):
    result = run_probe(backbone, data)
    model = apply_strategy(copy.deepcopy(backbone), "scl", K, layers=[result.winner]).tuned
    _, unexpected = model.load_state_dict(result.winner_state, strict=False)
    assert not unexpected and any(k.startswith("head.") for k in result.winner_state)
    source = as_source(data, 8, torch.device("cpu"))
    nc1 = measure(model, source, K).nc1
    assert math.isclose(nc1, result.candidate(result.winner).nc1_after, rel_tol=1e-4)


def candidate(block, rank, nc1, acc=None):
    return ProbeCandidate(block, rank, 5, 0.0, 1e-3, 1.0, nc1, acc, 0.5)


def test_validation_decides_only_when_it_can_rank():
    cands = [candidate("a", 0, 0.5, 0.80), candidate("b", 1, 0.3, 0.70)]
    small = _choose(cands, val_samples=30, num_classes=3)
    assert small[0].block == "b" and small[1] == "nc1_after" and "too small" in small[2]
    big = _choose(cands, val_samples=MIN_VAL_PER_CLASS * 3, num_classes=3)
    assert big[0].block == "a" and big[1] == "val_accuracy" and "a has the best" in big[2]
    # within one standard error of the best accuracy, the lower NC1 after wins
    close = [candidate("a", 0, 0.5, 0.80), candidate("b", 1, 0.3, 0.79)]
    winner, criterion, why = _choose(close, val_samples=200, num_classes=3)
    assert winner.block == "b" and criterion == "val_accuracy" and "standard error" in why
    # nothing defined: the rule's own pick
    undefined = [candidate("a", 0, None), candidate("b", 1, None)]
    assert _choose(undefined, 0, 3)[0].block == "a"


def test_rank_blocks_starts_with_the_rules_pick():
    prof = profile([10, 8, 5, 4.8, 4.7])
    for rule in ("knee", "last", "min_nc1"):
        ranked = rank_blocks(prof, rule, k=3)
        assert ranked[0] == select_layers(prof, rule).layers[0]
        assert len(ranked) == len(set(ranked)) == 3
    assert rank_blocks(prof, "last", k=3) == ["blocks.4", "blocks.3", "blocks.2"]
    assert rank_blocks(prof, "min_nc1", k=2) == ["blocks.4", "blocks.3"]
    assert rank_blocks(prof, "knee", k=9) == [f"blocks.{i}" for i in (2, 3, 4, 1, 0)]
    with pytest.raises(ValueError):
        rank_blocks(prof, "knee", k=0)


# ------------------------------------------------------------------ the range test
def scl(backbone, block="layer3.0"):
    torch.manual_seed(0)
    return apply_strategy(copy.deepcopy(backbone), "scl", K, layers=[block]).tuned


def test_lr_range_test_picks_inside_its_range_deterministically(backbone, data, count_steps):
    model = scl(backbone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = as_source(data, 8, torch.device("cpu"), seed=1)
    first = lr_range_test(model, source, steps=12, lr_min=1e-4, lr_max=0.5, seed=2)
    second = lr_range_test(model, source, steps=12, lr_min=1e-4, lr_max=0.5, seed=2)
    assert without_seconds(first.to_dict()) == without_seconds(second.to_dict())
    assert 1e-4 <= first.lr <= 0.5 and SANE_LR[0] <= first.lr <= SANE_LR[1]
    assert first.steps <= 12 and count_steps()["AdamW"] == first.steps + second.steps
    assert len(first.lrs) == len(first.losses) == len(first.smoothed) == first.steps
    assert first.lrs == sorted(first.lrs) and first.why
    json.dumps(first.to_dict(), allow_nan=False)
    after = model.state_dict()  # the test trains a copy of nothing: it restores the model
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError):
        lr_range_test(model, source, steps=1)


# ------------------------------------------------------------------ the warm start
def test_warm_started_head_has_lower_training_loss(backbone, data):
    model = scl(backbone)
    source = as_source(data, 8, torch.device("cpu"))
    fresh = measure(model, source, K).loss
    init = warm_start_head(model, source, K)
    assert math.isclose(init.loss_before, fresh, rel_tol=1e-6)
    assert measure(model, source, K).loss == fresh  # nothing changes until it is loaded
    init.load_into(model.head)
    warm = measure(model, source, K).loss
    assert warm < fresh and math.isclose(warm, init.loss_after, rel_tol=1e-3, abs_tol=1e-5)
    assert init.iterations >= 1 and init.to_dict()["num_samples"] == len(data)


def test_linear_head_fit_is_deterministic_and_exact_on_separable_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(25)
    h = 100.0 + 50.0 * torch.randn(100, 6, generator=gen)  # far off-centre, badly scaled
    h[torch.arange(100), y] += 400.0
    a = fit_linear_head(h, y, 4)
    b = fit_linear_head(h, y, 4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.accuracy == 1.0 and a.loss_after < 0.05
    head = torch.nn.Linear(6, 4)
    a.load_into(head)
    assert torch.equal((head(h)).argmax(1), y)
    with pytest.raises(ValueError):
        a.load_into(torch.nn.Linear(5, 4))
