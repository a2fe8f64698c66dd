"""The public names resolve, lazily, and `import nctune` stays light."""

from __future__ import annotations

import subprocess
import sys

import nctune
from tests import fresh_imports


def test_every_public_name_resolves():
    for name in nctune.__all__:
        assert getattr(nctune, name) is not None, name


def test_dir_lists_the_public_names_only():
    assert dir(nctune) == sorted(nctune.__all__)


def test_import_is_lazy():
    code = "import sys, nctune; print(int(any(m in sys.modules for m in ('timm', 'torchvision', 'peft', 'optuna'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_unknown_name_is_an_attribute_error():
    try:
        nctune.does_not_exist  # noqa: B018
    except AttributeError as err:
        assert "does_not_exist" in str(err)
    else:
        raise AssertionError("expected AttributeError")


@fresh_imports.group
def test_verbs_are_not_hidden_by_their_submodules():
    """``import nctune.finetune`` (as any user code may do first) must not turn the verb
    ``nctune.finetune`` into the module, nor ``nctune.analyze`` (imported by it)."""
    assert fresh_imports.probe()["verbs"] == [True, True, True]  # both callable, the same
