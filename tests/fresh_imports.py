"""What importing a part of nctune pulls in, seen from a fresh interpreter — one for all checks.

A check of the kind "importing ``nctune.collapse`` loads no model code" needs an interpreter
that has imported nothing else, and each such interpreter pays ~2–5 s of CPU importing
torch (and timm). :func:`probe` runs the checks of several test files in one interpreter
instead, one step after another, each step importing more and recording which of its
watched modules are loaded by then. A module absent after a step is absent after that
step's imports alone (importing more only loads more), so each result is the isolated
check's or stricter: a step can fail for an earlier step's imports, never pass for them.
Steps that must see a module *unloaded* come before the steps that load it.

The tests that read :func:`probe` carry ``xdist_group("fresh_imports")`` so that under
xdist one worker runs them all and the interpreter starts once.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (step name, modules it imports, modules it watches), in the order they run.
STEPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # the statistics need torch alone: no backbones, no rendering
    (
        "collapse",
        ("nctune.collapse",),
        ("timm", "torchvision", "rich", "matplotlib", "nctune.backbones"),
    ),
    # config sits above data (it validates data.source against the registry)
    ("data", ("nctune.data",), ("nctune.config",)),
    # serving a model needs no plotting layer
    (
        "serving",
        ("nctune.runs.artifacts", "nctune.runs.folder", "nctune.serving.inference"),
        ("matplotlib", "nctune.report"),
    ),
)

_CODE = """
import importlib, json, sys
steps, found = json.loads(sys.argv[1]), {}
for name, modules, watched in steps:
    for m in modules:
        importlib.import_module(m)
    found[name] = sorted(w for w in watched if w in sys.modules)
# `import nctune.finetune` (as user code may do first) must leave the verbs on the package,
# not the submodules the import system binds there
import nctune.finetune, nctune.analyze, nctune
found["verbs"] = [
    callable(nctune.finetune),
    callable(nctune.analyze),
    sys.modules["nctune.finetune"].finetune is nctune.finetune,
]
print(json.dumps(found))
"""


@functools.cache
def probe() -> dict[str, list]:
    """Each step's loaded watched modules (``[]`` when none), and ``"verbs"``: three booleans."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)  # not under torchrun
    done = subprocess.run(
        [sys.executable, "-c", _CODE, json.dumps(STEPS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


#: The marker for a test that reads :func:`probe`.
group = pytest.mark.xdist_group("fresh_imports")
