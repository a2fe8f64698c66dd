"""The examples in README.md and docs/cli.md run as written on the offline default."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

import nctune
from nctune.backbones import create_backbone
from nctune.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_cli_docs_layers_example_names_a_block_of_the_default_backbone():
    text = (ROOT / "docs" / "cli.md").read_text()
    example = re.search(r"`--set (strategy\.layers=\[[^\]]+\])`", text)[1]
    recipe = load_recipe(None, [example])  # the defaults: what the docs call the offline default
    backbone = create_backbone(recipe.backbone)
    assert backbone.resolve_layers(recipe.strategy.layers, field="strategy.layers")


@pytest.mark.slow
def test_readme_library_snippet_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S)[1]
    claimed = re.search(r"# → (\[[^\]]*\])", code)[1]
    # Run in this process (a fresh interpreter only added ~4 s of imports): from the
    # repository root, in a namespace of its own, so it must import all it uses, and
    # `nctune.analyze` is the verb even after other tests imported the submodule. It runs
    # to the end: trains, saves (here into tmp_path), reloads and predicts.
    saved = tmp_path / "my-model"
    assert code.count('"runs/my-model"') == 2
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(
            compile(code.replace('"runs/my-model"', repr(str(saved))), "README.md", "exec"),
            namespace,
        )
    choice, applied = namespace["choice"], namespace["applied"]
    assert str(choice.layers) == claimed  # the comment tells the truth
    assert applied.trainable_params < applied.total_params
    predicted = ast.literal_eval(printed.getvalue().strip().split("\n")[-1])
    classes = nctune.load_finetuned(saved).classes
    assert len(classes) == 10 and len(predicted) == 8 and set(predicted) <= set(classes)
