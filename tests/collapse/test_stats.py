"""CollapseStats against the naive float64 numpy reference (DESIGN §2)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from nctune.collapse import CollapseError, CollapseStats, CollapseWarning
from tests import fresh_imports
from tests.collapse.reference import reference_metrics

METRICS = (
    "nc1",
    "trace_ratio",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangle",
    "within_trace",
    "between_trace",
)


def make_case(
    seed: int,
    n: int,
    d: int,
    k: int,
    *,
    imbalanced: bool = False,
    offset: float = 0.0,
    spread: float = 3.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes around random centres; every class gets at least one sample."""
    g = torch.Generator().manual_seed(seed)
    if imbalanced:
        weights = torch.linspace(1.0, 10.0, k)
        labels = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=g)
    else:
        labels = torch.randint(0, k, (n,), generator=g)
    labels[:k] = torch.arange(k)  # no empty class unless a test wants one
    centres = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    scales = 0.5 + torch.rand(k, 1, generator=g, dtype=torch.float64)
    x = centres[labels] + scales[labels] * torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x + offset).to(dtype), labels


def assert_close(metrics, ref: dict[str, float], rtol: float) -> None:
    for name in METRICS:
        got, want = getattr(metrics, name), ref[name]
        # abs_tol only matters for quantities that are exactly 0 in theory (NC2 at K = 2).
        assert math.isclose(got, want, rel_tol=rtol, abs_tol=1e-12), f"{name}: {got} vs {want}"


def stream(x, y, k, batch, *, mode="auto", order=None):
    stats = CollapseStats(k, mode=mode)
    idx = torch.arange(len(y)) if order is None else order
    passes = 2 if stats.mode == "two_pass" or mode == "two_pass" else 1
    for p in range(passes):
        for i in range(0, len(idx), batch):
            j = idx[i : i + batch]
            stats.update(x[j], y[j])
        if p == 0 and stats.needs_another_pass:
            stats.next_pass()
    return stats.compute()


CASES = {
    "balanced": dict(n=600, d=32, k=6),
    "imbalanced": dict(n=500, d=24, k=5, imbalanced=True),
    "d_gt_n": dict(n=40, d=100, k=4),
    "d_lt_k": dict(n=300, d=5, k=10),
    "two_classes": dict(n=200, d=16, k=2),
    "many_classes": dict(n=2000, d=64, k=50, imbalanced=True),
    "tight_clusters": dict(n=400, d=20, k=8, spread=50.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["full", "two_pass"])
def test_matches_numpy_reference(name, seed, mode):
    x, y = make_case(seed, **CASES[name])
    ref = reference_metrics(x.double().numpy(), y.numpy())
    got = stream(x, y, CASES[name]["k"], batch=37, mode=mode)
    assert_close(got, ref, rtol=1e-6)
    assert got.num_samples == len(y) and got.dim == x.shape[1] and got.mode == mode


def test_large_common_offset_float32():
    # A common offset of 1e3 on float32 features: without the shift the float64 sums
    # would lose ~6 digits to cancellation; with it the result stays exact.
    x, y = make_case(3, n=800, d=48, k=7, offset=1e3)
    ref = reference_metrics(x.double().numpy(), y.numpy())
    assert_close(stream(x, y, 7, batch=50), ref, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    # The engine upcasts each batch to float64 exactly, so the reference (computed on the
    # same half-precision values) is matched to full precision: no looser tolerance needed.
    x, y = make_case(4, n=500, d=16, k=5, dtype=dtype)
    ref = reference_metrics(x.double().numpy(), y.numpy())
    assert_close(stream(x, y, 5, batch=64), ref, rtol=1e-6)


def test_invariant_to_batch_size_order_and_merging():
    x, y = make_case(5, n=503, d=20, k=6, imbalanced=True)
    base = stream(x, y, 6, batch=len(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    for other in (stream(x, y, 6, batch=1), stream(x, y, 6, batch=17, order=perm)):
        for name in METRICS:
            assert math.isclose(getattr(other, name), getattr(base, name), rel_tol=1e-9)
    # Partial states with different shifts (each its own first-batch mean) merge exactly.
    parts = [CollapseStats(6) for _ in range(3)]
    for i, chunk in enumerate(torch.tensor_split(perm, 3)):
        parts[i].update(x[chunk] + 0.0, y[chunk])
    merged = CollapseStats(6).merge(parts[2]).merge(parts[0]).merge(parts[1]).compute()
    for name in METRICS:
        assert math.isclose(getattr(merged, name), getattr(base, name), rel_tol=1e-9), name
    torch.testing.assert_close(merged.class_means, base.class_means, rtol=1e-12, atol=1e-12)


def test_two_pass_merge_and_auto_mode():
    x, y = make_case(6, n=300, d=40, k=5)
    auto = CollapseStats(5, max_full_dim=32)
    assert auto.mode == "auto"
    a, b = CollapseStats(5, mode="two_pass"), CollapseStats(5, mode="two_pass")
    a.update(x[:150], y[:150])
    b.update(x[150:], y[150:])
    a.merge(b)
    a.next_pass()
    b2 = CollapseStats(5, mode="two_pass")
    b2._copy_from(a)  # both halves continue from the same merged first pass
    a.update(x[:150], y[:150])
    b2._proj_sq.zero_()
    b2._pass2_counts.zero_()
    b2.update(x[150:], y[150:])
    a.merge(b2)
    ref = reference_metrics(x.double().numpy(), y.numpy())
    assert_close(a.compute(), ref, rtol=1e-6)
    auto.update(x, y)
    assert auto.mode == "two_pass" and auto.needs_another_pass


def test_class_means_and_counts_exposed():
    x, y = make_case(7, n=200, d=8, k=4, offset=10.0)
    m = CollapseStats(4).update(x, y).compute()
    want = torch.stack([x[y == c].double().mean(0) for c in range(4)])
    torch.testing.assert_close(m.class_means, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.global_mean, x.double().mean(0), rtol=1e-10, atol=1e-10)
    assert m.class_counts.tolist() == [int((y == c).sum()) for c in range(4)]
    assert set(m.to_dict()) >= {"nc1", "trace_ratio", "cdnv", "num_samples", "dim", "mode"}


# ----------------------------------------------------------------- defined behaviour
def test_empty_class_is_left_out_with_warning():
    x, y = make_case(8, n=300, d=10, k=4)
    y = torch.where(y == 2, torch.tensor(3), y)  # class 2 now has no samples
    with pytest.warns(CollapseWarning, match="2 of 5 classes .*: 2, 4"):
        m = CollapseStats(5).update(x, y).compute()  # K=5 declared: 2 and 4 are empty
    keep = y != 2
    ref = reference_metrics(x[keep].double().numpy(), y[keep].numpy())
    assert m.num_classes == 3
    assert m.classes.tolist() == sorted(set(y.tolist()))
    assert_close(m, ref, rtol=1e-6)


def test_fewer_than_two_classes_is_an_error():
    x = torch.randn(20, 4)
    with pytest.raises(CollapseError, match="at least two classes"):
        CollapseStats(3).update(x, torch.zeros(20, dtype=torch.long)).compute()
    with pytest.raises(CollapseError, match="num_classes must be at least 2"):
        CollapseStats(1)
    with pytest.raises(CollapseError, match="no samples"):
        CollapseStats(3).compute()


@pytest.mark.parametrize(
    "features, labels, match",
    [
        (
            torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
            torch.tensor([0, 1]),
            "batch 1: .*NaN or Inf",
        ),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), torch.tensor([0, 1]), "NaN or Inf"),
        (torch.ones(2, 2), torch.tensor([0, 3]), "label 3 is outside \\[0, 3\\)"),
        (torch.ones(2, 2), torch.tensor([-1, 0]), "label -1"),
        (torch.ones(2, 5), torch.tensor([0, 1]), "width changed from 2 to 5"),
        (torch.ones(2), torch.tensor([0, 1]), "must be \\(B, D\\)"),
        (torch.ones(2, 2), torch.tensor([0.0, 1.0]), "must be integers"),
        (torch.ones(3, 2), torch.tensor([0, 1]), "labels must be \\(B,\\)"),
    ],
)
def test_bad_batch_is_rejected_and_state_kept(features, labels, match):
    x, y = make_case(9, n=100, d=2, k=3)
    stats = CollapseStats(3).update(x, y)
    before = stats.compute()
    with pytest.raises(CollapseError, match=match):
        stats.update(features, labels)
    after = stats.compute()
    assert after.num_samples == before.num_samples
    assert after.nc1 == before.nc1 and after.cdnv == before.cdnv


def test_two_pass_misuse_is_reported():
    x, y = make_case(10, n=100, d=6, k=3)
    stats = CollapseStats(3, mode="two_pass").update(x, y)
    with pytest.raises(CollapseError, match="next_pass"):
        stats.compute()
    stats.next_pass()
    stats.update(x[:50], y[:50])
    with pytest.raises(CollapseError, match="second pass saw different samples"):
        stats.compute()
    with pytest.raises(CollapseError, match="only used in two_pass"):
        CollapseStats(3, mode="full").update(x, y).next_pass()


def test_reset_and_repr():
    x, y = make_case(11, n=60, d=3, k=3)
    stats = CollapseStats(3).update(x, y)
    assert "num_samples=60" in repr(stats)
    stats.reset()
    assert stats.num_samples == 0 and stats.dim is None
    stats.update(x[:, :2], y)  # a new width is fine after reset
    assert stats.dim == 2


def test_no_warning_when_all_classes_present():
    x, y = make_case(12, n=90, d=4, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CollapseStats(3).update(x, y).compute()


def test_collapsed_features_give_small_nc1():
    # Sanity of direction: shrinking within-class noise lowers NC1 quadratically.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g)
    y = torch.arange(500) % 5
    noise = torch.randn(500, 16, generator=g)
    for c in range(5):  # zero-mean noise per class keeps the class means fixed
        noise[y == c] -= noise[y == c].mean(0)
    loose = CollapseStats(5).update(centres[y] + noise, y).compute().nc1
    tight = CollapseStats(5).update(centres[y] + 0.1 * noise, y).compute().nc1
    assert tight == pytest.approx(loose / 100, rel=1e-6)


@fresh_imports.group
def test_collapse_package_imports_no_model_code():
    assert fresh_imports.probe()["collapse"] == []  # no timm, torchvision, rich, matplotlib


def test_numpy_reference_agrees_with_sklearn_free_brute_force():
    # Guard the guard: the reference's NC1 equals tr(Σ_W pinv(Σ_B))/K with numpy's pinv.
    x, y = make_case(13, n=120, d=6, k=4)
    h, lab = x.double().numpy(), y.numpy()
    means = np.stack([h[lab == c].mean(0) for c in range(4)])
    r = h - means[lab]
    sw = r.T @ r / len(h)
    mc = means - h.mean(0)
    sb = mc.T @ mc / 4
    nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / 4
    assert reference_metrics(h, lab)["nc1"] == pytest.approx(nc1, rel=1e-8)


def test_state_dict_round_trip_continues_exactly(tmp_path):
    x, y = make_case(14, n=300, d=9, k=4, offset=5.0)
    full = CollapseStats(4).update(x, y).compute()
    a = CollapseStats(4).update(x[:120], y[:120])
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = CollapseStats(4)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    b.update(x[120:], y[120:])
    assert b.compute().nc1 == pytest.approx(full.nc1, rel=1e-12)
    with pytest.raises(CollapseError, match="K=4"):
        CollapseStats(5).load_state_dict(a.state_dict())


def test_state_built_in_inference_mode_keeps_working_outside_it():
    x, y = make_case(5, n=120, d=6, k=3)
    with torch.inference_mode():  # an eval loop
        a = CollapseStats(3).update(x[:60], y[:60])
    a.update(x[60:90], y[60:90])  # outside: in-place updates of the state must still work
    b = CollapseStats(3).update(x[90:], y[90:])
    with torch.inference_mode():
        a.merge(b)
    ref = CollapseStats(3).update(x, y).compute()
    assert a.compute().nc1 == pytest.approx(ref.nc1, rel=1e-12)


def test_merge_into_a_fresh_auto_state_checks_the_mode_it_would_use():
    x, y = make_case(6, n=40, d=3, k=2)
    full = CollapseStats(2, mode="full").update(x, y)
    with pytest.raises(CollapseError, match="cannot merge a full state into a two_pass"):
        CollapseStats(2, max_full_dim=2).merge(full)  # D=3 > 2: this state would use two passes
    merged = CollapseStats(2).merge(full)  # D=3 <= 4096: full, like the source
    assert merged.mode == "full" and merged.compute().nc1 == pytest.approx(full.compute().nc1)
