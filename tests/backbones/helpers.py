"""Shared by the backbone tests: tiny inputs and the expected block lists."""

from __future__ import annotations

import torch

from nctune.backbones import Backbone

VIT_KW = {"img_size": 32, "patch_size": 8, "depth": 2}


def images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def logits(b: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return b.model(x)


def stage_names(prefix: str, depths: list[int], inner: str = "") -> list[str]:
    return [f"{prefix}.{i}{inner}.{j}" for i, d in enumerate(depths) for j in range(d)]


RESNET18_BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
LITE0_BLOCKS = stage_names("blocks", [1, 2, 2, 3, 3, 4, 1])
