"""nctune: principled, cheap fine-tuning of pretrained vision backbones via neural collapse.

The public verbs are re-exported here lazily (PEP 562), so ``import nctune.collapse``
pulls in torch alone, not timm, torchvision or the rendering stack.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → module that defines it
_EXPORTS: dict[str, str] = {
    "CollapseStats": "nctune.collapse",
    "CollapseMetrics": "nctune.collapse",
    "all_reduce_stats": "nctune.collapse",
    "NctuneError": "nctune.errors",
    "Recipe": "nctune.config",
    "load_recipe": "nctune.config",
    "Backbone": "nctune.backbones",
    "create_backbone": "nctune.backbones",
    "list_blocks": "nctune.backbones",
    "build_data": "nctune.data",
    "eval_transform": "nctune.data",
    "CollapseProfile": "nctune.profile",
    "LayerCollapse": "nctune.profile",
    "analyze": "nctune.analyze",
    "select_layers": "nctune.selection",
    "apply_strategy": "nctune.training.strategies",
    "RunResult": "nctune.finetune",
    "finetune": "nctune.finetune",
    "load_finetuned": "nctune.serving.inference",
    "predict": "nctune.serving.inference",
    "Predictions": "nctune.serving.inference",
    "evaluate": "nctune.serving.evaluate",
    "Evaluation": "nctune.serving.evaluate",
    "save_finetuned": "nctune.serving.save",
    "layer_sweep": "nctune.sweep",
    "rank": "nctune.rank",
    "Ranking": "nctune.rank",
    "tune": "nctune.tune",
    "SearchResult": "nctune.tune",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nctune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({"__version__", *_EXPORTS})


class _Package(types.ModuleType):
    """``nctune`` itself: public verbs win over same-named submodules.

    Importing a submodule binds it on its package (``import nctune.finetune`` sets
    ``nctune.finetune`` to the module), which would hide the verb ``nctune.finetune()``
    for the rest of the process. The verbs are the public API, so that binding is
    skipped for them; the modules stay reachable through ``sys.modules`` or
    ``importlib.import_module("nctune.finetune")``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"nctune.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from nctune.analyze import analyze
    from nctune.backbones import Backbone, create_backbone, list_blocks
    from nctune.collapse import CollapseMetrics, CollapseStats, all_reduce_stats
    from nctune.config import Recipe, load_recipe
    from nctune.data import build_data, eval_transform
    from nctune.errors import NctuneError
    from nctune.finetune import RunResult, finetune
    from nctune.profile import CollapseProfile, LayerCollapse
    from nctune.rank import Ranking, rank
    from nctune.selection import select_layers
    from nctune.serving.evaluate import Evaluation, evaluate
    from nctune.serving.inference import Predictions, load_finetuned, predict
    from nctune.serving.save import save_finetuned
    from nctune.sweep import layer_sweep
    from nctune.training.strategies import apply_strategy
    from nctune.tune import SearchResult, tune
