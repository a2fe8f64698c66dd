"""A bad recipe or ``--set`` is refused before torch loads, with a "did you mean".

The recipe checks registered names against :mod:`nctune._names` (no torch); these tests
keep those lists equal to the real registries, and check that validating — in the library
and through the real command line — never imports torch. The time goal itself (≤ 1 s of
CPU for a refusal) is measured by ``benchmarks/import_time.py``, not asserted here.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nctune._names import BACKBONE_SOURCES, DATA_SOURCES, spec_source
from nctune.config import load_recipe
from nctune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)  # not under torchrun: nothing needs torch before the check
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# ------------------------------------------------------------ the static name lists
def test_data_source_names_and_help_equal_the_registry():
    from nctune.data.sources import SOURCES

    assert DATA_SOURCES.names() == SOURCES.names(), (
        "a data source was added or renamed: list it in nctune/_names.py DATA_SOURCES"
    )
    for name in SOURCES:  # the recipe help is the loader's own docstring line
        doc = (inspect.getdoc(SOURCES.get(name)) or "").split("\n", 1)[0].rstrip(".")
        assert DATA_SOURCES.entries[name] == doc, name


def test_backbone_source_names_equal_the_registry():
    from nctune.backbones.sources import SOURCES

    assert BACKBONE_SOURCES.names() == SOURCES.names()
    from nctune.backbones import factory

    assert factory.spec_source is spec_source  # one parser, below the recipe


def test_unknown_source_messages_match_the_registry_wording():
    from nctune.data.sources import SOURCES

    assert DATA_SOURCES.unknown("imagefolde") == SOURCES.unknown("imagefolde")
    assert "did you mean 'imagefolder'" in DATA_SOURCES.unknown("imagefolde")


# ------------------------------------------------------------ no torch before refusal
def test_importing_and_validating_the_recipe_loads_no_torch():
    done = _python(
        """
        import sys
        import nctune.config, nctune.recipe_fields, nctune.starter
        from nctune.config import load_recipe
        load_recipe(None, ["data.source=imagefolder", "data.path=x", "backbone.name=timm:a"])
        heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
        print("heavy:", heavy)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout


@pytest.mark.parametrize("command", ["analyze", "finetune", "sweep", "rank", "tune"])
def test_a_bad_set_is_refused_before_torch_loads(command):
    done = _python(
        f"""
        import sys
        from nctune.cli import main
        try:
            main([{command!r}, "--set", "train.epoch=3"])
        except SystemExit as stop:
            print("code", stop.code, "torch", "torch" in sys.modules)
        """
    )
    assert "code 2 torch False" in done.stdout, (done.stdout, done.stderr)
    assert "did you mean train.epochs?" in done.stderr


def test_init_refuses_a_bad_set_before_torch_loads(tmp_path):
    done = _python(
        f"""
        import sys
        from nctune.cli import main
        try:
            main(["init", "--data", {str(tmp_path)!r}, "--set", "data.batchsize=3",
                  "--out", {str(tmp_path / "r.yaml")!r}])
        except SystemExit as stop:
            print("code", stop.code, "torch", "torch" in sys.modules)
        """
    )
    assert "code 2 torch False" in done.stdout, (done.stdout, done.stderr)
    assert "did you mean data.batch_size?" in done.stderr


def test_the_real_command_line_refuses_a_bad_set_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-m", "nctune", "analyze", "--set", "train.epoch=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --set: train.epoch: unknown key; did you mean train.epochs? "
        "(see docs/recipes.md for the fields)"
    ]


# ------------------------------------------------------------------- did you mean
def test_did_you_mean_for_a_set_key():
    with pytest.raises(ConfigError, match=r"^--set: train\.epoch: unknown key; did you mean "):
        load_recipe(None, ["train.epoch=3"])


def test_did_you_mean_for_a_recipe_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  batchsize: 8\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: data.batchsize: unknown key; ")
    assert "did you mean data.batch_size?" in str(err.value)


def test_did_you_mean_for_a_section_and_for_a_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean train\?"):
        load_recipe(None, ["trian.epochs=3"])
    path = tmp_path / "r.yaml"
    path.write_text("search:\n  space:\n    train.lr: {float: [0.001, 0.1], lgo: true}\n")
    with pytest.raises(
        ConfigError, match=r"lgo: unknown key; did you mean search\.space\.train\.lr\.log\?"
    ):
        load_recipe(path)
    # a search.space path is itself a key of the recipe
    path.write_text("search:\n  space:\n    train.lrr: {float: [0.001, 0.1]}\n")
    with pytest.raises(
        ConfigError, match=r"no recipe field 'train\.lrr'; did you mean 'train\.lr'\?"
    ):
        load_recipe(path)


def test_nothing_close_keeps_the_plain_message():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["data.zzzzzz=1"])
    assert "did you mean" not in str(err.value)
    assert "data.zzzzzz: unknown key (check the spelling" in str(err.value)
