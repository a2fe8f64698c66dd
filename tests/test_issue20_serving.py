"""The serving path under attack (issue 20): non-finite numbers never become a confident
answer (item 7), and a bad argument to the library is one ConfigError line naming it, not a
raw TypeError/RuntimeError (item 24, library part)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nctune
from nctune.collapse import CollapseError, CollapseStats
from nctune.data import list_images
from nctune.errors import ArtifactError, ConfigError, DataError, NctuneError


def nan_model_run(run_dir: Path, dest: Path, key: str = "head.weight") -> Path:
    """A copy of a finished run whose ``key`` tensor holds one NaN (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(run_dir, dest)
    file = dest / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(file), metadata=meta)
    return dest


@pytest.fixture(scope="module")
def model(tiny_runs):
    return nctune.load_finetuned(tiny_runs("linear").run_dir)


def image(channels: int = 3) -> torch.Tensor:
    return torch.rand(channels, 32, 32)


# ------------------------------------------------------------------ item 7: NaN in, no answer out
@pytest.mark.parametrize("key", ["head.weight", "backbone.bn1.running_var"])
def test_a_model_file_with_nan_weights_is_refused_at_load(tiny_runs, tmp_path, key):
    run = nan_model_run(tiny_runs("linear").run_dir, tmp_path / "nan", key)
    with pytest.raises(ArtifactError, match=rf"model.safetensors: .*{key}.*not finite") as err:
        nctune.load_finetuned(run)
    assert "\n" not in str(err.value)


def test_nan_pixels_are_an_error_naming_the_input_not_a_nan_probability(model):
    bad = torch.full((3, 32, 32), float("nan"))
    with pytest.raises(ConfigError, match=r"images\[1\]: .*NaN or Inf") as err:
        nctune.predict(model, [image(), bad])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"images\[1\]: .*NaN or Inf"):
        nctune.predict(model, torch.stack([image(), bad]))  # one (B, 3, T, T) batch


def _non_finite_first_row(model):
    """A model whose output for the first image of every batch is NaN (e.g. overflow)."""

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.num_classes, self.classes = model.num_classes, model.classes
            self.transform, self.input_config = model.transform, model.input_config

        def forward(self, x):
            out = self.inner(x).clone()
            out[0] = float("nan")
            return out

    return Broken()


def test_non_finite_logits_raise_in_the_library_and_are_error_rows_in_the_stream(model):
    broken = _non_finite_first_row(model)
    with pytest.raises(DataError, match=r"<input 0>: the model's output is not finite") as err:
        nctune.predict(broken, [image(), image()])
    assert "\n" not in str(err.value)
    from nctune.serving.inference import iter_predict

    rows = list(iter_predict(broken, [image(), image(), image()], batch_size=2))
    assert [r.ok for r in rows] == [False, True, False]  # the first of each batch
    assert rows[0].label is None and rows[0].probability is None and rows[0].index is None
    assert "not finite" in rows[0].error
    assert all(0 <= r.probability <= 1 for r in rows if r.ok)


def test_finite_inputs_still_predict(model):
    preds = nctune.predict(model, [image(), torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8)])
    assert not preds.failed and all(np.isfinite(p) for p in preds.probabilities)


# ------------------------------------------------------------------ item 24: bad arguments
@pytest.mark.parametrize(
    "images, kw, names",
    [
        (None, {}, ["images", "NoneType"]),
        (3, {}, ["images", "int"]),
        ({"a.png": 1}, {}, ["images", "dict"]),
        (np.zeros((32, 32, 3), np.uint8), {}, ["images", "numpy", "torch.from_numpy"]),
        (torch.rand(1, 32, 32), {}, ["images", "3 channels", "(1, 32, 32)"]),
        (torch.rand(2, 1, 32, 32), {}, ["images", "3 channels", "(2, 1, 32, 32)"]),
        ([image(), torch.rand(1, 32, 32)], {}, ["images[1]", "3 channels"]),
        ([image(), np.zeros((3, 32, 32))], {}, ["images[1]", "ndarray"]),
        ([image()], {"workers": -1}, ["workers", "-1"]),
        ([image()], {"workers": 1.5}, ["workers", "1.5"]),
        ([image()], {"batch_size": "2"}, ["batch_size", "'2'"]),
        ([image()], {"batch_size": 0}, ["batch_size", "at least 1"]),
        ([image()], {"top_k": 1.5}, ["top_k", "1.5"]),
        ([image()], {"device": "bogus"}, ["device", "bogus"]),
    ],
)
def test_a_bad_predict_argument_is_one_config_error_line_naming_it(model, images, kw, names):
    with pytest.raises(ConfigError) as err:
        nctune.predict(model, images, **kw)
    line = str(err.value)
    assert "\n" not in line
    for name in names:
        assert name in line, (name, line)


def test_a_list_with_an_unreadable_file_still_fails_its_row_only(model, tiny_runs, tmp_path):
    files = list_images(tiny_runs("linear").data / "val")[:2]
    preds = nctune.predict(model, [files[0], tmp_path / "missing.png", files[1]])
    assert [p.ok for p in preds] == [True, False, True]


def test_load_finetuned_with_a_bad_device_names_the_device_not_the_weights(tiny_runs):
    with pytest.raises(NctuneError) as err:
        nctune.load_finetuned(tiny_runs("linear").run_dir, device="bogus")
    assert isinstance(err.value, ConfigError)
    assert "device" in str(err.value) and "bogus" in str(err.value)
    assert "weights" not in str(err.value)


@pytest.mark.parametrize(
    "args, kw, names",
    [
        (("3",), {}, ["num_classes", "'3'"]),
        ((3.5,), {}, ["num_classes", "3.5"]),
        ((True,), {}, ["num_classes", "True"]),
        ((None,), {}, ["num_classes", "None"]),
        ((3,), {"max_full_dim": 0}, ["max_full_dim", "0"]),
        ((3,), {"max_full_dim": "big"}, ["max_full_dim", "'big'"]),
        ((3,), {"mode": None}, ["mode", "None"]),
    ],
)
def test_a_bad_collapse_stats_argument_is_one_line_naming_it(args, kw, names):
    with pytest.raises(CollapseError) as err:
        CollapseStats(*args, **kw)
    assert isinstance(err.value, NctuneError) and "\n" not in str(err.value)
    for name in names:
        assert name in str(err.value), (name, str(err.value))


def test_numpy_integer_class_counts_are_still_accepted():
    assert CollapseStats(np.int64(3)).num_classes == 3
