"""The JSON documents users and scripts read keep every key they had (DESIGN §4: extend,
don't rename). Written before the house's second step (issue 18) moved the code around; a
new key is welcome, a lost or renamed one fails here.

Regenerate ``tests/golden/output_keys.json`` only for a deliberate, documented break:
``NCTUNE_WRITE_GOLDEN=1 pytest tests/test_golden_outputs.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nctune.cli import app
from tests.tiny import set_args, tiny

GOLDEN = Path(__file__).parent / "golden" / "output_keys.json"

TINY = tiny(
    "data.samples_per_class=6",
    "data.val_fraction=0.2",
    "data.test_fraction=0.2",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "search.space={train.lr: {float: [0.001, 0.1], log: true}}",
)


def key_paths(doc: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON document: ``layers[].nc1``; a list's items are merged."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= key_paths(value, path)
    elif isinstance(doc, list):
        for item in doc:
            out |= key_paths(item, f"{prefix}[]")
    return out


def run(*args: str) -> dict:
    res = CliRunner().invoke(app, [*args, *set_args(TINY), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, set[str]]:
    root = tmp_path_factory.mktemp("golden")
    docs = {
        "analyze --json": run("analyze", "--out", str(root / "a")),
        "finetune --json": run("finetune", "--out", str(root / "f")),
        "tune --json": run("tune", "--trials", "1", "--out", str(root / "t")),
    }
    docs["analysis.json"] = json.loads((root / "a" / "analysis.json").read_text())
    docs["report.json"] = json.loads((root / "f" / "report.json").read_text())
    docs["search.json"] = json.loads((root / "t" / "search.json").read_text())
    res = CliRunner().invoke(app, ["evaluate", str(root / "f"), "--out", str(root / "e"), "--json"])
    assert res.exit_code == 0, res.output
    docs["evaluate --json"] = json.loads(res.stdout)
    docs["evaluation.json"] = json.loads((root / "e" / "evaluation.json").read_text())
    return {name: key_paths(doc) for name, doc in docs.items()}


def test_no_output_key_is_lost(documents):
    if os.environ.get("NCTUNE_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps({k: sorted(v) for k, v in documents.items()}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(documents)
    lost = {name: sorted(set(keys) - documents[name]) for name, keys in golden.items()}
    assert not any(lost.values()), f"keys lost or renamed: {lost}"


def test_key_paths_sees_nested_lists():
    doc = {"a": [{"b": 1}, {"c": {"d": 2}}], "e": None}
    assert key_paths(doc) == {"a", "a[].b", "a[].c", "a[].c.d", "e"}
