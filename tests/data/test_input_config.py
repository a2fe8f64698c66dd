"""nctune.data.input_config: one resolver of the input config, one bound on the side.

Every consumer asks :func:`resolve_input_config`: the data transforms, finetune's saved
config, rank's check that the candidates share a side, and ``nctune init``'s listing — so
for the same recipe and backbone they all see the same side.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from nctune._section import MIN_IMAGE_SIZE
from nctune.backbones import IMAGENET_INPUT, create_backbone
from nctune.config import DataConfig, load_recipe
from nctune.data import build_data, eval_transform, resolve_input_config
from nctune.data.input_config import per_channel, resize_side
from nctune.errors import ConfigError
from tests.data.helpers import IC, cfg, make_folder


def _bound(model: type, field: str) -> int:
    return next(m.ge for m in model.model_fields[field].metadata if getattr(m, "ge", None))


def test_the_recipe_side_wins_and_the_rest_is_the_backbones():
    assert resolve_input_config(IC) is IC  # nothing asked: the backbone's config itself
    assert resolve_input_config(IC, cfg()) is IC
    got = resolve_input_config(IMAGENET_INPUT, cfg(image_size=48))
    assert got == dataclasses.replace(IMAGENET_INPUT, image_size=48)
    assert resolve_input_config(IMAGENET_INPUT, cfg(image_size=48), image_size=40).image_size == 40


def test_one_bound_on_the_side_everywhere():
    from nctune.runs._model_meta import _InputConfigMeta

    assert _bound(DataConfig, "image_size") == MIN_IMAGE_SIZE
    assert _bound(_InputConfigMeta, "image_size") == MIN_IMAGE_SIZE
    with pytest.raises(ConfigError, match=rf"^data.image_size: .*at least {MIN_IMAGE_SIZE}"):
        resolve_input_config(dataclasses.replace(IC, image_size=MIN_IMAGE_SIZE - 1))
    with pytest.raises(ConfigError, match="data.image_size"):
        eval_transform(IC, image_size=MIN_IMAGE_SIZE - 1)
    assert resolve_input_config(IC, image_size=MIN_IMAGE_SIZE).image_size == MIN_IMAGE_SIZE


def test_crop_and_normalisation_read_one_way():
    assert per_channel((0.5,), "mean") == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="1 or 3 values"):
        per_channel((0.1, 0.2), "std")
    assert resize_side(dataclasses.replace(IC, image_size=224, crop_pct=0.875)) == 256
    assert resize_side(dataclasses.replace(IC, image_size=32, crop_pct=1.2)) == 32  # > 1 is 1


@pytest.mark.parametrize("image_size", [None, 48])
def test_data_rank_and_init_see_the_side_the_resolver_gives(tmp_path, monkeypatch, image_size):
    import nctune.starter as starter_module

    rank_module = importlib.import_module("nctune.rank")  # nctune.rank is the verb

    folder = make_folder(tmp_path / "ds", {"a": 2, "b": 2})
    sets = ["data.source=imagefolder", f"data.path={folder}", "data.val_fraction=0"]
    sets.append(f"data.image_size={'null' if image_size is None else image_size}")
    recipe = load_recipe(None, sets)
    specs = ["packaged:efficientnet_lite0", "packaged:efficientnet_lite1"]
    want = {}
    for spec in specs:
        input_config = create_backbone(spec, pretrained=False).input_config
        want[spec] = resolve_input_config(input_config, recipe.data).image_size
        # the data transforms
        splits = build_data(recipe.data, input_config, seed=recipe.seed)
        assert splits.image_size == splits.train[0][0].shape[-1] == want[spec]
    defaults = {specs[0]: 224, specs[1]: 240}
    assert want == ({s: image_size for s in specs} if image_size else defaults)

    # rank compares the resolved sides: they differ only when the recipe leaves them free
    candidates = [f"{s}@random" for s in specs]
    rank_recipe = recipe.model_copy(
        update={"rank": recipe.rank.model_copy(update={"backbones": candidates})}
    )
    if image_size is None:
        with pytest.raises(ConfigError, match=r"data.image_size: .*224 px.*240 px"):
            rank_module._check_candidates(rank_recipe)
    else:
        assert len(rank_module._check_candidates(rank_recipe)) == 2

    # nctune init lists the folder through build_data, at the side the resolver gives
    seen = []

    def spy(data, input_config, **kw):
        splits = build_data(data, input_config, **kw)
        seen.append(splits.image_size)
        return splits

    monkeypatch.setattr(starter_module, "build_data", spy)
    overrides = [] if image_size is None else [f"data.image_size={image_size}"]
    starter = starter_module.starter_recipe(folder, overrides=overrides)
    assert seen == [resolve_input_config(IMAGENET_INPUT, starter.recipe.data).image_size]
    if image_size:
        assert seen == [image_size]
