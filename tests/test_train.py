"""The training loop: schedule, sampler, prefix cache equivalence, checkpoints and resume."""

from __future__ import annotations

import errno
import itertools
import math
from pathlib import Path

import pytest
import torch

from nctune.config import TrainConfig, load_recipe
from nctune.errors import ArtifactError
from nctune.finetune import prepare
from nctune.strategies import apply_strategy
from nctune.train import CHECKPOINT, EpochSampler, fit, load_checkpoint, lr_at

TINY = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=12",
    "data.max_test_samples=50",
    "data.val_fraction=0.03",
    "data.image_size=32",
    "data.batch_size=16",
    "train.epochs=3",
    "train.lr=0.01",
    "train.warmup_epochs=0.5",
]


def run(
    strategy="scl", layers=("layer3.0",), overrides=(), head_dropout=0.0, no_val=False, **fit_kw
):
    recipe = load_recipe(None, [*TINY, *overrides])
    backbone, splits, _, device = prepare(recipe)
    torch.manual_seed(recipe.seed)
    applied = apply_strategy(
        backbone,
        strategy,
        splits.num_classes,
        layers=list(layers) if layers else None,
        head_dropout=head_dropout,
    )
    result = fit(
        applied,
        splits.train,
        None if no_val else splits.val,
        recipe.train,
        num_classes=splits.num_classes,
        batch_size=recipe.data.batch_size,
        block_names=backbone.block_names,
        seed=recipe.seed,
        device=device,
        **fit_kw,
    )
    return result, applied


def steps_per_epoch() -> int:
    recipe = load_recipe(None, TINY)
    return math.ceil(len(prepare(recipe)[1].train) / recipe.data.batch_size)


def weights(applied):
    return {k: v.detach().clone() for k, v in applied.model.state_dict().items()}


def assert_same_run(a, b, exact: bool = True):
    """Same history and weights. ``exact=False`` allows float rounding (1e-5 relative): the
    cached prefix is computed in dataset order while the uncached one sees shuffled batches of
    other sizes, and CPU kernels may round a sample differently by batch shape."""
    (ra, aa), (rb, ab) = a, b
    wa, wb = weights(aa), weights(ab)
    tol = {} if exact else {"rel": 1e-5, "abs": 1e-7}
    assert [h.loss for h in ra.history] == pytest.approx([h.loss for h in rb.history], **tol)
    assert [h.val_accuracy for h in ra.history] == [h.val_accuracy for h in rb.history]
    assert [h.nc1 for h in ra.history] == pytest.approx(
        [h.nc1 for h in rb.history], rel=1e-5 if not exact else 1e-9
    )
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


# --------------------------------------------------------------------- pieces
def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, schedule="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, 10, cfg, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # monotone decay
    assert lrs[-1] > 0.1 - 1e-9
    const = TrainConfig(lr=1.0, schedule="constant")
    assert lr_at(50, 100, 0, const, 0.5) == 0.5


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    a = list(EpochSampler(50, seed=3, epoch=2))
    assert a == list(EpochSampler(50, seed=3, epoch=2))
    assert a != list(EpochSampler(50, seed=3, epoch=1))
    assert sorted(a) == list(range(50))
    assert list(EpochSampler(50, seed=3, epoch=2, start=20)) == a[20:]


# --------------------------------------------------------------- the loop
def test_fit_records_history_and_keeps_best_epoch():
    result, _ = run()
    assert len(result.history) == 3 and result.cache.used
    h = result.history[-1]
    assert 0.0 <= h.accuracy <= 1.0 and h.val_accuracy is not None and h.nc1 > 0
    best = max(range(3), key=lambda i: (result.history[i].val_accuracy, -i))
    assert result.best_epoch == best + 1
    assert result.best_val_accuracy == result.history[best].val_accuracy
    assert not result.interrupted and not result.stopped_early


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
    from nctune.prefix_cache import PrefixCache

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
        progress=progress,
    )
    assert result.cache.where == "disk" and len(built) == 2  # train and validation
    assert missing == [] and not stale.exists()
    assert list(tmp_path.glob("nctune-prefix-*")) == []  # closed when the run ended


def test_without_validation_the_last_epoch_is_kept():
    result, _ = run(no_val=True)
    assert result.best_epoch == 3 and result.best_val_accuracy is None
    assert [h.val_accuracy for h in result.history] == [None, None, None]


def test_cache_refused_when_prefix_trains_or_data_is_augmented():
    full, _ = run("full", None, overrides=["train.epochs=1"])
    assert not full.cache.used
    aug, _ = run(
        "scl", ("layer3.0",), overrides=["train.epochs=1", "data.augment=true"], augment=True
    )
    assert not aug.cache.used and "augment" in aug.cache.reason


def test_lp_ft_runs_probe_then_full_phase():
    result, applied = run(
        "lp-ft", None, overrides=["train.epochs=3", "strategy.probe_epochs=1"], probe_epochs=1
    )
    assert [h.phase for h in result.history] == ["probe", "full", "full"]
    assert applied.phase == "full"
    assert applied.trainable_params == applied.total_params


def test_early_stopping_stops_when_validation_stalls():
    # A learning rate this small cannot change the predictions: accuracy never improves.
    result, _ = run(
        "linear",
        None,
        overrides=[
            "train.lr=1e-12",
            "train.epochs=6",
            "train.early_stopping=2",
            "train.warmup_epochs=0",
        ],
    )
    assert result.stopped_early and len(result.history) == 3


# --------------------------------------------------------- checkpoints/resume
@pytest.mark.parametrize(
    "overrides, head_dropout",
    [((), 0.0), (("train.cache_prefix=off",), 0.5)],  # cached; uncached with random dropout
)
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, overrides, head_dropout):
    kw = {"overrides": overrides, "head_dropout": head_dropout}
    full = run(run_dir=tmp_path / "a", **kw)
    assert load_checkpoint(tmp_path / "a")["epoch"] == 3

    spe = steps_per_epoch()
    calls = {"n": 0}

    def mid_epoch_2():  # polled after every step and once more at the end of each epoch
        calls["n"] += 1
        return calls["n"] >= spe + 1 + 2  # epoch 2, after its second step (sticky, like a signal)

    first = run(run_dir=tmp_path / "b", should_stop=mid_epoch_2, **kw)
    assert first[0].interrupted and len(first[0].history) == 1
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2
    resumed = run(run_dir=tmp_path / "b", resume=True, **kw)
    assert not resumed[0].interrupted
    assert_same_run(full, resumed)


def test_resume_at_epoch_boundary_matches(tmp_path):
    full = run(run_dir=tmp_path / "a", overrides=["train.cache_prefix=off"])
    spe, stop = steps_per_epoch(), {"n": 0}

    def at_boundary():
        stop["n"] += 1
        return stop["n"] >= spe  # from the last step of epoch 1 on: stop after saving the epoch

    first = run(
        run_dir=tmp_path / "b", overrides=["train.cache_prefix=off"], should_stop=at_boundary
    )
    assert first[0].interrupted and load_checkpoint(tmp_path / "b")["step"] == 0
    resumed = run(run_dir=tmp_path / "b", resume=True, overrides=["train.cache_prefix=off"])
    assert_same_run(full, resumed)


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    run(run_dir=tmp_path, overrides=["train.epochs=1"])
    good = (tmp_path / CHECKPOINT).read_bytes()
    import nctune.artifacts as artifacts

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "replace", disk_full)
    with pytest.raises(ArtifactError, match="No space left on device"):
        run(run_dir=tmp_path, overrides=["train.epochs=1"])
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary left behind


def test_unreadable_checkpoint_is_an_artifact_error(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)


def test_fit_leaves_torch_global_flags_as_it_found_them():
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # what a user's own training code may have set
    try:
        run(overrides=["train.epochs=1", "train.deterministic=true"])
        assert torch.backends.cudnn.benchmark is True
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark = saved


def test_tokens_and_position_embeddings_get_no_weight_decay():
    from nctune.train import make_optimizer, no_weight_decay_ids

    recipe = load_recipe(
        None, [*TINY, "backbone.name=timm:test_vit", "backbone.model_kwargs={img_size: 32}"]
    )
    backbone, splits, _, _ = prepare(recipe)
    applied = apply_strategy(backbone, "full", splits.num_classes)
    model = applied.model
    opt = make_optimizer(applied.parameters(), recipe.train, 1e-3, no_weight_decay_ids(model))
    decayed, kept = ({id(p) for p in g["params"]} for g in opt.param_groups)
    vit = model.backbone
    assert {id(vit.cls_token), id(vit.pos_embed)} <= kept
    assert id(vit.patch_embed.proj.weight) in decayed and id(model.head.weight) in decayed
    assert all(id(p) in kept for p in model.parameters() if p.ndim < 2)
    assert len(decayed) + len(kept) == len(applied.parameters())
