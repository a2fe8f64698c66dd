"""Registered names the recipe checks, known without importing the modules that register them.

The data sources (:mod:`nctune.data.sources`) and backbone sources
(:mod:`nctune.backbones.sources`) import torch, torchvision and timm; importing them to
check ``data.source: imagefolde`` would cost seconds before a typo is refused. Their names
and help lines are listed here instead, in registration order, and
``tests/test_config_names.py`` keeps each list equal to its real registry (names, order and
the loaders' docstrings). Adding a source = its module and registration as before, plus its
line here.

Strategies and selection rules need no list: their registries
(:mod:`nctune.training.strategies`, :mod:`nctune.selection`) import no torch.
Ground floor: imports only :mod:`nctune._registry`.
"""

from __future__ import annotations

from nctune._registry import StaticNames

__all__ = ["BACKBONE_SOURCES", "DATA_SOURCES", "TIMM_PREFIXES", "spec_source"]

#: ``data.source`` names → the first line of their loader's docstring (the recipe help).
DATA_SOURCES = StaticNames(
    "data source",
    "data.source",
    {
        "fashion_mnist": (
            "IDX files from 'path', else the Debian dataset-fashion-mnist files, else the "
            "vendored subset"
        ),
        "imagefolder": "class folders under 'path'",
        "csv": "a path,label manifest at 'path'",
        "torchvision": "dataset class 'name' with root 'path'",
        "digits": "scikit-learn's bundled 8x8 digits",
        "hf": "a Hugging Face datasets folder or Parquet/Arrow file at 'path', or a hub 'name'",
        "webdataset": "WebDataset .tar shards at 'path' (a file, brace pattern, list or folder)",
    },
)

#: The ``source:`` prefixes of ``backbone.name`` (:data:`nctune.backbones.factory.SOURCES`).
BACKBONE_SOURCES = StaticNames(
    "backbone source",
    "backbone.name",
    {"file": "", "packaged": "", "timm": "", "torchvision": ""},
)

#: timm's own ``name:`` prefixes, which a bare timm name may carry.
TIMM_PREFIXES = ("hf-hub", "hf_hub", "local-dir")


def spec_source(text: str) -> str:
    """The source key a spec names, registered or not: ``'TIMM: x'`` → ``'timm'``.

    A bare name, or one with timm's own prefixes (``hf-hub:``, ``local-dir:``), is timm's.
    """
    source, sep, _ = str(text).strip().partition(":")
    key = source.strip().lower()
    return key if sep and key not in TIMM_PREFIXES else "timm"
