"""Result types: what a reader sees when printing them."""

from __future__ import annotations

from types import SimpleNamespace

from nctune.profile import LayerCollapse


def test_layer_collapse_repr_shows_nc1():
    layer = LayerCollapse(3, "layer3.1", 256, SimpleNamespace(nc1=1.234567), 0.75)
    text = repr(layer)
    assert "name='layer3.1'" in text and "nc1=1.235" in text and "ncc_accuracy=0.75" in text
    assert "metrics" not in text  # the long metrics object stays out
    assert "ncc_accuracy=None" in repr(
        LayerCollapse(0, "pre_logits", 8, layer.metrics, None, False)
    )
