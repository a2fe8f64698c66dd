"""``train.mlflow``: a finished run logged to MLflow (``pip install 'nctune[mlflow]'``).

With ``train.mlflow`` set to a tracking URI (``file:./mlruns``, a folder, or a server's
``http(s)://`` address), every committed ``finetune`` run becomes one MLflow run in
``train.mlflow_experiment``: the resolved recipe flattened to parameters
(``train.lr``, ``data.source``, …), the per-epoch history as metric histories (step =
epoch), the summary numbers (accuracies, NC1 before and after, trainable share), and the
run folder as artifacts (``report.json`` with the collapse numbers, ``model.safetensors``,
``metrics.csv``, ``training.png``, ``recipe.yaml``). ``nctune tune`` logs one child run per
trial under one parent run for the search folder (``mlflow.parentRunId``).

The tracking URI is checked before anything is written (:func:`check_tracking`); the run
is logged after the run folder is committed, so MLflow never holds a run nctune did not
finish. The client API (``MlflowClient``) is used throughout: no global active run, so
trials and library callers never step on each other.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nctune.errors import ConfigError, one_line

#: MLflow's limits: a parameter value's length and a batch's entries.
_MAX_PARAM = 6000
_BATCH = 100
_HISTORY_KEYS = ("loss", "accuracy", "val_accuracy", "nc1", "lr", "seconds")
_SUMMARY_KEYS = ("val_accuracy", "test_accuracy", "nc1_before", "nc1_after", "trainable_percent")
_SEARCH_TAG = "nctune.search"


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            "train.mlflow: needs the MLflow client (pip install 'nctune[mlflow]')"
        ) from None
    return mlflow


def _local_path(uri: str) -> Path | None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive)
        return Path(uri)
    return None


def check_tracking(train: Any) -> None:
    """Refuse an unusable ``train.mlflow`` before any file is written.

    A local store must be a folder or creatable in a writable folder; a server must answer
    its ``/health`` endpoint within 5 s. Nothing is created.

    Args:
        train: the recipe's ``train`` section.

    Raises:
        ConfigError: MLflow is not installed, or the store is unreachable or unwritable —
            one line naming ``train.mlflow``.
    """
    uri = getattr(train, "mlflow", None)
    if not uri:
        return
    _mlflow()
    path = _local_path(uri)
    if path is not None:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"train.mlflow: {path} is a file, not a tracking folder")
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not _writable(parent):
            raise ConfigError(f"train.mlflow: {parent} is not a writable folder for {uri}")
        return
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return  # databricks, sqlite, …: MLflow's own checks apply when the run is logged
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            pass
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"train.mlflow: tracking server {uri} is unreachable ({one_line(str(reason), 100)}); "
            "start it or fix the URI"
        ) from None


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = ("null" if value is None else str(value))[:_MAX_PARAM]
    return out


def _client(train: Any) -> tuple[Any, str]:
    mlflow = _mlflow()
    if _local_path(train.mlflow) is not None:
        # MLflow 3 refuses the file store unless asked; a file: URI in a recipe is that ask
        # (MLFLOW_ALLOW_FILE_STORE=false in the environment still wins)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=train.mlflow)
    name = train.mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    exp_id = experiment.experiment_id if experiment else client.create_experiment(name)
    return client, exp_id


def search_parent(train: Any, out: str | Path) -> str | None:
    """The parent run of a search folder's trials (made by the first trial that logs).

    Args:
        train: the recipe's ``train`` section.
        out: the search folder (its resolved path tags the parent run).

    Returns:
        The parent run's id, or None without ``train.mlflow``.
    """
    if not getattr(train, "mlflow", None):
        return None
    client, exp_id = _client(train)
    key = str(Path(out).resolve())
    found = client.search_runs([exp_id], filter_string=f"tags.`{_SEARCH_TAG}` = '{key}'")
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=Path(out).name, tags={_SEARCH_TAG: key})
    return run.info.run_id


def log_run(
    recipe: Any,
    run_dir: str | Path,
    result: Any,
    *,
    parent: str | None = None,
    run_name: str | None = None,
) -> str | None:
    """Log a committed run folder to MLflow (params, metric histories, artifacts).

    Args:
        recipe: the run's recipe (``recipe.train.mlflow`` names the store).
        run_dir: the committed run folder (its files become the artifacts).
        result: the run's ``RunResult`` (``history`` and the summary numbers).
        parent: a parent run id (``nctune tune``'s search run).
        run_name: the MLflow run name (default ``train.mlflow_run_name``, else the folder).

    Returns:
        The MLflow run id, or None without ``train.mlflow``.
    """
    train = recipe.train
    if not getattr(train, "mlflow", None):
        return None
    _mlflow()
    from mlflow.entities import Metric, Param

    client, exp_id = _client(train)
    tags = {"mlflow.parentRunId": parent} if parent else {}
    name = run_name or train.mlflow_run_name or Path(run_dir).name
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    try:
        params = [Param(k, v) for k, v in _flatten(recipe.model_dump(mode="json")).items()]
        now = int(time.time() * 1000)
        metrics = []
        for epoch in getattr(result, "history", []) or []:
            row = epoch if isinstance(epoch, Mapping) else vars(epoch)
            for key in _HISTORY_KEYS:
                if row.get(key) is not None:
                    metrics.append(Metric(key, float(row[key]), now, int(row["epoch"])))
        doc = result.to_dict()
        for key in _SUMMARY_KEYS:
            if isinstance(doc.get(key), (int, float)):
                metrics.append(Metric(f"final_{key}", float(doc[key]), now, 0))
        for i in range(0, max(len(params), len(metrics)), _BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + _BATCH], params=params[i : i + _BATCH])
        client.log_artifacts(run_id, str(run_dir))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    if parent:  # the search run ends with its latest trial (a search has no "last" one)
        client.set_terminated(parent, "FINISHED")
    return run_id
