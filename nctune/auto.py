"""``auto``'s plan: which block to tune and how, decided before training.

1. The recipe's rule ranks the profile's blocks (:func:`~nctune.selection.rank_blocks`);
   its ``strategy.probe_blocks`` best are the candidates.
2. The collapse probe (:func:`~nctune.training.probe.probe_blocks`) trains each candidate
   briefly from one cached frozen prefix and keeps the block whose head-input features
   collapse most on the training data, or — when the validation split is large enough to
   rank them — the most accurate one. With ``strategy.warm_start``, the probed heads start
   from a linear probe on their features and training continues from the winner's
   probed weights (LP-FT on the tuned suffix).
3. With ``strategy.lr_finder``, a short learning-rate range test on the winner's cached
   prefix sets ``train.lr``.

The plan is written to the run folder (``auto.json``) before training, so a resumed run
continues with the same block and learning rate without probing again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nctune.errors import ArtifactError
from nctune.profile import CollapseProfile
from nctune.runs._io import atomic_write_text, to_json
from nctune.selection import rank_blocks
from nctune.training.lr_finder import lr_range_test
from nctune.training.probe import probe_blocks
from nctune.training.strategies import STRATEGY_REGISTRY

if TYPE_CHECKING:
    from nctune.config import Recipe

#: The plan's file in a run folder.
AUTO_FILE = "auto.json"


@dataclass
class AutoPlan:
    """What ``auto`` decided before training.

    Attributes:
        probe: the probe's report entry (:meth:`~nctune.training.probe.ProbeResult.to_dict`).
        lr: the learning rate training uses (None: the recipe's ``train.lr``).
        lr_finder: the range test's report entry (None when it did not run).
        winner_state: the winner's probed weights to continue from (None on resume or
            without warm start).
    """

    probe: dict[str, Any]
    lr: float | None = None
    lr_finder: dict[str, Any] | None = None
    winner_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def block(self) -> str:
        return self.probe["winner"]

    @property
    def nc1_before(self) -> float | None:
        """The winner's head-input NC1 before any training (the probe measured it)."""
        for c in self.probe["candidates"]:
            if c["block"] == self.block:
                return c["nc1_before"]
        return None

    def selection(self, rule: str) -> dict[str, Any]:
        """``report.json``'s ``selection``: the rule that ranked the candidates, the
        probe's winner and why it won."""
        blocks = ", ".join(c["block"] for c in self.probe["candidates"])
        reason = f"collapse probe of the {rule} rule's best blocks ({blocks}): {self.probe['why']}"
        return {"rule": rule, "layers": [self.block], "reason": reason}

    def save(self, run_dir: Path) -> None:
        doc = {"probe": self.probe, "lr": self.lr, "lr_finder": self.lr_finder}
        atomic_write_text(run_dir / AUTO_FILE, to_json(doc))

    @classmethod
    def load(cls, run_dir: Path) -> AutoPlan:
        path = run_dir / AUTO_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            plan = cls(doc["probe"], doc.get("lr"), doc.get("lr_finder"))
            plan.block  # noqa: B018 — the winner must be there
        except (OSError, ValueError, KeyError, TypeError):
            raise ArtifactError(
                f"{path}: unreadable; start the run again without --resume"
            ) from None
        return plan


def probes(recipe: Recipe, profile: CollapseProfile | None) -> bool:
    """Whether the recipe's strategy chooses its block by a probe: a probing strategy
    (``auto``), no block named, a profile to rank from and more than one candidate."""
    s = recipe.strategy
    return (
        STRATEGY_REGISTRY.get(s.name).probes
        and not s.layers
        and profile is not None
        and s.probe_blocks > 1
    )


def plan_auto(
    recipe: Recipe,
    backbone: Any,
    train: Any,
    val: Any,
    profile: CollapseProfile,
    *,
    num_classes: int,
    device: torch.device,
    run_dir: Path | None = None,
    resume: bool = False,
) -> AutoPlan:
    """Probe the rule's best blocks (or, resuming, read the plan the run made).

    Args:
        recipe: the run's recipe (``strategy.probe_*``, ``warm_start``, ``train.*``).
        backbone: the pretrained :class:`~nctune.backbones.Backbone` (left unchanged).
        train, val: the un-augmented training and validation sets (``val`` may be None).
        profile: the collapse profile the rule ranks.
        num_classes: K.
        device: where the probe runs.
        run_dir: the run folder (the plan is read from / written to it).
        resume: read the plan of the run being resumed when it has one.

    Returns:
        The plan; its ``lr`` is set later by :func:`choose_lr` when asked for.
    """
    if resume and run_dir is not None and (run_dir / AUTO_FILE).is_file():
        return AutoPlan.load(run_dir)
    s, t = recipe.strategy, recipe.train
    rule, params = s.selection_rule()
    candidates = rank_blocks(profile, rule, k=s.probe_blocks, **params)
    # default budget: one epoch's steps, spread over the candidates
    budget = s.probe_steps or math.ceil(len(train) / recipe.data.batch_size)
    result = probe_blocks(
        backbone,
        candidates,
        train,
        num_classes,
        budget_steps=max(budget, len(candidates)),
        lr=t.lr,
        val_data=val,
        batch_size=recipe.data.batch_size,
        seed=recipe.seed,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        warm_start=s.warm_start,
        keep_winner=s.warm_start,
        token_pool=recipe.analysis.token_pool,
        head_dropout=s.head_dropout,
        device=device,
        amp=t.amp,
        cache_max_mb=t.cache_max_mb,
    )
    return AutoPlan(result.to_dict(), winner_state=result.winner_state)


def choose_lr(plan: AutoPlan, model: torch.nn.Module, source: Any, recipe: Recipe, device) -> None:
    """Set ``plan.lr`` by a learning-rate range test of ``model``'s trainable suffix on the
    cached ``source`` (:func:`~nctune.training.lr_finder.lr_range_test`; weights restored).

    Args:
        plan: the plan to complete (unchanged when it already has an lr: a resumed run).
        model: the model about to train (the winner's block and head trainable).
        source: the run's cached training batches.
        recipe: ``train.weight_decay``, ``train.grad_clip``, ``train.amp`` and the seed.
        device: where it runs.
    """
    if plan.lr is not None:
        return
    t = recipe.train
    found = lr_range_test(
        model,
        source,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        seed=recipe.seed,
        device=device,
        amp=t.amp,
    )
    plan.lr, plan.lr_finder = found.lr, found.to_dict()
