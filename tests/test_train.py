"""The training loop: schedule, sampler, prefix cache equivalence, checkpoints and resume."""

from __future__ import annotations

import errno
import math

import pytest
import torch

from nctune.config import load_recipe
from nctune.errors import ArtifactError, Interrupted
from nctune.finetune import prepare
from nctune.training.callbacks import LambdaCallback
from nctune.training.checkpoint import CHECKPOINT, load_checkpoint
from nctune.training.strategies import apply_strategy
from nctune.training.train import fit
from tests.tiny import tiny

TINY = tiny(
    "data.samples_per_class=12",
    "data.max_test_samples=50",
    "train.epochs=3",
    "train.lr=0.01",
    "train.warmup_epochs=0.5",
)


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


def test_without_validation_the_last_epoch_is_kept():
    result, _ = run(no_val=True)
    assert result.best_epoch == 3 and result.best_val_accuracy is None
    assert [h.val_accuracy for h in result.history] == [None, None, None]


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
    assert load_checkpoint(tmp_path / "a").epoch == 3

    spe = steps_per_epoch()
    calls = {"n": 0, "training": False}

    def progress(phase, *args, **kwargs):  # the caching passes poll too: count epochs only
        calls["training"] = phase.startswith("epoch")

    def mid_epoch_2():  # polled after every step and once more at the end of each epoch
        calls["n"] += calls["training"]
        return calls["n"] >= spe + 1 + 2  # epoch 2, after its second step (sticky, like a signal)

    hooks = LambdaCallback(should_stop=mid_epoch_2, on_progress=progress)
    first = run(run_dir=tmp_path / "b", callbacks=hooks, **kw)
    assert first[0].interrupted and len(first[0].history) == 1
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt.epoch == 1 and ckpt.step == 2
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
        run_dir=tmp_path / "b",
        overrides=["train.cache_prefix=off"],
        callbacks=LambdaCallback(should_stop=at_boundary),
    )
    assert first[0].interrupted and load_checkpoint(tmp_path / "b").step == 0
    resumed = run(run_dir=tmp_path / "b", resume=True, overrides=["train.cache_prefix=off"])
    assert_same_run(full, resumed)


def test_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    run(run_dir=tmp_path, overrides=["train.epochs=1"])
    good = (tmp_path / CHECKPOINT).read_bytes()
    import nctune.runs._io as io

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", disk_full)
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


def test_epoch_hook_sees_every_epoch_and_can_stop_the_run(tmp_path):
    seen = []

    class Stop(Exception):
        pass

    def hook(history):
        stats = history[-1]
        seen.append((stats.epoch, stats.val_accuracy))
        if stats.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run(
            "scl",
            ("layer3.0",),
            overrides=["train.cache_prefix=disk"],
            callbacks=LambdaCallback(on_epoch_end=hook),
            run_dir=tmp_path,
        )
    assert [e for e, _ in seen] == [1, 2] and all(v is not None for _, v in seen)
    assert list(tmp_path.glob("nctune-prefix-*")) == []  # the caches were closed


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_a_stop_while_caching_leaves_no_cache_behind(tmp_path, where):
    polled = []

    def stop_on_third_batch() -> bool:
        polled.append(1)
        return len(polled) >= 3

    with pytest.raises(Interrupted, match="caching"):
        run(
            overrides=[f"train.cache_prefix={where}", "train.epochs=1"],
            run_dir=tmp_path,
            callbacks=LambdaCallback(should_stop=stop_on_third_batch),
        )
    assert len(polled) == 3
    assert list(tmp_path.iterdir()) == []  # no cache folder, no checkpoint


def test_on_epoch_end_sees_the_growing_history_and_every_pass_has_a_total():
    seen, calls = [], []
    result, _ = run(
        overrides=["train.epochs=2"],
        callbacks=LambdaCallback(
            on_epoch_end=lambda h: seen.append(len(h)),
            on_progress=lambda phase, done, total, info="": calls.append((phase, done, total)),
        ),
    )
    assert seen == [1, 2] and len(result.history) == 2
    phases = list(dict.fromkeys(c[0] for c in calls))
    assert phases == [
        "caching frozen prefix",
        "caching frozen prefix (val)",
        "epoch 1/2",
        "epoch 1/2 validation",
        "epoch 2/2",
        "epoch 2/2 validation",
    ]
    for phase in phases:  # a total from the start (no "0/?"), and the pass reaches it
        mine = [c for c in calls if c[0] == phase]
        assert mine[0][1] == 0 and all(c[2] for c in mine) and mine[-1][1] == mine[-1][2], mine
