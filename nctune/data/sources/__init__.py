"""Data sources: one module per ``data.source``, each registering its loader in
:data:`SOURCES`.

Importing this package imports every source module, which fills the registry. Adding a
source = one new module here (a function ``cfg -> _Source`` decorated with
``@SOURCES.register("name")``, its one-line docstring the recipe help), its import
below, its name and help line in :data:`nctune._names.DATA_SOURCES` (the recipe checks
names there, without importing torch), and one test file in ``tests/data/sources/``.
See :mod:`._base` for what a loader returns.
"""

from __future__ import annotations

import inspect

from nctune.data.sources._base import SOURCES

# Imported for their registrations. The order is the order errors and docs list them
# (the default first), so keep isort away from it.
# isort: off
from nctune.data.sources import fashion_mnist  # noqa: F401
from nctune.data.sources import imagefolder  # noqa: F401
from nctune.data.sources import csv  # noqa: F401
from nctune.data.sources import torchvision  # noqa: F401
from nctune.data.sources import digits  # noqa: F401
from nctune.data.sources import hf  # noqa: F401
from nctune.data.sources import webdataset  # noqa: F401
# isort: on

__all__ = ["SOURCES", "list_sources", "sources_help"]


def list_sources() -> list[str]:
    """The registered ``data.source`` names, in registration order."""
    return SOURCES.names()


def sources_help() -> str:
    """One line describing every registered source: ``name (docstring), …`` (recipe help)."""
    parts = []
    for name in SOURCES:
        doc = (inspect.getdoc(SOURCES.get(name)) or "").split("\n", 1)[0].rstrip(".")
        parts.append(f"{name} ({doc})" if doc else name)
    return ", ".join(parts) + "."
