"""Recipe numbers that would train a NaN model or crash torch are refused at validation."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from nctune._section import MAX_INT, MAX_SEED
from nctune.config import Recipe, load_recipe
from nctune.errors import ConfigError


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every field whose type admits a float, through every section."""
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        args = typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _float_fields(ann, f"{prefix}{name}.")
        elif ann is float or float in args:
            out.append(f"{prefix}{name}")
    return out


FLOAT_FIELDS = _float_fields(Recipe)


def test_the_walk_finds_the_float_fields():
    assert {"train.lr", "data.val_fraction", "strategy.lora_alpha", "train.grad_clip"} <= set(
        FLOAT_FIELDS
    )
    assert len(FLOAT_FIELDS) >= 12


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_float_field_refuses_non_finite_values(field, value):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [f"{field}={value}"])
    assert str(err.value).startswith(f"--set: {field}: ") and "finite" in str(err.value)


@pytest.mark.parametrize("value", ["{drop_path_rate: .nan}", "{scales: [1.0, .inf]}"])
def test_model_kwargs_refuse_non_finite_values(value):
    with pytest.raises(ConfigError, match="backbone.model_kwargs: .*finite"):
        load_recipe(None, [f"backbone.model_kwargs={value}"])


@pytest.mark.parametrize("seed", ["-1", str(MAX_SEED + 1), str(2**70)])
def test_seed_outside_what_torch_and_numpy_accept(seed):
    with pytest.raises(ConfigError, match="--set: seed: "):
        load_recipe(None, [f"seed={seed}"])


def test_largest_seed_works_in_torch_numpy_and_the_epoch_sampler():
    import numpy as np
    import torch

    from nctune.training.optim import EpochSampler

    recipe = load_recipe(None, [f"seed={MAX_SEED}"])
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    assert len(list(EpochSampler(5, recipe.seed, epoch=10**6))) == 5


def _int_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _int_fields(ann, f"{prefix}{name}.")
        elif ann is int or int in typing.get_args(ann):
            out.append(f"{prefix}{name}")
    return out


INT_FIELDS = [f for f in _int_fields(Recipe) if f != "seed"]


def test_the_walk_finds_the_int_fields():
    assert {"data.batch_size", "train.epochs", "data.num_workers"} <= set(INT_FIELDS)


@pytest.mark.parametrize("field", INT_FIELDS)
def test_every_int_field_stops_where_c_apis_do(field):
    # 10**20 passed ge=1 and crashed in DataLoader's islice (exit 1, a traceback); a field
    # with a tighter bound of its own (data.image_size, strategy.probe_blocks) stops there
    stop = f"(must be at most {MAX_INT}|Input should be less than or equal to [0-9]+)"
    with pytest.raises(ConfigError, match=f"--set: {field}: {stop}"):
        load_recipe(None, [f"{field}={10**20}"])
