"""``nctune finetune``: train with a strategy, then report collapse versus accuracy."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import Annotated

import typer

from nctune.cli.common import (
    JsonOpt,
    OutOpt,
    QuietOpt,
    RecipeArg,
    SetOpt,
    StopFlag,
    ThreadsOpt,
    VerboseOpt,
    apply_threads,
    default_out,
    handle_errors,
    hold,
    notice,
    progress_bar,
)
from nctune.cli.render import Output, render
from nctune.errors import Interrupted, NctuneError, TrainingError
from nctune.runs._io import check_writable

ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the interrupted run in this folder (same recipe).",
        show_default=False,
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing run in --out.")
]


def _again(recipe: Path | None, set_: list[str] | None, run_dir: Path) -> str:
    """The command that continues this run: the same recipe and --set values (checked)."""
    return shlex.join(
        [
            "nctune",
            "finetune",
            *([str(recipe)] if recipe else []),
            *[arg for s in set_ or [] for arg in ("--set", s)],
            "--resume",
            str(run_dir),
        ]
    )


def _explain_failure(run, err: BaseException, again: str, stop: StopFlag) -> None:
    """Say what ``err`` left in the run folder (:meth:`RunFolder.abort`) and exit with it;
    return (for the caller to re-raise ``err``) when there is nothing to add."""
    from nctune.distributed import PeerFailure
    from nctune.runs.folder import Kept

    kept = run.abort(err)
    code = 128 + (stop.signum or signal.SIGINT)
    if kept is Kept.CHECKPOINT:
        # e.g. a corrupt test image, late (a diverged run names its checkpoint itself:
        # resuming it with the same recipe would diverge again)
        if isinstance(err, NctuneError) and run.created and not isinstance(err, TrainingError):
            hint = f"{err}; the run's checkpoint is kept: fix that and continue with {again}"
            if isinstance(err, PeerFailure):  # another rank's error, with its exit code
                raise PeerFailure(hint, err.code, err.rank) from None
            raise type(err)(hint) from None
        if isinstance(err, KeyboardInterrupt):  # a second Ctrl-C, or a stop between batches
            what = "interrupted" if isinstance(err, Interrupted) else "aborted"
            notice(f"{what}; the last checkpoint in {run.path} is kept: continue with {again}")
            raise typer.Exit(code) from None
    elif kept is Kept.START:
        # stopped between batches before the first epoch ended: nothing half-made is in
        # the folder (recipe.yaml, no checkpoint), and --resume starts it afresh
        notice(f"interrupted before the first checkpoint. Continue with: {again}")
        raise typer.Exit(code) from None


@handle_errors
def finetune(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Fine-tune with the recipe's strategy; report NC1 before/after and accuracy.

    Writes DIR/report.json, DIR/model.safetensors, DIR/training.png and DIR/recipe.yaml;
    checkpoints every epoch so an interrupted run continues with --resume DIR.
    """
    # Here, not at the top: `nctune --help` must not load torch (artifacts → safetensors.torch).
    from nctune.config import load_recipe

    # validated before torch and timm load: a typo is refused in a fraction of a second
    cfg = load_recipe(recipe, set_)
    from nctune.distributed import check, is_main
    from nctune.finetune import finetune as run_finetune
    from nctune.finetune import prepare
    from nctune.report import finetune_tables
    from nctune.runs.folder import RunFolder
    from nctune.training.callbacks import LambdaCallback

    cfg = apply_threads(cfg, threads)
    if resume is not None:
        run = hold(RunFolder(resume, "--resume", main=is_main()))
        run.check_resume(cfg)
    else:
        path = check_writable(out or default_out(recipe, "finetune"))
        run = hold(RunFolder(path, "--out", main=is_main()))
        run.check_new(overwrite)
    prepared = prepare(cfg)  # every bad-input check that needs the backbone/data, before writing
    check()  # under torchrun: every rank checked --out before rank 0 creates it

    stop, again = StopFlag(), _again(recipe, set_, run.path)
    try:
        if resume is None:
            run.create(cfg.to_yaml())  # --overwrite: the old run is set aside, not deleted
        with stop, progress_bar(epochs=cfg.train.epochs) as progress:
            result = run_finetune(
                cfg,
                run_dir=run.path,
                resume=resume is not None,
                callbacks=[progress, LambdaCallback(should_stop=stop)],
                prepared=prepared,
            )
    except BaseException as err:
        _explain_failure(run, err, again, stop)
        raise
    finally:
        run.settle()  # the new run has a checkpoint (or finished): the old one goes
    if result.interrupted:
        notice(f"interrupted; checkpoint saved in {run.path}. Continue with: {again}")
        raise typer.Exit(128 + (stop.signum or signal.SIGINT))
    if not run.main:  # every rank holds the same result; rank 0 writes it
        return
    try:
        run.commit(result)  # model.safetensors, report.json, training.png; checkpoint goes
    except NctuneError as err:  # e.g. a full disk: the final checkpoint is intact
        raise type(err)(
            f"{err}; the run's checkpoint is kept: free space and continue with {again}"
        ) from None
    from nctune.training.mlflow import log_run

    log_run(cfg, run.path, result)  # train.mlflow: the committed run, checked in prepare()
    summary = Output(
        result.to_dict(),
        body=list(finetune_tables(result)),
        folder=run.path,
        files=("report.json", "model.safetensors", "metrics.csv", "training.png", "recipe.yaml"),
    )
    render(summary, json_)
