"""The frozen-prefix cache: same run as without it, on CNNs and ViTs, in memory and on disk,
and shared across runs (a search's trials) under a content key, verified before reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nctune.training.callbacks import LambdaCallback
from nctune.training.prefix_cache import PrefixCache
from tests.test_train import assert_same_run, run


@pytest.mark.parametrize(
    "strategy, layers, expect_cut",
    [
        ("linear", None, "head"),
        ("scl", ("layer3.0",), "backbone.layer3.0"),
        ("layers", ("layer2.0", "layer4.0"), "backbone.layer2.0"),
    ],
)
def test_prefix_cache_gives_the_same_run_as_no_cache(strategy, layers, expect_cut):
    cached = run(strategy, layers)
    assert cached[0].cache.used and cached[0].cache.cut == expect_cut
    plain = run(strategy, layers, overrides=["train.cache_prefix=off"])
    assert not plain[0].cache.used
    assert_same_run(cached, plain, exact=False)


def test_prefix_cache_on_vit_and_disk():
    vit = ["backbone.name=timm:test_vit", "backbone.model_kwargs={img_size: 32}"]
    cached = run(
        "scl", ("blocks.3",), overrides=[*vit, "train.cache_prefix=disk", "train.epochs=2"]
    )
    assert cached[0].cache.used and cached[0].cache.where == "disk"
    plain = run("scl", ("blocks.3",), overrides=[*vit, "train.cache_prefix=off", "train.epochs=2"])
    assert_same_run(cached, plain, exact=False)


def test_disk_caches_live_until_the_run_ends_and_stale_ones_go(tmp_path, monkeypatch):
    built, missing = [], []
    real = PrefixCache.build.__func__

    def spy(cls, *args, **kwargs):
        cache, info = real(cls, *args, **kwargs)
        if cache is not None:
            built.append(Path(cache._tmpdir))
        return cache, info

    def progress(phase, done, total, info=""):
        if phase.startswith("epoch"):  # every training step: both caches still on disk
            missing.extend(d for d in built if not d.exists())

    monkeypatch.setattr(PrefixCache, "build", classmethod(spy))
    stale = tmp_path / "nctune-prefix-from-a-killed-run"
    stale.mkdir()
    result, _ = run(
        overrides=["train.cache_prefix=disk", "train.epochs=1"],
        run_dir=tmp_path,
        callbacks=LambdaCallback(on_progress=progress),
    )
    assert result.cache.where == "disk" and len(built) == 2  # train and validation
    assert missing == [] and not stale.exists()
    assert list(tmp_path.glob("nctune-prefix-*")) == []  # closed when the run ended


def test_cache_refused_when_prefix_trains_or_data_is_augmented():
    full, _ = run("full", None, overrides=["train.epochs=1"])
    assert not full.cache.used
    aug, _ = run(
        "scl", ("layer3.0",), overrides=["train.epochs=1", "data.augment=true"], augment=True
    )
    assert not aug.cache.used and "augment" in aug.cache.reason


def test_shared_cache_is_written_once_then_read_and_trains_the_same(tmp_path):
    shared = tmp_path / "shared"
    first = run("scl", ("layer3.0",), overrides=["train.epochs=1"], shared_cache_dir=shared)
    assert first[0].cache.used and first[0].cache.shared == "written"
    entries = sorted(p.name for p in shared.iterdir())
    assert len(entries) == 2  # train and validation inputs, each under its content key
    second = run("scl", ("layer3.0",), overrides=["train.epochs=1"], shared_cache_dir=shared)
    assert (
        second[0].cache.shared == "read" and "read from the shared cache" in second[0].cache.reason
    )
    assert sorted(p.name for p in shared.iterdir()) == entries  # nothing recomputed
    plain = run("scl", ("layer3.0",), overrides=["train.epochs=1", "train.cache_prefix=off"])
    assert_same_run(second, plain, exact=False)
    # another block is another key
    other = run("scl", ("layer4.0",), overrides=["train.epochs=1"], shared_cache_dir=shared)
    assert other[0].cache.shared == "written" and len(list(shared.iterdir())) == 4


@pytest.mark.parametrize("row", ["first", "last"])
def test_a_tampered_shared_cache_is_not_used(tmp_path, row):
    shared = tmp_path / "shared"
    run("linear", None, overrides=["train.epochs=1"], shared_cache_dir=shared)
    for entry in shared.iterdir():  # corrupt what the reader verifies
        inputs = np.load(entry / "prefix.npy", mmap_mode="r+")
        inputs[0 if row == "first" else -1] += 1.0
        inputs.flush()
    again = run("linear", None, overrides=["train.epochs=1"], shared_cache_dir=shared)
    assert again[0].cache.used and again[0].cache.shared == "written"  # recomputed, replaced
    third = run("linear", None, overrides=["train.epochs=1"], shared_cache_dir=shared)
    assert third[0].cache.shared == "read"
