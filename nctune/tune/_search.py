"""What one search worker carries from start to finish, as one object: the recipe, where the
study lives, the space, the profiles its trials share and the caller's hooks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nctune.config import Recipe
from nctune.finetune import Prepared, _profile, prepare
from nctune.profile import CollapseProfile
from nctune.tune._result import TrialRecord


@dataclass
class Search:
    """One worker's search: what the study loop, each trial's objective and the collector read.

    Attributes:
        recipe: the base recipe (``recipe.search`` says what to search and how).
        out: the search folder.
        url: the storage URL (``sqlite:///OUT/study.db`` by default).
        name: the study name.
        direction: ``minimize`` or ``maximize`` ``search.metric``.
        want: finished trials the study should hold.
        base: :func:`~nctune.finetune.prepare` of ``recipe``, built once (bad input fails
            there, before a trial runs).
        start: when this worker started (``time.perf_counter``), for ``search.timeout``.
        space: dotted path → distribution (profile blocks resolved); see
            :func:`~nctune.tune.resolved_space`.
        enqueue: parameter dicts to try first when the study is new.
        should_stop: polled during training; True ends the running trial and the search.
        on_trial: called with a :class:`TrialRecord` as a trial starts, advances and ends.
        progress: ``progress(phase, done, total, info=...)`` for the running trial.
        on_wait: called with the trials other workers hold while this one waits for them.
        profile_seconds: time spent measuring collapse profiles in this worker.
    """

    recipe: Recipe
    out: Path
    url: str
    name: str
    direction: str
    want: int
    base: Prepared
    start: float
    space: dict[str, dict] = field(default_factory=dict)
    enqueue: list[dict[str, Any]] | None = None
    should_stop: Callable[[], bool] | None = None
    on_trial: Callable[[TrialRecord], None] | None = None
    progress: Callable[..., None] | None = None
    on_wait: Callable[[list], None] | None = None
    profile_seconds: float = 0.0
    _profiles: dict[str, CollapseProfile] = field(default_factory=dict, repr=False)

    def profile_of(self, recipe: Recipe, prepared: Prepared | None = None) -> CollapseProfile:
        """The backbone's collapse profile on ``recipe``'s data, measured once per (backbone,
        data, analysis settings, seed) and shared by every trial that needs it.

        Args:
            recipe: the base recipe or a trial's.
            prepared: ``prepare(recipe)`` when the caller already built it.
        """
        key = json.dumps(
            [
                recipe.backbone.model_dump(mode="json"),
                recipe.data.model_dump(
                    mode="json", exclude={"augment", "batch_size", "num_workers"}
                ),
                recipe.analysis.model_dump(mode="json"),
                recipe.seed,
            ],
            sort_keys=True,
        )
        if key not in self._profiles:
            built = prepared or (self.base if recipe is self.recipe else prepare(recipe))
            t0 = time.perf_counter()
            self._profiles[key] = _profile(
                built.backbone, built.plain, recipe, built.device, self.progress, "profile"
            )
            self.profile_seconds += time.perf_counter() - t0
        return self._profiles[key]
