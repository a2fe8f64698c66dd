"""What a search returns: one record per trial and the whole search."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from nctune.errors import NctuneError


class SearchFailedError(NctuneError):
    """Every trial of a search failed; the message carries the first trial's reason.

    Attributes:
        bad_input: the first failure was bad input (an :class:`~nctune.errors.NctuneError`,
            e.g. a sampled combination the recipe refuses): the CLI exits 2, else 1.
    """

    def __init__(self, message: str, bad_input: bool) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass
class TrialRecord:
    """One trial as the report shows it.

    Attributes:
        number: Optuna's trial number (its run folder is ``OUT/trials/<number>``).
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``.
        params: dotted recipe path → sampled value.
        value: the trial's score (``search.metric``), None unless complete.
        val_accuracy, test_accuracy: the run's accuracies.
        nc1_after: NC1 of the head's input after training (training split, eval mode).
        trainable_percent: share of the parameters that trained.
        tuned_layers: the blocks that trained.
        epochs: epochs run (fewer than asked when pruned).
        wall_seconds: the trial's wall time.
        run_dir: the trial's run folder.
        reason: why it failed or was pruned.
    """

    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    nc1_after: float | None = None
    trainable_percent: float | None = None
    tuned_layers: list[str] | None = None
    epochs: int | None = None
    wall_seconds: float | None = None
    run_dir: str | None = None
    reason: str | None = None

    @classmethod
    def from_frozen(cls, t: FrozenTrial) -> TrialRecord:
        a = t.user_attrs
        return cls(
            number=t.number,
            state=t.state.name,
            params=dict(t.params),
            value=t.value if t.state == TrialState.COMPLETE else None,
            val_accuracy=a.get("val_accuracy"),
            test_accuracy=a.get("test_accuracy"),
            nc1_after=a.get("nc1_after"),
            trainable_percent=a.get("trainable_percent"),
            tuned_layers=a.get("tuned_layers"),
            epochs=a.get("epochs", len(t.intermediate_values) or None),
            wall_seconds=a.get("wall_seconds"),
            run_dir=a.get("run_dir"),
            reason=a.get("fail_reason") or (_silent(t) if t.state == TrialState.FAIL else None),
        )


def _silent(t: FrozenTrial) -> str:
    """Why a trial failed without saying why: its worker died (killed, out of memory, the
    machine lost) and the heartbeat check failed it; Optuna's callback retries it once."""
    worker = t.user_attrs.get("worker")
    again = "not retried again" if t.system_attrs.get("retry_history") else "retried once"
    return (
        f"its worker{f' {worker}' if worker else ''} went silent (no heartbeat within "
        f"search.grace); {again}"
    )


@dataclass
class SearchResult:
    """A finished (or stopped) search (``search.json`` is :meth:`to_dict`).

    Attributes:
        study_name, storage: where the study lives (the storage URL without a password).
        out: the search folder.
        metric, direction: what was optimised.
        trials_requested: the finished trials the study should hold.
        space: dotted path → the distribution searched (profile blocks resolved).
        trials: every trial of the study, in number order.
        best: the best complete trial (None when none completed).
        best_recipe: ``OUT/best.yaml``, the best trial's resolved recipe.
        importances: parameter → importance (Optuna's default evaluator; empty with fewer
            than two complete trials or nothing varying).
        profile_seconds: time spent measuring collapse profiles in this worker.
        seconds: this worker's wall time.
        interrupted: a stop request ended this worker's search early.
    """

    study_name: str
    storage: str
    out: str
    metric: str
    direction: str
    trials_requested: int
    space: dict[str, Any]
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_recipe: str | None
    importances: dict[str, float] = field(default_factory=dict)
    profile_seconds: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False

    def count(self, state: str) -> int:
        """Trials in ``state`` (``'COMPLETE'``, ``'PRUNED'``, ``'FAIL'``…)."""
        return sum(t.state == state for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        """The ``search.json`` document."""
        out = {k: v for k, v in asdict(self).items() if k not in ("trials", "best")}
        out["counts"] = {s: self.count(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        out["best"] = asdict(self.best) if self.best else None
        out["trials"] = [asdict(t) for t in self.trials]
        return out
