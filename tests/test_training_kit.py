"""The training kit (issue 23): each recipe field changes what it should, and nothing when off."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nctune.config import load_recipe
from nctune.data import build_data
from nctune.errors import ArtifactError, ConfigError
from nctune.finetune import finetune, prepare
from nctune.report import finetune_tables
from nctune.training import kit
from nctune.training.batches import ImageBatches
from nctune.training.callbacks import LambdaCallback
from nctune.training.checkpoint import CHECKPOINT, load_checkpoint
from nctune.training.evaluation import evaluate
from nctune.training.optim import EpochSampler, make_optimizer
from nctune.training.strategies import apply_strategy
from nctune.training.train import fit
from tests.tiny import tiny
from tests.torchrun_batch import ONE_LAUNCH

BASE = ("train.epochs=1", "train.warmup_epochs=0", "train.profile_after=false")


def setup(*overrides, strategy="linear", n_train=None):
    recipe = load_recipe(None, tiny(*BASE, *overrides))
    backbone, splits, _, _ = prepare(recipe)
    torch.manual_seed(recipe.seed)
    applied = apply_strategy(backbone, strategy, splits.num_classes)
    train = splits.train if n_train is None else splits.train.subset(np.arange(n_train))
    return recipe, backbone, splits, applied, train


def train(recipe, backbone, splits, applied, train_set, *, batch_size=None, **kw):
    return fit(
        applied,
        train_set,
        kw.pop("val_set", splits.val),
        recipe.train,
        num_classes=splits.num_classes,
        batch_size=batch_size or recipe.data.batch_size,
        block_names=backbone.block_names,
        seed=recipe.seed,
        random_erase=recipe.data.random_erase,
        balanced_sampler=recipe.data.balanced_sampler,
        **kw,
    )


def weights(applied):
    return {k: v.detach().clone() for k, v in applied.model.state_dict().items()}


# ------------------------------------------------------------------ recipe fields
def test_defaults_change_nothing_and_bad_values_name_their_field():
    r = load_recipe(None, [])
    assert (r.data.augment, r.data.random_erase, r.data.balanced_sampler) == (False, 0.0, False)
    t = r.train
    assert (t.accumulate_steps, t.ema, t.layer_decay, t.class_weights) == (1, False, None, None)
    assert (t.mixup, t.cutmix, t.amp) == (0.0, 0.0, True)
    ok = load_recipe(None, ["data.augment=rand-m9-mstd0.5", "train.amp=bf16", "data.augment=on"])
    assert ok.data.augment is True and ok.train.amp == "bf16"
    assert load_recipe(None, ["data.augment=augmix-m5-w4-d2"]).data.augment == "augmix-m5-w4-d2"
    assert load_recipe(None, ["data.augment=trivialaugment"]).data.augment == "trivialaugment"
    for bad, field in [
        ("data.augment=sometimes", "data.augment"),
        ("data.random_erase=1.5", "data.random_erase"),
        ("train.accumulate_steps=0", "train.accumulate_steps"),
        ("train.ema_decay=1", "train.ema_decay"),
        ("train.layer_decay=0", "train.layer_decay"),
        ("train.class_weights=inverse", "train.class_weights"),
        ("train.mixup=-1", "train.mixup"),
        ("train.amp=fp8", "train.amp"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_recipe(None, [bad])
        assert field in str(err.value) and "\n" not in str(err.value)


def test_augment_policy_strings_go_through_timm_and_repeat_for_a_seed():
    recipe = load_recipe(None, tiny("data.samples_per_class=2", "data.augment=rand-m9-mstd0.5"))
    backbone = prepare(recipe).backbone
    policy = build_data(recipe.data, backbone.input_config, seed=0).train
    light = build_data(
        recipe.data.model_copy(update={"augment": True}), backbone.input_config, seed=0
    ).train
    torch.manual_seed(3)
    a = torch.stack([policy[i][0] for i in range(6)])
    torch.manual_seed(3)
    b = torch.stack([policy[i][0] for i in range(6)])
    torch.manual_seed(3)
    c = torch.stack([light[i][0] for i in range(6)])
    assert torch.equal(a, b)  # Python's and NumPy's draws come from torch's seed
    assert not torch.equal(a, c)  # the policy ran after the crop and flip
    bad = recipe.data.model_copy(update={"augment": "rand-m9-zz1"})
    with pytest.raises(ConfigError, match="data.augment"):
        build_data(bad, backbone.input_config, seed=0)


# ------------------------------------------------------------ accumulation
def test_two_accumulated_batches_make_the_update_of_one_double_batch():
    # SGD without momentum: the update is lr·g, so a wrongly scaled gradient shows.
    o = ("train.optimizer=sgd", "train.momentum=0", "train.schedule=constant", "train.lr=0.5")
    first = setup(*o, n_train=32)
    train(*first, batch_size=32)
    second = setup(*o, "train.accumulate_steps=2", n_train=32)
    train(*second, batch_size=16)
    plain = setup(*o, n_train=32)
    train(*plain, batch_size=16)  # two updates of 16
    wa, wb, wc = weights(first[3]), weights(second[3]), weights(plain[3])
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


# ------------------------------------------------------------ class weights
def test_inverse_frequency_weights_and_the_weighted_loss_by_hand():
    y = torch.tensor([0, 0, 0, 1])
    w = kit.inverse_frequency(y.numpy(), 3)
    assert w.tolist() == pytest.approx([4 / (3 * 3), 4 / (3 * 1), 0.0])
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    ce = -F.log_softmax(logits, 1)[torch.arange(4), y]
    by_hand = float((w[y] * ce).sum() / 4)
    assert float(kit.kit_loss(logits, y, None, w, 0.0)) / 4 == pytest.approx(by_hand, rel=1e-6)
    plain = float(kit.kit_loss(logits, y, None, None, 0.0)) / 4
    assert plain == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert plain != pytest.approx(by_hand)


def test_class_weights_auto_weights_the_training_loss(tmp_path):
    o = ("train.lr=1e-9", "train.schedule=constant")
    # an imbalanced training set: the first 6 samples of class 0's rich split and all others
    base = setup(*o)
    targets = np.asarray(base[4].targets)
    keep = np.concatenate([np.flatnonzero(targets == 0), np.flatnonzero(targets != 0)[::4]])
    runs = {}
    for mode in ("null", "auto"):
        r, b, s, a, t = setup(*o, f"train.class_weights={mode}")
        subset = t.subset(keep)
        runs[mode] = train(r, b, s, a, subset, val_set=None).history[0].loss
        if mode == "auto":  # the same sum by hand: the head barely moves at lr 1e-9
            w = kit.inverse_frequency(subset.targets, s.num_classes)
            logits, y = [], []
            with torch.no_grad():
                for i in range(len(subset)):
                    x, label = subset[i]
                    logits.append(a.model.eval()(x[None]))
                    y.append(label)
            logits, y = torch.cat(logits), torch.tensor(y)
            ce = -F.log_softmax(logits, 1)[torch.arange(len(y)), y]
            assert runs["auto"] == pytest.approx(float((w[y] * ce).mean()), rel=1e-3)
    assert runs["auto"] != pytest.approx(runs["null"], rel=1e-3)


# ---------------------------------------------------------- balanced sampler
def test_the_balanced_sampler_draws_classes_about_equally_and_repeats_for_a_seed():
    targets = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = kit.balanced_weights(targets)
    drawn = np.concatenate([EpochSampler(100, 7, e, weights=w).order().numpy() for e in range(30)])
    share = np.bincount(targets[drawn], minlength=3) / drawn.size
    assert share == pytest.approx([1 / 3] * 3, abs=0.03)
    assert torch.equal(
        EpochSampler(100, 7, 2, weights=w).order(), EpochSampler(100, 7, 2, weights=w).order()
    )
    assert not torch.equal(
        EpochSampler(100, 7, 2, weights=w).order(), EpochSampler(100, 7, 3, weights=w).order()
    )
    # a resumed epoch skips what it trained: the rest of the same draws
    assert (
        list(EpochSampler(100, 7, 2, 40, w))
        == EpochSampler(100, 7, 2, weights=w).order()[40:].tolist()
    )


# ---------------------------------------------------------------- layer decay
def test_layer_decay_gives_earlier_blocks_smaller_learning_rates():
    recipe, backbone, _, applied, _ = setup("train.layer_decay=0.5", strategy="full")
    blocks = backbone.block_names
    scales = kit.layer_scales(applied.model, blocks, 0.5)
    opt = make_optimizer(applied.parameters(), recipe.train, 1.0, lr_scales=scales)
    named = {id(p): n for n, p in applied.model.named_parameters()}
    by_name = {named[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    first = next(v for n, v in by_name.items() if f".{blocks[0]}." in f".{n}.")
    last = next(v for n, v in by_name.items() if f".{blocks[-1]}." in f".{n}.")
    head = next(v for n, v in by_name.items() if n.startswith("head."))
    stem = next(v for n, v in by_name.items() if "conv1" in n and "layer" not in n)
    L = len(blocks)
    assert (stem, first, last, head) == (0.5 ** (L + 1), 0.5**L, 0.5, 1.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(applied.parameters())
    assert kit.layer_scales(applied.model, blocks, None) == {}


# ------------------------------------------------------------------------ EMA
def test_ema_weights_are_validated_kept_and_saved(tmp_path):
    o = ("train.ema=true", "train.ema_decay=0.5", "train.lr=0.05", "train.cache_prefix=off")
    recipe, backbone, splits, applied, t = setup(*o, strategy="full")
    result = train(recipe, backbone, splits, applied, t, run_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.ema is not None
    assert any(not torch.equal(ckpt.ema[k], ckpt.model[k]) for k in ckpt.model)  # differ
    for k, v in applied.model.state_dict().items():  # the kept (returned, saved) weights
        torch.testing.assert_close(v, ckpt.ema[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ckpt.best_state[k], ckpt.ema[k], rtol=0, atol=0, msg=k)
    val = ImageBatches(splits.val, recipe.data.batch_size, torch.device("cpu"))
    acc = evaluate(applied.model, val, torch.device("cpu"))[0]
    assert result.history[0].val_accuracy == acc


# ---------------------------------------------------- mixup, cutmix, erasing
def test_mixup_and_erasing_change_the_batch_and_turn_the_cache_off():
    batch = kit.BatchKit(4, mixup=0.4, cutmix=0.0, label_smoothing=0.1, random_erase=1.0)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    torch.manual_seed(0)
    xa, soft = batch(x, y)
    torch.manual_seed(0)
    xb, soft_b = batch(x, y)
    assert torch.equal(xa, xb) and torch.equal(soft, soft_b)  # seeded from torch
    assert not torch.equal(xa, x) and soft.shape == (5, 4)
    assert soft.sum(1).tolist() == pytest.approx([1.0] * 5)
    assert soft[4].tolist() == pytest.approx([0.925, 0.025, 0.025, 0.025])  # odd one: unmixed
    assert not kit.BatchKit(4).active
    erased, none = kit.BatchKit(4, random_erase=1.0)(x, y)  # erasing alone: hard labels
    assert none is None and all(not torch.equal(erased[i], x[i]) for i in range(5))
    assert torch.equal(kit.BatchKit(4, random_erase=1e-9)(x, y)[0], x)  # p ~ 0: untouched
    recipe, backbone, splits, applied, t = setup("train.mixup=0.2", "train.cutmix=1.0")
    result = train(recipe, backbone, splits, applied, t)
    assert not result.cache.used and "mixup" in result.cache.reason


# ------------------------------------------------------------- bf16 on CPU
@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("true", torch.float32)])
def test_bf16_autocast_runs_the_training_forward_in_bfloat16_on_cpu(amp, dtype):
    recipe, backbone, splits, applied, t = setup(
        f"train.amp={amp}", "train.cache_prefix=off", strategy="full", n_train=16
    )
    seen = []
    conv = next(m for m in applied.model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        train(recipe, backbone, splits, applied, t, val_set=None)
    finally:
        handle.remove()
    assert seen and seen[0] == dtype


def test_a_stop_waits_for_the_accumulated_update(tmp_path):
    recipe, backbone, splits, applied, t = setup(
        "train.accumulate_steps=2", "train.cache_prefix=off", n_train=48
    )
    stop = LambdaCallback(should_stop=lambda: True)  # asked after every batch
    result = train(
        recipe, backbone, splits, applied, t, batch_size=16, run_dir=tmp_path, callbacks=stop
    )
    assert result.interrupted and load_checkpoint(tmp_path).step == 2  # not mid-group (1)


# --------------------------------------------------------- time over resumes
LIGHT = ("data.samples_per_class=4", "train.profile_after=false")  # 3 steps an epoch


def test_a_resumed_run_reports_the_time_and_sessions_of_all_its_sessions(tmp_path):
    recipe = load_recipe(None, tiny("train.epochs=2", "strategy.name=linear", *LIGHT))
    polls = {"n": 0, "training": False}

    def progress(phase, *args, **kwargs):
        polls["training"] = phase.startswith("epoch")

    def after_epoch_1():  # asked after every step: stop in epoch 2 (3 steps an epoch)
        polls["n"] += polls["training"]
        return polls["n"] >= 5

    first = finetune(
        recipe,
        run_dir=tmp_path,
        callbacks=LambdaCallback(should_stop=after_epoch_1, on_progress=progress),
    )
    assert first.interrupted and first.sessions == 1 and first.cache["used"]
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt.epoch, ckpt.step) == (1, 1)  # mid-epoch 2
    saved = ckpt.clock
    assert saved.sessions == 1 and 0 < saved.train_seconds <= saved.total_seconds
    resumed = finetune(recipe, run_dir=tmp_path, resume=True)
    assert not resumed.interrupted and resumed.sessions == 2
    assert resumed.cache["used"], resumed.cache  # the resumed session reads the cache too
    assert resumed.total_seconds > saved.total_seconds
    assert resumed.cpu_seconds > saved.cpu_seconds
    assert resumed.wall_seconds > saved.train_seconds
    doc = resumed.to_dict()
    assert doc["sessions"] == 2 and doc["wall_seconds"] == resumed.wall_seconds
    cells = [str(c) for t in finetune_tables(resumed) for row, _ in t.rows for c in row]
    assert any("2 sessions" in c for c in cells)


def test_resuming_a_run_whose_epochs_had_all_finished_keeps_its_time_and_cache(tmp_path):
    # Ctrl-C in the pass after training leaves the last epoch's checkpoint: the resumed
    # session trains nothing, and must still report the whole run's time and its cache.
    recipe = load_recipe(None, tiny("train.epochs=1", "strategy.name=linear", *LIGHT))
    first = finetune(recipe, run_dir=tmp_path)
    t0, cpu0 = time.perf_counter(), time.process_time()
    resumed = finetune(recipe, run_dir=tmp_path, resume=True)
    this, this_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert first.cache["used"] and resumed.cache["used"]
    assert resumed.sessions == 2 and resumed.history == first.history
    assert resumed.wall_seconds > first.wall_seconds * 0.9
    # The totals hold more than this call alone took: the first session's time, as its
    # checkpoint kept it, is in them. (Not "> first.total_seconds": the passes after
    # training, which both sessions run, take about as long, so that is a coin toss.)
    assert resumed.total_seconds > this and resumed.cpu_seconds > this_cpu


# ------------------------------------------------------------------- torchrun
@pytest.mark.slow
@ONE_LAUNCH
def test_balanced_sampler_class_weights_and_accumulation_match_one_process_under_torchrun(
    tmp_path, tmp_path_factory
):
    from tests.test_distributed import _n_val, _report, assert_same_run, in_process
    from tests.torchrun_batch import KIT, sets, shared

    # the two ranks ran finetune with KIT in the one torchrun launch of tests/torchrun_batch.py
    two = shared(tmp_path_factory)["kit"]
    two.ok()
    in_process("finetune", *sets(*KIT), "--out", str(tmp_path / "one"))
    a, b = _report(tmp_path / "one"), _report(two.folder / "two")
    assert_same_run(a, b, _n_val())


def test_a_run_with_ema_mixup_and_erasing_resumes_to_the_same_weights(tmp_path):
    o = (
        "train.epochs=2",
        "train.ema=true",
        "train.ema_decay=0.9",
        "train.mixup=0.4",
        "train.cutmix=1.0",
        "data.random_erase=0.5",
        "train.lr=0.05",
    )
    full = setup(*o)
    train(*full, run_dir=tmp_path / "a")
    calls = {"n": 0}

    def mid_epoch():
        calls["n"] += 1
        return calls["n"] >= 3  # mid-epoch 1, after its third step (of 7)

    stopped = setup(*o)
    first = train(*stopped, run_dir=tmp_path / "b", callbacks=LambdaCallback(should_stop=mid_epoch))
    assert first.interrupted and load_checkpoint(tmp_path / "b").step == 3
    resumed = setup(*o)
    train(*resumed, run_dir=tmp_path / "b", resume=True)
    wa, wb = weights(full[3]), weights(resumed[3])
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    ea, eb = load_checkpoint(tmp_path / "a").ema, load_checkpoint(tmp_path / "b").ema
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=0, msg=k)


def test_a_checkpoint_whose_ema_does_not_fit_the_model_is_refused_in_one_line(tmp_path):
    o = ("train.ema=true", "train.cache_prefix=off")
    recipe, backbone, splits, applied, t = setup(*o, n_train=16)
    train(recipe, backbone, splits, applied, t, val_set=None, run_dir=tmp_path)
    doc = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    key = next(iter(doc["ema"]))
    doc["ema"][key] = torch.zeros(3)
    torch.save(doc, tmp_path / CHECKPOINT)
    with pytest.raises(ArtifactError, match=re.escape(f"damaged checkpoint (ema.{key}: shape")):
        load_checkpoint(tmp_path)


def test_fit_resumed_after_its_last_epoch_says_why_no_cache_served_it(tmp_path):
    recipe, backbone, splits, applied, t = setup(n_train=16)
    done = train(recipe, backbone, splits, applied, t, val_set=None, run_dir=tmp_path)
    again = train(recipe, backbone, splits, applied, t, val_set=None, run_dir=tmp_path, resume=True)
    assert done.cache.used and again.clock.sessions == 2
    assert not again.cache.used and "no epoch was left" in again.cache.reason
