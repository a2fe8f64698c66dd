"""The model a strategy trains: a backbone with a fresh classifier head (and SCL's skip).

:class:`TunedModel` replaces the backbone's classifier by ``nn.Linear(in_features, K)``;
with a skip block (SCL, Li et al., arXiv 2212.12206) the head also sees that block's pooled
output, concatenated before the penultimate features. Which of its parameters train is the
strategy's business (:mod:`nctune.training.strategies`); how it is saved and rebuilt,
:mod:`nctune.runs.artifacts`'.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nctune.errors import ConfigError
from nctune.taps import pool

if TYPE_CHECKING:
    from nctune.backbones import Backbone

__all__ = ["TunedModel"]


class TunedModel(nn.Module):
    """A backbone whose classifier is replaced by a fresh head, with an optional skip.

    ``forward(x)`` returns logits; ``forward(x, return_features=True)`` returns
    ``(logits, features)`` where ``features`` is exactly what the head sees: the
    penultimate (pre-logits) features, or for SCL the concatenation
    ``[pool(skip block output), penultimate]``.

    Attributes:
        backbone: the timm/torchvision model, its classifier set to ``nn.Identity``.
        head: ``nn.Linear(in_features, num_classes)``.
        head_drop: ``nn.Dropout(head_dropout)`` before the head.
        skip_block: module path (inside ``backbone``) feeding the skip connection, or None.
        in_features: the head's input width: the penultimate width, plus the skip
            block's pooled width for SCL.
        num_classes: K, the head's output count.
        config: JSON-ready description :func:`nctune.runs.artifacts.load_finetuned` rebuilds from.
        input_config: the backbone's :class:`~nctune.backbones.InputConfig`.

    Args:
        backbone: the pretrained backbone; its model is reused (not copied) and loses its
            classifier.
        num_classes: K.
        skip_block: a block of ``backbone`` whose pooled output also feeds the head (SCL).
        token_pool: ``'cls'`` or ``'mean'``: how the skip block's token maps are pooled.
        head_dropout: dropout probability before the head.

    Raises:
        ConfigError: ``skip_block`` is not one of the backbone's blocks.
        BackboneError: the backbone's blocks cannot be measured, or its metadata cannot
            be recorded.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        skip_block: str | None = None,
        token_pool: str = "cls",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_features = backbone.num_features  # read before the classifier is removed
        #: JSON-ready description that :func:`nctune.runs.artifacts.load_finetuned` rebuilds from.
        self.config = {
            "backbone": backbone.metadata(),
            "backbone_spec": backbone.spec,
            "classifier_name": backbone.classifier_name,
            "num_classes": num_classes,
            "skip_block": skip_block,
            "token_pool": token_pool,
            "head_dropout": head_dropout,
            "input_config": dataclasses.asdict(backbone.input_config),
        }
        self.input_config = backbone.input_config
        self.backbone = backbone.model
        self.backbone.set_submodule(backbone.classifier_name, nn.Identity())
        self.skip_block = skip_block
        self.num_classes = num_classes
        self._token_pool = token_pool
        self._prefix_tokens = backbone.num_prefix_tokens
        self._skip_feats: torch.Tensor | None = None
        skip_dim = 0
        if skip_block is not None:
            info = {b.name: b for b in backbone.blocks()}
            if skip_block not in info:
                raise ConfigError(
                    f"strategy.layers: {skip_block!r} is not a block of {backbone.spec}"
                )
            skip_dim = info[skip_block].dim
            self._skip_layout = info[skip_block].layout
            self.backbone.get_submodule(skip_block).register_forward_hook(self._capture)
        self.in_features = num_features + skip_dim
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.in_features, num_classes)

    def set_input_config(self, input_config: Any) -> None:
        """Record the input config the model is trained and evaluated with.

        The backbone's default size is not always the one used (``data.image_size``
        overrides it); what is recorded here is saved with the weights, so a reloaded
        model preprocesses new images exactly as its validation and test images were.

        Args:
            input_config: a :class:`~nctune.backbones.InputConfig`.
        """
        self.input_config = input_config
        self.config["input_config"] = dataclasses.asdict(input_config)

    def _capture(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._skip_feats = pool(output, self._skip_layout, self._token_pool, self._prefix_tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head sees, ``(B, in_features)``.

        Args:
            x: an image batch.

        Returns:
            The penultimate features, or for SCL ``[pool(skip block output),
            penultimate]`` concatenated along the feature axis.
        """
        feats = self.backbone(x).flatten(1)  # 1x1-conv heads leave (B, C, 1, 1)
        if self.skip_block is not None:
            skip, self._skip_feats = self._skip_feats, None
            feats = torch.cat([skip.to(feats.dtype), feats], dim=1)
        return feats

    def train(self, mode: bool = True) -> TunedModel:
        """Train mode, except frozen BatchNorm layers stay in eval mode.

        A frozen BatchNorm in train mode would still normalise with batch statistics and
        update its running averages: the "frozen" features would drift with the batch
        composition (harmful with small downstream batches) and a cached prefix would no
        longer be a fixed function of the image. A BatchNorm without affine parameters
        stays in eval mode when no backbone parameter trains.

        Args:
            mode: True for training mode, False for eval mode (as ``nn.Module.train``).

        Returns:
            ``self``.
        """
        super().train(mode)
        if mode:
            nothing_trains = not any(p.requires_grad for p in self.backbone.parameters())
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    own = list(m.parameters(recurse=False))
                    if (own and not any(p.requires_grad for p in own)) or (
                        not own and nothing_trains
                    ):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits for an image batch: ``head(dropout(features(x)))``.

        Args:
            x: an image batch ``(B, C, T, T)``.
            return_features: also return what the head sees.

        Returns:
            ``logits`` ``(B, num_classes)``, or ``(logits, features)`` with
            ``return_features`` (features ``(B, in_features)``).
        """
        feats = self.features(x)
        logits = self.head(self.head_drop(feats))
        return (logits, feats) if return_features else logits
