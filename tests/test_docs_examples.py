"""The examples in README.md and docs/cli.md run as written on the offline default."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
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
def test_readme_library_snippet_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S)[1]
    claimed = re.search(r"# → (\[[^\]]*\])", code)[1]
    # A fresh interpreter, from the repository root, as a user pasting it would run it (in
    # this process `nctune.analyze` may already be the submodule other tests imported).
    # It runs to the end: trains, saves (here into tmp_path), reloads and predicts.
    saved = tmp_path / "my-model"
    assert code.count('"runs/my-model"') == 2
    script = tmp_path / "snippet.py"
    script.write_text(
        code.replace('"runs/my-model"', repr(str(saved)))
        + "\nprint(choice.layers, applied.trainable_params < applied.total_params)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # as installed -e
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    labels, last = done.stdout.strip().split("\n")[-2:]
    assert last == f"{claimed} True"  # the comment tells the truth
    predicted = ast.literal_eval(labels)
    classes = nctune.load_finetuned(saved).classes
    assert len(classes) == 10 and len(predicted) == 8 and set(predicted) <= set(classes)
