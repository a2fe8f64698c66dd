"""Collapse-aware hyper-parameter search: an Optuna study whose trials are ``finetune`` runs.

What nctune adds to a plain Optuna loop:

* every trial runs :func:`nctune.finetune.finetune` — the code path of ``nctune
  finetune`` — with the trial's values set at dotted recipe paths, in its own run folder
  ``OUT/trials/<number>`` (``nctune finetune OUT/best.yaml`` reproduces the best one);
* the search space may come from collapse: ``strategy.layers: {blocks_from_profile: k}``
  offers the k blocks the recipe's selection rule ranks best on the backbone's NC
  profile, measured once per (backbone, data, seed) and shared by every trial;
* frozen-prefix features are cached once per (prefix weights, block, data, transform) in
  ``OUT/prefix-cache`` and read by every later trial that tunes the same block;
* trials report validation accuracy after every epoch, so the pruner stops poor ones;
  with ``search.metric: nc1_after`` they are scored (and pruned) by the head-input NC1 on
  the training split instead, for validation splits too small to rank them — which the
  search says before its first trial (:class:`SmallValidationWarning`).

Several workers (processes, machines) share a study through its storage: SQLite in
``OUT/study.db`` by default, any SQLAlchemy URL (PostgreSQL, MySQL), or an Optuna
journal file (``journal:PATH`` or a path ending in ``.log``). With a SQL storage a
running trial sends a heartbeat; a trial whose worker died is marked failed after the
grace period (after one missed heartbeat when that worker ran on this machine and its
process is gone) and retried once (Optuna's retry callback). Re-running the same search
continues the study until it holds ``search.trials`` finished (complete or pruned) trials.
A search folder belongs to one study (``OUT/study.json``): another study is refused there,
never let overwrite its trials. A grid search queues its points and runs each once.

The library never prints: progress goes to the ``on_trial`` and ``progress`` callbacks
(and what a worker waits for to ``on_wait``), and the result is a :class:`SearchResult`.
"""

from nctune.tune._objective import CACHE_DIR, TRIAL_FILE, TRIALS_DIR
from nctune.tune._result import SearchFailedError, SearchResult, TrialRecord
from nctune.tune._space import rank_blocks, trial_recipe
from nctune.tune._storage import open_storage
from nctune.tune._study import (
    BEST_RECIPE,
    PLOT_FILE,
    SEARCH_FILE,
    STUDY_DB,
    SmallValidationWarning,
    small_val_advice,
    tune,
)

__all__ = [
    "BEST_RECIPE",
    "CACHE_DIR",
    "PLOT_FILE",
    "SEARCH_FILE",
    "STUDY_DB",
    "TRIALS_DIR",
    "TRIAL_FILE",
    "SearchFailedError",
    "SearchResult",
    "SmallValidationWarning",
    "TrialRecord",
    "open_storage",
    "rank_blocks",
    "small_val_advice",
    "trial_recipe",
    "tune",
]
