"""Selection rules on hand-made profiles."""

from __future__ import annotations

import pytest
import torch

from nctune.analyze import PRE_LOGITS, CollapseProfile, LayerCollapse
from nctune.collapse import CollapseMetrics
from nctune.errors import ConfigError
from nctune.selection import DEFAULT_RULE, Selection, list_rules, register_rule, select_layers


def fake_metrics(nc1: float) -> CollapseMetrics:
    z = torch.zeros(2)
    return CollapseMetrics(nc1, 1.0, 1.0, 0.0, 0.0, 10, 2, 2, 1.0, 1.0, z, z, torch.zeros(2, 2), z)


def profile(
    nc1s: list[float], ncc: list[float | None] | None = None, pre_logits: bool = True
) -> CollapseProfile:
    ncc = ncc or [None] * len(nc1s)
    layers = [
        LayerCollapse(i, f"blocks.{i}", 8, fake_metrics(v), a)
        for i, (v, a) in enumerate(zip(nc1s, ncc, strict=True))
    ]
    if pre_logits:  # never selectable, even when it looks best
        layers.append(
            LayerCollapse(len(layers), PRE_LOGITS, 8, fake_metrics(1e-9), 1.0, tunable=False)
        )
    return CollapseProfile(layers, 10, 2, 0.1)


def test_rules_registered():
    assert {"last", "knee", "min_nc1", "max_ncc"} <= set(list_rules())
    assert DEFAULT_RULE in list_rules()


def test_last():
    assert select_layers(profile([5, 4, 3]), "last").layers == ["blocks.2"]


@pytest.mark.parametrize(
    "nc1s, threshold, want",
    [
        ([10, 5, 2.5, 2.4, 2.39], 0.1, "blocks.2"),  # falls by 50 %, 50 %, then ~4 %, ~0.4 %
        ([10, 5, 2.5, 2.4, 2.39], 0.03, "blocks.3"),  # a lower bar counts the 4 % step too
        ([10, 9.5, 9.4], 0.1, "blocks.2"),  # never falls much: the deepest block
        ([10, 5, 6, 2, 2.1], 0.1, "blocks.3"),  # non-monotone: the last significant fall
        ([0.0, 0.0, 0.0], 0.1, "blocks.2"),  # one sample per class: NC1 is 0, no division
        ([4.0, 0.0, 0.0], 0.1, "blocks.1"),  # fully collapsed after blocks.1
    ],
)
def test_knee(nc1s, threshold, want):
    sel = select_layers(profile(nc1s), "knee", threshold=threshold)
    assert sel.layers == [want] and sel.rule == "knee" and sel.reason


def test_min_nc1_ignores_pre_logits():
    assert select_layers(profile([5, 1, 3]), "min_nc1").layers == ["blocks.1"]


def test_max_ncc_prefers_deeper_on_ties():
    p = profile([5, 4, 3, 2], ncc=[0.5, 0.8, 0.8, 0.7])
    assert select_layers(p, "max_ncc").layers == ["blocks.2"]
    with pytest.raises(ConfigError, match="validation split"):
        select_layers(profile([5, 4]), "max_ncc")


def test_bad_rule_and_params_are_config_errors():
    with pytest.raises(ConfigError, match="unknown rule 'kne'.*knee"):
        select_layers(profile([2, 1]), "kne")
    with pytest.raises(ConfigError, match="bad parameters"):
        select_layers(profile([2, 1]), "last", threshold=0.2)
    with pytest.raises(ConfigError, match="threshold"):
        select_layers(profile([2, 1]), "knee", threshold=1.5)


def test_custom_rule_can_be_registered():
    @register_rule("first_test_only")
    def first(blocks):
        return Selection("first_test_only", [blocks[0].name], "first")

    assert select_layers(profile([3, 2]), "first_test_only").layers == ["blocks.0"]
    assert select_layers(profile([3, 2]), "first_test_only").to_dict()["rule"] == "first_test_only"


def test_default_rule_is_the_evidence_choice():
    from nctune.selection import resolve_rule

    assert resolve_rule() == DEFAULT_RULE == "knee"  # docs/evidence.md says why
    assert resolve_rule("last") == "last"
    assert select_layers(profile([10, 5, 2.5, 2.4, 2.39])).rule == "knee"
