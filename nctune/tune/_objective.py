"""One trial: sample → recipe → its run folder → ``finetune`` (pruned per epoch) → score."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nctune.errors import ConfigError, Interrupted, NctuneError, one_line
from nctune.finetune import finetune, prepare
from nctune.runs._io import atomic_write_json
from nctune.runs.folder import RunFolder
from nctune.training.callbacks import LambdaCallback
from nctune.training.mlflow import log_run, search_parent
from nctune.training.train import EpochStats
from nctune.tune._result import TrialRecord
from nctune.tune._search import Search
from nctune.tune._space import suggest, trial_recipe

CACHE_DIR = "prefix-cache"
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def queued_params(t: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters: those it was queued with (a waiting trial has no others yet),
    and those it suggested."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def _is_retry(t: FrozenTrial) -> bool:
    """Queued again for a trial that failed: a dead worker's (Optuna's retry callback), or a
    stopped one's (:class:`Objective`)."""
    return bool(t.system_attrs.get("retry_history")) or "retry_of" in t.user_attrs


class _Interrupted(Exception):
    """A stop request ended a trial mid-way (it is failed, and re-queued for a re-run)."""


class _Surplus(Exception):
    """Another worker already started the study's last trial; this one never ran."""


class Objective:
    """One trial: sample → recipe → run folder → finetune (pruned per epoch) → score."""

    def __init__(self, search: Search, *, heartbeat: bool) -> None:
        """Trials of ``search``; with a ``heartbeat`` (SQL storages) a trial that another
        worker's running trials make surplus is not run."""
        self.search, self.heartbeat = search, heartbeat
        self.recipe, self.space, self.out = search.recipe, search.space, search.out
        self.failed, self.interrupted = 0, False

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except _Surplus:
            trial.set_user_attr("surplus", True)
            raise
        except (_Interrupted, Interrupted) as err:
            # Interrupted: the stop reached the trial before training (its profile or
            # prefix cache pass); finetune returns `interrupted` only from training
            self.interrupted = True
            self.failed += 1
            trial.set_user_attr("fail_reason", "interrupted (queued again for a re-run)")
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            # an Exception (Interrupted is a KeyboardInterrupt): Optuna records the trial as
            # failed and the study loop sees `interrupted`, instead of a Ctrl-C escaping
            raise _Interrupted from err
        except Exception as err:
            self.failed += 1
            reason = one_line(err)
            trial.set_user_attr("fail_reason", one_line(reason, 500))
            trial.set_user_attr("bad_input", isinstance(err, NctuneError))
            self._record(trial, "FAIL", reason=reason)
            raise

    def _surplus(self, trial: optuna.Trial) -> bool:
        earlier = [
            t
            for t in trial.study.get_trials(deepcopy=False)
            if t.number < trial.number
            and t.state in (*FINISHED, TrialState.RUNNING)
            and not t.user_attrs.get("surplus")
        ]
        return len(earlier) >= self.search.want

    def duplicate(self, trial: optuna.Trial) -> bool:
        """On a grid: True for a trial that is no queued point (started for a waiting trial
        that another worker took first), or whose point an earlier trial holds (two workers
        queued the grid at the same moment). A retry of a failed point is no duplicate."""
        trials = trial.study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        point = json.dumps(queued_params(me), sort_keys=True)
        if "fixed_params" not in me.system_attrs and not _is_retry(me):
            return True
        return any(
            t.number < me.number
            and not t.user_attrs.get("surplus")
            and not (t.state == TrialState.FAIL and _is_retry(me))
            and json.dumps(queued_params(t), sort_keys=True) == point
            for t in trials
        )

    def _record(self, trial, state: str, **kw) -> None:
        if self.search.on_trial is not None:
            self.search.on_trial(TrialRecord(trial.number, state, dict(trial.params), **kw))

    def _run(self, trial: optuna.Trial) -> float:
        if self.heartbeat and self._surplus(trial):
            raise _Surplus
        if self.recipe.search.sampler == "grid" and self.duplicate(trial):
            raise _Surplus
        values = suggest(trial, self.space)
        with RunFolder(self.out / TRIALS_DIR / str(trial.number), "trial") as run:
            # trial numbers are unique and the folder is this study's (checked by _owner)
            run.create(keep_old=False)
            trial.set_user_attr("run_dir", str(run.path))
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            self._record(trial, "RUNNING", run_dir=str(run.path))
            try:
                return self._train(trial, values, run)
            except BaseException as err:
                # a stopped trial keeps its recipe and a note of what happened, not its
                # checkpoint
                run.drop_checkpoint()
                state = "PRUNED" if isinstance(err, optuna.TrialPruned) else "FAIL"
                atomic_write_json(run.path / TRIAL_FILE, {"state": state, "reason": str(err)})
                raise

    def _train(self, trial: optuna.Trial, values: dict[str, Any], run: RunFolder) -> float:
        metric = self.recipe.search.metric
        t0 = time.perf_counter()  # the trial's wall time: data, model, training, saving
        cfg = trial_recipe(self.recipe, values, source=f"trial {trial.number}")
        run.write_recipe(cfg.to_yaml())
        run_dir = run.path
        built = prepare(cfg)
        # The test split is measured once, on the best trial, when the search ends: choosing
        # among trials must not see it, and a test pass per trial costs about an epoch.
        prepared = built._replace(splits=dataclasses.replace(built.splits, test=None))
        # the profile finetune would measure, measured once per study
        needs = cfg.strategy.needs_profile() or cfg.train.profile_after
        profile = self.search.profile_of(cfg, prepared) if needs else None

        def epoch_end(history: list[EpochStats]) -> None:
            stats = history[-1]
            value = stats.val_accuracy if metric == "val_accuracy" else stats.nc1
            info = {"val_accuracy": stats.val_accuracy, "epochs": stats.epoch}
            self._record(trial, "RUNNING", run_dir=str(run_dir), **info)
            if value is None or not math.isfinite(value):
                return
            trial.report(value, stats.epoch)
            # Pruning after the last epoch would save nothing and throw the result away.
            if stats.epoch < cfg.train.epochs and trial.should_prune():
                trial.set_user_attr("epochs", stats.epoch)
                trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
                accs = [e.val_accuracy for e in history if e.val_accuracy is not None]
                trial.set_user_attr("val_accuracy", max(accs) if accs else None)
                trial.set_user_attr("fail_reason", f"pruned after epoch {stats.epoch}")
                self._record(trial, "PRUNED", reason=f"pruned after epoch {stats.epoch}", **info)
                raise optuna.TrialPruned(f"pruned after epoch {stats.epoch}")

        result = finetune(
            cfg,
            run_dir=run_dir,
            callbacks=LambdaCallback(
                should_stop=self.search.should_stop,
                on_progress=self.search.progress,
                on_epoch_end=epoch_end,
            ),
            prepared=prepared,
            profile=profile,
            shared_cache_dir=self.out / CACHE_DIR,
        )
        if result.interrupted:
            raise _Interrupted
        run.commit(result)  # model, report and training plot; the checkpoint goes
        # train.mlflow: one child run per trial under the search folder's parent run
        parent = search_parent(cfg.train, self.out)
        log_run(cfg, run_dir, result, parent=parent, run_name=f"trial {trial.number}")
        doc = result.to_dict()
        attrs = {
            "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy,
            "nc1_after": result.nc1_after,
            "trainable_percent": doc["trainable_percent"],
            "tuned_layers": result.tuned_layers,
            "epochs": len(result.history),
            "wall_seconds": time.perf_counter() - t0,
            "cache": result.cache,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        score = result.val_accuracy if metric == "val_accuracy" else result.nc1_after
        if score is None or not math.isfinite(score):
            raise ConfigError(f"trial {trial.number}: search.metric {metric} is undefined")
        self._record(
            trial,
            "COMPLETE",
            value=score,
            run_dir=str(run_dir),
            **{k: v for k, v in attrs.items() if k != "cache"},
        )
        return score
