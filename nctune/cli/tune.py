"""``nctune tune``: a collapse-aware Optuna search whose trials are ``finetune`` runs."""

from __future__ import annotations

import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape

from nctune.cli import common
from nctune.cli.common import (
    JsonOpt,
    OutOpt,
    QuietOpt,
    RecipeArg,
    SetOpt,
    StopFlag,
    ThreadsOpt,
    VerboseOpt,
    _show_warnings,
    apply_threads,
    claim_out,
    default_out,
    err_console,
    handle_errors,
    notice,
    print_error,
    progress_bar,
)
from nctune.cli.render import Output, render
from nctune.runs._io import check_writable

TrialsOpt = Annotated[
    int | None,
    typer.Option(
        "--trials",
        "-n",
        min=1,
        help="Finished trials the study should hold (default: search.trials).",
        show_default=False,
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL (postgresql+psycopg://…), journal:PATH or a .log file; default: sqlite in --out.",
        show_default=False,
    ),
]
StudyOpt = Annotated[
    str | None,
    typer.Option(
        "--study", help="Study name (default: the --out folder's name).", show_default=False
    ),
]


class _SearchStop(StopFlag):
    """A search's stop flag: the running trial ends at its next step and is queued again for
    the next run of the command (a trial keeps no checkpoint), finished trials stay."""

    message = (
        "[yellow]stopping after this step; the running trial will be queued again, finished "
        "trials are kept…[/] (Ctrl-C again to abort)"
    )


@contextmanager
def _said_at_once(category: type[Warning]) -> Iterator[None]:
    """Warnings of ``category`` show the moment they are raised (advice worth reading
    before the trials run, not after them); every other warning waits for the end of the
    command as usual."""
    with warnings.catch_warnings():
        later = warnings.showwarning  # handle_errors' recorder

        def show(message, cat, filename, lineno, file=None, line=None) -> None:
            if issubclass(cat, category):
                _show_warnings([warnings.WarningMessage(message, cat, filename, lineno)])
            else:
                later(message, cat, filename, lineno, file, line)

        warnings.showwarning = show
        yield


class _WaitNotice:
    """One line on stderr each time what this worker waits for changes: the trials other
    workers hold at the end of a study, whose, since when, and how long until a silent one
    is failed and retried (a killed worker's trial would otherwise hold a re-run silent for
    the whole grace period); and one when a dead worker's trial is retried at once."""

    def __init__(self) -> None:
        self.said: set[tuple[int, bool]] = set()

    def __call__(self, held: list) -> None:
        now = {(h.number, h.dead) for h in held}
        if now <= self.said or common._verbosity < 0:
            return
        self.said |= now
        for h in held:
            since = f", since {h.since:%H:%M:%S}" if h.since else ""
            whose = f"worker {h.worker}" if h.worker else "a worker"
            if h.dead and h.left <= 0:
                notice(f"trial {h.number}: {whose}{since} is gone from this machine; retried now")
                continue
            state = (
                f"{whose}, gone from this machine{since}; retried in {h.left:.0f}s"
                if h.dead
                else f"{whose}{since}, silent {h.silent:.0f}s; if it stays silent, failed and "
                f"retried in {h.left:.0f}s (search.grace)"
            )
            notice(f"waiting for trial {h.number} ({state})")


@handle_errors
def tune(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    trials: TrialsOpt = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    out: OutOpt = None,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Search the recipe's search.space with Optuna; each trial is a finetune run.

    Writes DIR/search.json, DIR/search.png, DIR/best.yaml (run it with nctune finetune) and
    DIR/trials/<n>/. Re-running the same command continues the study; workers given the same
    --storage and --study share it.
    """
    from nctune.config import load_recipe

    # validated before torch and timm load: a typo is refused in a fraction of a second
    cfg = load_recipe(recipe, set_)
    from nctune.report.search import search_tables, trials_table
    from nctune.tune import SearchFailedError, SmallValidationWarning
    from nctune.tune import tune as run_tune

    cfg = apply_threads(cfg, threads)
    # a shared claim: workers of one search share --out, any other command is refused
    folder = claim_out(check_writable(out or default_out(recipe, "tune")), shared=True)
    rows: dict[int, object] = {}
    live = Live(trials_table([]), console=err_console, transient=True, auto_refresh=False)

    def on_trial(record) -> None:
        old = rows.get(record.number)
        if old is not None:  # an epoch update carries what it knows; keep the rest
            for key, value in vars(record).items():
                if value is None:
                    setattr(record, key, getattr(old, key))
        rows[record.number] = record
        if err_console.is_terminal:
            live.update(trials_table(list(rows.values()), title="Trials"), refresh=True)

    try:
        with (
            _SearchStop() as stop,
            progress_bar() as progress,
            _said_at_once(SmallValidationWarning),  # a too-small val split: said up front
        ):
            if err_console.is_terminal:
                live.start()
            try:
                result = run_tune(
                    cfg,
                    out=folder,
                    trials=trials,
                    storage=storage,
                    study_name=study,
                    should_stop=stop,
                    on_trial=on_trial,
                    progress=progress,
                    on_wait=_WaitNotice(),
                )
            finally:
                live.stop()
    except SearchFailedError as err:
        if err.bad_input:
            raise
        print_error(err)
        raise typer.Exit(1) from None
    body = list(search_tables(result))
    if result.best is not None:
        body.append(
            f"Best: trial {result.best.number} ({result.metric} {result.best.value:.4g}); "
            f"reproduce it with [cyan]nctune finetune {escape(str(result.best_recipe))}[/]"
        )
    summary = Output(
        result.to_dict(),
        body=body,
        folder=Path(result.out),
        files=("search.json", "search.png", "best.yaml", "trials/"),
        note=f"; study {escape(result.study_name)} in {escape(result.storage)}",
    )
    render(summary, json_)
    if result.interrupted:
        notice(
            "interrupted; finished trials are kept in the study: run the same command to continue"
        )
        raise typer.Exit(128 + (stop.signum or signal.SIGINT))
