"""One fine-tuning run's folder, from its claim to its commit (``finetune``, ``tune``'s trials).

The life of a run folder, the same for the ``finetune`` command and for each trial of a
search::

    with RunFolder(path) as run:            # the claim (a lock file next to it), for life
        run.check_new(overwrite)            # or run.check_resume(recipe): before slow work
        run.create(recipe_yaml)             # --overwrite: the old run is set aside, not gone
        try:
            result = finetune(recipe, run_dir=run.path, ...)
        except BaseException as err:
            kept = run.abort(err)           # what stays: a checkpoint, a fresh start, or
            raise                           # the folder as it was before (old run restored)
        finally:
            run.settle()                    # the set-aside old run goes once the new counts
        run.commit(result)                  # model, report, training plot; checkpoint goes

Callers add only their messages and exit codes. Under ``torchrun`` every rank builds the
same folder object and only rank 0 (``main=True``) claims, creates, restores and writes.
"""

from __future__ import annotations

import enum
import os
import shutil
from pathlib import Path
from typing import Any

from nctune.errors import ArtifactError, Interrupted
from nctune.runs._io import RECIPE_FILE, atomic_write_text
from nctune.runs._lock import FolderClaim, recover_orphans
from nctune.runs.artifacts import REPORT_FILE, save_run
from nctune.training.checkpoint import CHECKPOINT, load_checkpoint

#: the training plot of a finished run
TRAINING_PLOT = "training.png"


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted path (sorted key order) where two nested mappings differ.

    Args:
        a, b: recipes (or any values) as plain data.
        prefix: prepended to the path (used by the recursion).

    Returns:
        ``"train.lr"``-style path of the first difference, ``""`` when two non-mapping
        values differ at the top, or None when ``a == b``.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if a != b else None


class Kept(enum.Enum):
    """What a failed or stopped run left in its folder (:meth:`RunFolder.abort`)."""

    #: the run's last checkpoint: ``--resume`` continues from it
    CHECKPOINT = "checkpoint"
    #: ``recipe.yaml`` alone (stopped before the first checkpoint): ``--resume`` starts afresh
    START = "start"
    #: the folder as it was before the command (the run it was replacing put back)
    BEFORE = "before"


class RunFolder:
    """A fine-tuning run's folder: claimed, checked, created, then committed or aborted.

    Args:
        path: the run folder.
        option: how messages name it (``--out``, ``--resume``, ``trial``).
        main: this process writes the folder (False on torchrun ranks other than 0: they
            neither claim, nor create, nor restore anything).
    """

    def __init__(self, path: str | Path, option: str = "--out", *, main: bool = True) -> None:
        self.path = Path(path)
        self.option = option
        self.main = main
        #: this command made the folder (a new run, not a resumed one)
        self.created = False
        #: the run being replaced, set aside as ``.NAME.old-<pid>`` until the new one counts
        self.old: Path | None = None
        self._claim: FolderClaim | None = None

    # ------------------------------------------------------------------ the claim
    def __enter__(self) -> RunFolder:
        return self.claim()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def claim(self) -> RunFolder:
        """Claim the folder (:class:`~nctune.runs._lock.FolderClaim`), then restore or point
        out what a killed command left next to it (:func:`~nctune.runs._lock.recover_orphans`).

        Raises:
            FolderBusyError: another live nctune process holds the folder.
            ArtifactError: the lock file cannot be created, or is not a plain file.
        """
        if self.main and self._claim is None:
            claim = FolderClaim(self.path, self.option).acquire()
            try:
                recover_orphans(self.path, self.option)
            except BaseException:
                claim.release()
                raise
            self._claim = claim
        return self

    def release(self) -> None:
        """Give the claim up (idempotent)."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    # ------------------------------------------------------------------ checks
    def has_checkpoint(self) -> bool:
        """Whether the folder holds a checkpoint to resume from."""
        return (self.path / CHECKPOINT).is_file()

    def finished(self) -> bool:
        """Whether the folder holds a finished run (a report and no checkpoint)."""
        return (self.path / REPORT_FILE).is_file() and not self.has_checkpoint()

    def check_new(self, overwrite: bool = False) -> None:
        """Refuse a non-empty folder for a new run unless ``overwrite``.

        Raises:
            ArtifactError: the folder holds something; the message says whether it can be
                resumed (a checkpoint), only replaced (a finished run), or neither.
        """
        run_dir = self.path
        if overwrite or not run_dir.exists() or not any(run_dir.iterdir()):
            return
        if self.finished():
            raise ArtifactError(
                f"--out {run_dir}: already holds a run, and it finished — use --overwrite to replace it, or another folder"
            )
        # --resume only where there is a checkpoint to resume from
        hint = f"continue it with --resume {run_dir}, " if self.has_checkpoint() else ""
        raise ArtifactError(
            f"--out {run_dir}: already holds a run; {hint}replace it with --overwrite, or pick another folder"
        )

    def check_resume(self, recipe: Any) -> None:
        """Resume only a stopped run of the same recipe, from a readable checkpoint.

        A folder with ``recipe.yaml`` and neither a checkpoint nor a report was stopped
        before its first epoch ended: it passes, and the run starts afresh.

        Args:
            recipe: the :class:`~nctune.config.Recipe` to resume with.

        Raises:
            ArtifactError: not a run folder, a finished run, a damaged ``recipe.yaml``, a
                recipe that differs (the first differing field named), or a damaged
                checkpoint (checked now: one line before the slow profiling pass).
        """
        import yaml

        run_dir, saved = self.path, self.path / RECIPE_FILE
        if not saved.is_file():
            raise ArtifactError(f"--resume {run_dir}: not an nctune run folder (no {RECIPE_FILE})")
        if self.finished():
            raise ArtifactError(
                f"--resume {run_dir}: that run finished — use --out {run_dir} --overwrite to replace it, or another folder"
            )
        try:
            old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            old = err
        if not isinstance(old, dict):
            raise ArtifactError(
                f"--resume {run_dir}: {RECIPE_FILE} is damaged (not a recipe mapping); start a new run"
            )
        diff = first_difference(old, recipe.model_dump(mode="json"))
        if diff:
            raise ArtifactError(
                f"--resume {run_dir}: the recipe differs from the run's ({diff}); resume with the same recipe and --set values"
            )
        load_checkpoint(run_dir)

    # ------------------------------------------------------------------ the run's life
    def create(self, recipe_yaml: str | None = None, *, keep_old: bool = True) -> None:
        """Make the folder of a new run, and write its ``recipe.yaml`` when given.

        Whatever is at ``path`` (an ``--overwrite``-n run, an empty folder) is set aside
        as ``.NAME.old-<pid>``: :meth:`settle` deletes it once the new run has a checkpoint
        or finished, :meth:`abort` puts it back when the new one fails before that, and
        after a SIGKILL the next claim restores it or says where it is.

        Args:
            recipe_yaml: the resolved recipe.
            keep_old: False deletes what was there at once (a search's trial numbers are
                unique: a folder already there is a leftover of a deleted study).
        """
        if not self.main:
            return
        if self.path.exists():
            self.old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, self.old)
            if not keep_old:
                self.settle()
        self.path.mkdir(parents=True)
        self.created = True
        if recipe_yaml is not None:
            self.write_recipe(recipe_yaml)

    def write_recipe(self, recipe_yaml: str) -> None:
        """Write (atomically) the run's resolved ``recipe.yaml``."""
        if self.main:
            atomic_write_text(self.path / RECIPE_FILE, recipe_yaml)

    def abort(self, err: BaseException) -> Kept | None:
        """Decide what stays after ``err`` ended the run before it was committed.

        * a checkpoint in the folder: kept (:attr:`Kept.CHECKPOINT`);
        * a stop (:class:`~nctune.errors.Interrupted`) before the first checkpoint, with no
          run being replaced: ``recipe.yaml`` stays (:attr:`Kept.START`);
        * otherwise the new folder is removed and the run it replaced put back
          (:attr:`Kept.BEFORE`).

        Args:
            err: what ended the run.

        Returns:
            What stayed, or None on a process that does not write the folder.
        """
        if not self.main:
            return None
        if self.has_checkpoint():
            return Kept.CHECKPOINT
        if isinstance(err, Interrupted) and self.old is None:
            return Kept.START
        if self.created:  # nothing worth keeping
            shutil.rmtree(self.path, ignore_errors=True)
            self.created = False
        if self.old is not None:
            os.replace(self.old, self.path)
            self.old = None
        return Kept.BEFORE

    def settle(self) -> None:
        """Delete the set-aside old run: the new one has a checkpoint, or finished."""
        if self.old is not None:
            shutil.rmtree(self.old, ignore_errors=True)
            self.old = None

    def drop_checkpoint(self) -> None:
        """Delete the run's checkpoint (a finished run, or a trial that ended)."""
        if self.main:
            (self.path / CHECKPOINT).unlink(missing_ok=True)

    def commit(self, result: Any) -> Path:
        """Write the finished run, then drop its checkpoint (``model.safetensors`` replaces it).

        Writes ``model.safetensors`` and ``report.json``
        (:func:`~nctune.runs.artifacts.save_run`) and ``training.png``.

        Args:
            result: the finished :class:`~nctune.finetune.RunResult`.

        Returns:
            The run folder.

        Raises:
            ArtifactError: a file cannot be written (the checkpoint is then still there).
        """
        if not self.main:
            return self.path
        # here, not at the top: loading or resuming a run must not import matplotlib
        from nctune.report import plot_training

        save_run(self.path, result)
        plot_training(result, self.path / TRAINING_PLOT)
        self.drop_checkpoint()
        return self.path
