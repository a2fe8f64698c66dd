"""``nctune finetune``: train with a strategy, then report collapse versus accuracy."""

from __future__ import annotations

import os
import shlex
import shutil
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
    ThreadsOpt,
    VerboseOpt,
    apply_threads,
    claim_out,
    default_out,
    err_console,
    handle_errors,
    progress_bar,
)
from nctune.cli.render import Output, render
from nctune.errors import ArtifactError, Interrupted, NctuneError, TrainingError
from nctune.runs._io import atomic_write_text, check_writable

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


def _first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}"
    return None


def _check_resume(run_dir: Path, cfg) -> None:
    import yaml

    from nctune.runs.artifacts import RECIPE_FILE
    from nctune.training.checkpoint import CHECKPOINT, load_checkpoint

    saved = run_dir / RECIPE_FILE
    if not saved.is_file():
        raise ArtifactError(f"--resume {run_dir}: not an nctune run folder (no {RECIPE_FILE})")
    if (run_dir / "report.json").is_file() and not (run_dir / CHECKPOINT).is_file():
        raise ArtifactError(
            f"--resume {run_dir}: that run finished — use --out {run_dir} --overwrite to replace it, or another folder"
        )
    # No checkpoint and no report: stopped before the first epoch ended; it starts afresh.
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        old = err
    if not isinstance(old, dict):
        raise ArtifactError(
            f"--resume {run_dir}: {RECIPE_FILE} is damaged (not a recipe mapping); start a new run"
        )
    diff = _first_difference(old, cfg.model_dump(mode="json"))
    if diff:
        raise ArtifactError(
            f"--resume {run_dir}: the recipe differs from the run's ({diff}); resume with the same recipe and --set values"
        )
    load_checkpoint(run_dir)  # damaged or truncated: one line now, not after the profiling pass


class _StopFlag:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        err_console.print(
            "[yellow]stopping after this step; saving a checkpoint…[/] (Ctrl-C again to abort)"
        )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.signum is not None


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
    from nctune.distributed import PeerFailure, check, is_main
    from nctune.finetune import finetune as run_finetune
    from nctune.finetune import prepare
    from nctune.report import finetune_tables
    from nctune.runs.artifacts import RECIPE_FILE, save_run
    from nctune.training.callbacks import LambdaCallback
    from nctune.training.checkpoint import CHECKPOINT

    cfg = apply_threads(load_recipe(recipe, set_), threads)
    if resume is not None:
        run_dir = claim_out(resume, "--resume")
        _check_resume(run_dir, cfg)
    else:
        run_dir = claim_out(check_writable(out or default_out(recipe, "finetune")))
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            if (run_dir / "report.json").is_file() and not (run_dir / CHECKPOINT).is_file():
                raise ArtifactError(
                    f"--out {run_dir}: already holds a run, and it finished — use --overwrite to replace it, or another folder"
                )
            # --resume only where there is a checkpoint to resume from
            hint = (
                f"continue it with --resume {run_dir}, " if (run_dir / CHECKPOINT).is_file() else ""
            )
            raise ArtifactError(
                f"--out {run_dir}: already holds a run; {hint}replace it with --overwrite, or pick another folder"
            )
    prepared = prepare(cfg)  # every bad-input check that needs the backbone/data, before writing
    check()  # under torchrun: every rank checked --out before rank 0 creates it
    main = is_main()

    created, old, stop = False, None, _StopFlag()
    # the command that continues this run: the same recipe and --set values, checked on resume
    again = shlex.join(
        [
            "nctune",
            "finetune",
            *([str(recipe)] if recipe else []),
            *[arg for s in set_ or [] for arg in ("--set", s)],
            "--resume",
            str(run_dir),
        ]
    )
    try:
        if resume is None and main:
            if run_dir.exists():  # --overwrite: set the old run aside until the new one exists
                old = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}")
                os.replace(run_dir, old)
            run_dir.mkdir(parents=True)
            created = True
            atomic_write_text(run_dir / RECIPE_FILE, cfg.to_yaml())
        with stop, progress_bar(epochs=cfg.train.epochs) as progress:
            result = run_finetune(
                cfg,
                run_dir=run_dir,
                resume=resume is not None,
                callbacks=[progress, LambdaCallback(should_stop=stop)],
                prepared=prepared,
            )
    except BaseException as err:
        if not main:  # rank 0 alone keeps or cleans up the run folder
            raise
        if (run_dir / CHECKPOINT).exists():
            # e.g. a corrupt test image, late (a diverged run names its checkpoint itself:
            # resuming it with the same recipe would diverge again)
            if isinstance(err, NctuneError) and created and not isinstance(err, TrainingError):
                hint = f"{err}; the run's checkpoint is kept: fix that and continue with {again}"
                if isinstance(err, PeerFailure):  # another rank's error, with its exit code
                    raise PeerFailure(hint, err.code, err.rank) from None
                raise type(err)(hint) from None
            if isinstance(err, KeyboardInterrupt):  # a second Ctrl-C, or a stop between batches
                what = "interrupted" if isinstance(err, Interrupted) else "aborted"
                err_console.print(
                    f"{what}; the last checkpoint in {run_dir} is kept: continue with {again}",
                    soft_wrap=True,
                    highlight=False,
                )
                raise typer.Exit(128 + (stop.signum or signal.SIGINT)) from None
        elif isinstance(err, Interrupted) and (old is None or not created):
            # stopped between batches before the first epoch ended: nothing half-made is in
            # the folder (recipe.yaml, no checkpoint), and --resume starts it afresh
            err_console.print(
                f"interrupted before the first checkpoint. Continue with: {again}",
                soft_wrap=True,
                highlight=False,
            )
            raise typer.Exit(128 + (stop.signum or signal.SIGINT)) from None
        elif created:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: restore the old run
            if old is not None:
                os.replace(old, run_dir)
                old = None
        raise
    finally:
        if old is not None:  # the new run has a checkpoint (or finished): the old one goes
            shutil.rmtree(old, ignore_errors=True)
    if result.interrupted:
        err_console.print(
            f"interrupted; checkpoint saved in {run_dir}. Continue with: {again}",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(128 + (stop.signum or signal.SIGINT))
    if not main:  # every rank holds the same result; rank 0 writes it
        return
    try:
        save_run(run_dir, result)
    except NctuneError as err:  # e.g. a full disk: the final checkpoint is intact
        raise type(err)(
            f"{err}; the run's checkpoint is kept: free space and continue with {again}"
        ) from None
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # complete: model.safetensors replaces it
    summary = Output(
        result.to_dict(),
        body=list(finetune_tables(result)),
        folder=run_dir,
        files=("report.json", "model.safetensors", "metrics.csv", "training.png", "recipe.yaml"),
    )
    render(summary, json_)
