"""Nothing non-finite is saved, and a tampered checkpoint is refused before training
(issue 20, items 2, 3, 13 and 19), through the real ``nctune finetune`` entry point.

Run folders come from the CLI itself: a run that diverges in epoch 2 keeps its epoch-1
checkpoint (``halfway``: one epoch left to resume), and a run whose final model write fails
keeps its last checkpoint (``final``: resuming only writes the model). Each tamper must give
exit 2 and one line naming ``checkpoint.pt`` and the field, with the folder left as it was.
"""

from __future__ import annotations

import importlib
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from nctune.cli import app
from nctune.errors import ArtifactError
from nctune.training.callbacks import CallbackList
from tests.cli.conftest import plain_stderr  # noqa: F401 - autouse: a plain stderr console
from tests.expect import one_line

FINETUNE = importlib.import_module("nctune.finetune")
TRAIN = importlib.import_module("nctune.training.train")
ARTIFACTS = importlib.import_module("nctune.runs.artifacts")
TINY = [
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=10",
    "data.val_fraction=0.03",
    "data.max_test_samples=60",
    "data.image_size=32",
    "data.batch_size=16",
    "train.epochs=2",
    "train.lr=0.01",
    "strategy.name=full",
]
KEPT = ["checkpoint.pt", "metrics.csv", "recipe.yaml"]


def sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def invoke(*args: object) -> Result:
    argv = [str(a) for a in args]
    if argv and argv[0] == "finetune":
        argv.insert(1, "-q")
    return CliRunner().invoke(app, argv)


def finite(tensors: dict) -> bool:
    return all(bool(v.isfinite().all()) for v in tensors.values() if v.is_floating_point())


def first_bn(model: torch.nn.Module) -> tuple[str, torch.Tensor]:
    return next((n, m.running_var) for n, m in model.named_modules() if hasattr(m, "running_var"))


# ------------------------------------------------------------------ item 2: BatchNorm buffers
@pytest.mark.parametrize("epoch", [0, 1])
def test_an_infinite_batchnorm_buffer_is_divergence_and_never_saved(tmp_path, monkeypatch, epoch):
    """running_var turns inf while the loss stays finite (what lr=300 with plain SGD does to
    a real BatchNorm): the run stops with the divergence line at the end of that epoch."""
    real = CallbackList.on_batch_end

    def poison(self, state, loss):
        if state.epoch == epoch:
            first_bn(state.model)[1].fill_(math.inf)
        real(self, state, loss)

    monkeypatch.setattr(CallbackList, "on_batch_end", poison)
    out = tmp_path / "run"
    res = invoke("finetune", *sets(), "--out", out)
    line = one_line(res, f"diverged at epoch {epoch + 1}", "running_var", "not finite")
    assert "lower train.lr" in line
    if epoch == 0:  # nothing worth keeping
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        return
    assert "epoch 1" in line and "checkpoint.pt" in line
    assert sorted(p.name for p in out.iterdir()) == KEPT
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and finite(ckpt["model"]) and finite(ckpt["best_state"])


def test_save_model_refuses_a_non_finite_buffer(tiny_runs, tmp_path):
    model = ARTIFACTS.load_finetuned(tiny_runs("linear").run_dir)
    name, var = first_bn(model)
    var.fill_(math.inf)
    with pytest.raises(ArtifactError, match=rf"not saved: tensor .*{name}.running_var"):
        ARTIFACTS.save_model(model, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_with_a_non_finite_tensor_is_not_written(tmp_path):
    from nctune.training.checkpoint import save_checkpoint

    doc = {"model": {"w": torch.ones(2), "bn.running_var": torch.tensor([1.0, math.inf])}}
    with pytest.raises(ArtifactError, match="model.bn.running_var"):
        save_checkpoint(tmp_path / "checkpoint.pt", {**doc, "best_state": None})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ run folders to tamper with
@pytest.fixture(scope="module")
def halfway(tmp_path_factory) -> Path:
    """recipe.yaml + the epoch-1 checkpoint of a 2-epoch run (it diverged in epoch 2)."""
    out = tmp_path_factory.mktemp("halfway") / "run"
    real = TRAIN.lr_at

    def explodes_in_epoch_2(step, total, warmup, cfg, base_lr):  # 1 step per epoch here
        return 1e30 if step >= total // 2 else real(step, total, warmup, cfg, base_lr)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(TRAIN, "lr_at", explodes_in_epoch_2)
        res = invoke("finetune", *sets("train.optimizer=sgd", "train.grad_clip=null"), "--out", out)
    assert res.exit_code == 2 and sorted(p.name for p in out.iterdir()) == KEPT, res.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    return out


@pytest.fixture(scope="module")
def final(tmp_path_factory) -> Path:
    """recipe.yaml + the last checkpoint of a finished 2-epoch run whose model write failed."""
    from safetensors import SafetensorError

    out = tmp_path_factory.mktemp("final") / "run"

    def disk_full(model, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ARTIFACTS, "st_save_model", disk_full)
        res = invoke("finetune", *sets(), "--out", out)
    assert res.exit_code == 2 and sorted(p.name for p in out.iterdir()) == KEPT, res.output
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    return out


HALFWAY_SETS = ("train.optimizer=sgd", "train.grad_clip=null")


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out


def test_the_untampered_checkpoints_still_resume(halfway, final, tmp_path):
    for src, extra in ((halfway, HALFWAY_SETS), (final, ())):
        out = _copy(src, tmp_path / src.parent.name)
        res = invoke("finetune", *sets(*extra), "--resume", out)
        assert res.exit_code == 0, res.output
        assert (out / "model.safetensors").exists() and not (out / "checkpoint.pt").exists()


# ------------------------------------------------------------------ items 3, 13, 19
def _key(ckpt: dict, part: str) -> str:
    return next(k for k in ckpt["model"] if part in k)


def _tamper(ckpt: dict, how: str) -> None:
    if how == "best_state-nan":  # item 3
        ckpt["best_state"][_key(ckpt, "head.weight")].view(-1)[0] = math.nan
    elif how == "model-inf-buffer":
        ckpt["model"][_key(ckpt, "running_var")].fill_(math.inf)
    elif how == "best_state-missing-key":  # item 13
        del ckpt["best_state"][_key(ckpt, "head.bias")]
    elif how == "optimizer-empty":
        ckpt["optimizer"] = {"state": {}, "param_groups": []}
    elif how == "optimizer-garbage":
        ckpt["optimizer"] = {"state": 3, "param_groups": "x"}
    elif how == "optimizer-shape":
        for slot in ckpt["optimizer"]["state"].values():
            for name, value in slot.items():
                if isinstance(value, torch.Tensor) and value.ndim:
                    slot[name] = torch.zeros(7)
    elif how == "optimizer-params":
        ckpt["optimizer"]["param_groups"][0]["params"] = [10**6]
    elif how == "rng":
        ckpt["rng"]["torch"] = torch.zeros(10, dtype=torch.uint8)
    elif how == "step":  # with the sums a mid-epoch stop saves: only the recipe can tell
        ckpt["step"] = 10**9
        ckpt["partial"] = {"loss_sum": 1.0, "correct": 1, "seen": 16, "stats": None}
    elif how == "step-without-sums":
        ckpt["step"] = 1
    elif how == "epoch":  # item 19
        ckpt["epoch"] = 10**6
    elif how == "epoch-beyond-the-recipe":  # a consistent document, 3 epochs of 2
        for _ in range(2):
            ckpt["history"].append({**ckpt["history"][-1], "epoch": ckpt["epoch"] + 1})
            ckpt["epoch"] += 1
    elif how == "best_acc-nan":
        ckpt["best_acc"] = math.nan
    elif how == "best_acc-other":
        ckpt["best_acc"] = 1.0 if ckpt["best_acc"] != 1.0 else 0.0
    elif how == "best_epoch":
        ckpt["best_epoch"] = ckpt["epoch"] + 5
    elif how == "history-short":
        ckpt["history"] = ckpt["history"][:-1]
    else:  # pragma: no cover
        raise AssertionError(how)


#: (tamper, names in the line, refused before the backbone and data are built)
TAMPERS = [
    ("best_state-nan", ["best_state", "head.weight", "not finite"], True),
    ("model-inf-buffer", ["model", "running_var", "not finite"], True),
    ("best_state-missing-key", ["best_state", "head.bias"], True),
    ("optimizer-empty", ["optimizer"], False),
    ("optimizer-garbage", ["optimizer"], True),
    ("optimizer-shape", ["optimizer"], False),
    ("optimizer-params", ["optimizer"], False),
    ("rng", ["rng"], True),
    ("step", ["step", "1000000000", "steps of an epoch"], False),
    ("step-without-sums", ["step", "partial"], True),
    ("epoch", ["epoch", "history"], True),
    ("epoch-beyond-the-recipe", ["epoch 3", "train.epochs"], False),
    ("best_acc-nan", ["best_acc"], True),
    ("best_acc-other", ["best_acc", "history"], True),
    ("best_epoch", ["best_epoch"], True),
    ("history-short", ["history"], True),
]


@pytest.mark.parametrize("how, names, early", TAMPERS, ids=[t[0] for t in TAMPERS])
def test_a_tampered_checkpoint_is_refused_before_training(
    halfway, tmp_path, monkeypatch, how, names, early
):
    out = _copy(halfway, tmp_path)
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    _tamper(ckpt, how)
    torch.save(ckpt, path)
    before = path.read_bytes()
    if early:

        def never(*args, **kwargs):
            raise AssertionError("the backbone and data were built before the check")

        monkeypatch.setattr(FINETUNE, "prepare", never)
    steps = []
    real = CallbackList.on_batch_end
    monkeypatch.setattr(
        CallbackList, "on_batch_end", lambda self, s, loss: steps.append(1) or real(self, s, loss)
    )
    line = one_line(invoke("finetune", *sets(*HALFWAY_SETS), "--resume", out), *names)
    assert str(path) in line and "damaged checkpoint" in line and "start a new run" in line
    assert steps == []  # no training step ran
    assert path.read_bytes() == before and sorted(p.name for p in out.iterdir()) == KEPT


def test_a_final_checkpoint_with_nan_best_weights_writes_no_nan_model(final, tmp_path):
    """Item 3: resuming a finished checkpoint only loads best_state and writes the model."""
    out = _copy(final, tmp_path)
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    _tamper(ckpt, "best_state-nan")
    torch.save(ckpt, path)
    one_line(invoke("finetune", *sets(), "--resume", out), str(path), "best_state", "not finite")
    assert sorted(p.name for p in out.iterdir()) == KEPT  # no model.safetensors
