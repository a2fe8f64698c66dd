"""Backbone sources: one module per ``source:`` prefix of ``backbone.name``.

Each module registers its factory with ``@SOURCES.register("<prefix>")``; importing this
package imports them all, which fills :data:`SOURCES`. Adding a source = one module here
(imported below) + its name in :data:`nctune._names.BACKBONE_SOURCES` + one test file in
``tests/backbones/sources/``. Source modules share
helpers through :mod:`~nctune.backbones.factory`, :mod:`~nctune.backbones.hub` and
:mod:`~nctune.backbones.weights`, never through each other (``file`` reaches timm through
the registry).
"""

from nctune.backbones.factory import SOURCES
from nctune.backbones.sources import file, packaged, timm, torchvision

__all__ = ["SOURCES", "file", "packaged", "timm", "torchvision"]
