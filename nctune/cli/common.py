"""What every command shares: option aliases, error handling, consoles, progress."""

from __future__ import annotations

import functools
import os
import signal
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nctune.errors import NctuneError, one_line
from nctune.runs._lock import FolderClaim, recover_orphans
from nctune.training.callbacks import Callback  # torch-free: --help stays light
from nctune.training.strategies import STRATEGIES  # torch-free: --help stays light

# Annotated option aliases, defined once (Typer's one-file-per-command style).
RecipeArg = Annotated[
    Path | None,
    typer.Argument(
        help="Recipe YAML file. Omit to use the defaults (Lite0 on Fashion-MNIST at 224 px).",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a recipe field: key.path=value (repeatable).",
        show_default=False,
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="Result folder (default runs/<recipe>/<command>).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result JSON alone on stdout.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="torch CPU threads (recipe field `threads`; DataLoader workers: data.num_workers).",
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output (errors and warnings only).")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="More progress output (batch lines off a terminal).")
]

#: The end of every command's --help: where the fields live, and the overrides used most.
EPILOG = """\b
Recipe fields: docs/recipes.md, or nctune init --fields
Your own images: nctune init --data PATH/TO/IMAGEFOLDER  (writes recipe.yaml)
Most used overrides, --set key.path=value (repeatable):
  data.source=imagefolder data.path=DIR  your images (class folders)
  device=cuda                            auto, cpu, cuda, cuda:1, mps
  train.epochs=5                         epochs
  strategy.name=scl                      {strategies}
  strategy.layers=\\[layer3.1]             blocks to tune (see nctune analyze)
""".format(  # every registered strategy, in registry order, wrapped to fit 80 columns
    strategies=f"\n{' ' * 41}".join(
        textwrap.wrap(", ".join(STRATEGIES), 80 - 41 - 3, break_on_hyphens=False)
    )
)

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")

#: stderr console: errors, warnings, progress (never mixed into --json stdout).
err_console = Console(stderr=True)


def default_out(recipe: Path | None, command: str) -> Path:
    """``runs/<recipe stem>/<command>`` (``runs/default/...`` without a recipe file)."""
    return Path("runs") / (recipe.stem if recipe else "default") / command


#: The running command's exit stack: folder claims are released when the command ends.
_command_stack: ContextVar[ExitStack | None] = ContextVar("nctune_command_stack", default=None)


def hold(claim: C) -> C:
    """Enter ``claim`` (e.g. a :class:`nctune.runs.folder.RunFolder`) until the command ends."""
    stack = _command_stack.get()
    if stack is None:  # pragma: no cover - every command runs under handle_errors
        raise RuntimeError("hold() outside a command wrapped by handle_errors")
    return stack.enter_context(claim)


def claim_out(folder: Path, option: str = "--out", *, shared: bool = False) -> Path:
    """Claim ``folder`` for the rest of this command, then recover what a killed one left.

    The claim (:class:`nctune.runs._lock.FolderClaim`, a lock file next to the folder) is held
    until the command returns or fails, so a second command on the same folder is refused
    with one line naming the holder. Holding it, set-aside folders of a killed command are
    restored or pointed out (:func:`nctune.runs._lock.recover_orphans`). Call it right after the
    recipe is validated and before looking at what the folder holds. Under ``torchrun`` only
    rank 0 claims (the ranks are one command); a refusal reaches every rank through
    :func:`handle_errors`' agreement on errors.

    Args:
        folder: the result folder.
        option: how messages name it (``--out``, ``--resume``).
        shared: a shared claim (``tune`` workers sharing one search folder; see
            :class:`~nctune.runs._lock.FolderClaim`).

    Returns:
        ``folder``, unchanged.

    Raises:
        FolderBusyError: another live nctune process holds the folder.
    """
    if not _dist().is_main():  # under torchrun rank 0 claims for the whole group
        return folder
    hold(FolderClaim(folder, option, shared=shared))
    recover_orphans(folder, option)
    return folder


class StopFlag:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second SIGINT aborts.

    A context manager around the work (its signal handlers), called as ``should_stop``;
    ``signum`` is the first signal received (the exit code is ``128 + signum``).
    """

    #: What the first signal prints (a search's subclass says what happens to its trial).
    message = "[yellow]stopping after this step; saving a checkpoint…[/] (Ctrl-C again to abort)"

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        err_console.print(self.message)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.signum is not None


def claim_results(out: Path, result_file: str) -> Path:
    """``out`` writable, claimed (:func:`claim_out`) and holding no more than an earlier
    ``result_file`` run: the result folder of ``analyze``, ``sweep`` or ``rank``."""
    from nctune.runs._io import check_replaceable, check_writable

    return check_replaceable(claim_out(check_writable(out)), result_file)


def handle_errors(fn: F) -> F:
    """Bad input (NctuneError) → one red line on stderr and exit code 2, no traceback.

    Library warnings are collected and shown as one dim line each after the command.
    Any other exception propagates: it is a bug, Python prints the traceback, exit 1.

    Under ``torchrun`` the command runs inside :func:`nctune.distributed.process_group`:
    only rank 0 prints (the other ranks' stdout and rich console are silenced; a bug's
    traceback still reaches their stderr), and a failure on any rank ends every rank with
    the same one line and exit code.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # each command starts from its own flags: no output level left over from an earlier
        # command in the same process (tests, notebooks); commands without -q/-v get 0
        set_verbosity(kwargs.get("quiet", False), kwargs.get("verbose", False),
                      kwargs.get("json_", False))  # fmt: skip
        with (
            warnings.catch_warnings(record=True) as caught,
            _quiet_unless_main() as main,
            ExitStack() as held,
        ):
            warnings.simplefilter("default")
            token = _command_stack.set(held)
            try:
                with _dist().process_group() if _launched() else nullcontext():
                    return fn(*args, **kwargs)
            except NctuneError as err:
                print_error(err)
                # a peer's failure (its own exit code) exists only under torchrun
                raise typer.Exit(_dist().exit_code(err) if _launched() else 2) from None
            except KeyboardInterrupt:  # results are staged: nothing half-written is left
                notice("interrupted; nothing was written to --out")
                raise typer.Exit(130) from None
            finally:
                _command_stack.reset(token)
                if main:
                    _show_warnings(caught)

    return wrapper  # type: ignore[return-value]


def main_process_only(fn: F) -> F:
    """For a command that is one process's work (``predict``, ``export``, ``rank``): under
    ``torchrun`` rank 0 runs it alone, as a one-process run (no collectives), and the other
    ranks return at once and wait for its outcome (put it under :func:`handle_errors`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _launched():  # one process: it is rank 0 (and torch need not load yet)
            return fn(*args, **kwargs)
        if not _dist().is_main():
            return None
        with _dist().local():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def _quiet_unless_main() -> Iterator[bool]:
    """Silence stdout and the stderr console on every torchrun rank but 0, so each line
    (results, progress, the agreed error) appears once. Yields whether this is rank 0."""
    rank = os.environ.get("RANK", "0")
    if rank.strip() in ("", "0") or "WORLD_SIZE" not in os.environ:
        yield True
        return
    console = err_console
    stdout, quiet = sys.stdout, console.quiet
    sys.stdout, console.quiet = open(os.devnull, "w"), True  # noqa: SIM115
    try:
        yield False
    finally:
        sys.stdout.close()
        sys.stdout, console.quiet = stdout, quiet


def _launched() -> bool:
    """Whether a launcher (torchrun) started this process: only then does a command need
    :mod:`nctune.distributed` before it runs, so outside one a bad recipe or ``--set`` is
    refused before torch loads."""
    return "WORLD_SIZE" in os.environ


def _dist():
    """:mod:`nctune.distributed`, imported when a command runs: it loads torch, and
    ``nctune --help`` must not."""
    from nctune import distributed

    return distributed


def print_error(err: BaseException | str) -> None:
    """The one error line on stderr: ``error: <the error on one line>``."""
    # escaped: a message may hold [brackets] (paths, extras)
    err_console.print(
        f"[bold red]error:[/] {escape(one_line(err))}", highlight=False, soft_wrap=True
    )


def notice(text: str) -> None:
    """A plain line (no markup) on stderr for the user, e.g. how to continue a stopped run."""
    err_console.print(escape(text), soft_wrap=True, highlight=False)


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        # Only our own and users' warnings; third-party deprecation chatter is noise here.
        if issubclass(w.category, (DeprecationWarning, FutureWarning)):
            continue
        msg = one_line(str(w.message))
        if msg not in seen:
            seen.add(msg)
            err_console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


#: Output level of the progress display: -1 quiet, 0 normal, 1 verbose (-q / -v).
_verbosity = 0


#: ``--json`` off a terminal: scripts read stdout and expect a quiet stderr (``-v`` overrides).
_json_mode = False


def set_verbosity(quiet: bool = False, verbose: bool = False, json_: bool = False) -> None:
    """``-q`` silences progress (errors and warnings still show); ``-v`` adds batch lines.

    With ``--json`` and stderr not a terminal, progress lines are off unless ``-v``.
    """
    global _verbosity, _json_mode
    _verbosity = -1 if quiet else 1 if verbose else 0
    _json_mode = json_


def apply_threads(cfg: Any, threads: int | None) -> Any:
    """``--threads N`` (or the recipe's ``threads``) → ``torch.set_num_threads``.

    The flag wins over the recipe and is written into it, so the saved recipe.yaml says
    what ran.
    """
    if threads is not None:
        cfg = cfg.model_copy(update={"threads": threads})
    if cfg.threads:
        import torch  # here, not at the top: `nctune --help` stays free of torch

        torch.set_num_threads(cfg.threads)
    return cfg


def _seconds(s: float) -> str:
    s = max(0, round(s))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


def epoch_line(e: Any, total_epochs: int | None, eta: float | None) -> str:
    """One plain log line for a finished epoch (the fields docs/cli.md documents).

    ``epoch 2/4 loss=0.6931 acc=51.2% val_acc=48.0% nc1=2.314 time=12.3s eta=37s``; a
    field without a value (no validation split, NC1 not tracked) shows ``-``.
    """
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    of = f"/{total_epochs}" if total_epochs else ""
    return (
        f"epoch {e.epoch}{of} loss={e.loss:.4f} acc={pct(e.accuracy)} "
        f"val_acc={pct(e.val_accuracy)} nc1={'-' if e.nc1 is None else format(e.nc1, '.4g')} "
        f"time={e.seconds:.1f}s eta={'-' if eta is None else _seconds(eta)}"
    )


#: Phases whose steps are whole runs (a sweep's fine-tunings, a search's trials): off a
#: terminal every step gets its line.
RUN_PHASES = ("sweep", "trial", "trials", "rank")


class Reporter(Callback):
    """Renders the library's progress callbacks: rich bars on a terminal, log lines elsewhere.

    The library reports through two hooks of the :class:`~nctune.training.callbacks.Callback`
    a reporter is, and never prints:

    * ``on_progress(phase, done, total, info="")`` (also ``reporter(...)``) — a pass advanced;
    * ``on_epoch_end(history)`` (also ``reporter.epoch(history)``) — an epoch finished.

    On a terminal each phase gets a bar with its total, and each finished epoch a line
    above the bars. Otherwise (CI, ``nohup``, notebooks) stderr gets one line when a
    phase starts, one when it ends, one per epoch (:func:`epoch_line`) and one per run of
    a :data:`RUN_PHASES` phase; with ``-v``
    also a line at most every 5 s inside a phase. ``-q`` shows nothing.
    """

    def __init__(self, enabled: bool = True, epochs: int | None = None) -> None:
        # under torchrun rank 0 alone shows progress (every rank runs the same passes)
        self.level = _verbosity if enabled and _dist().is_main() else -1
        self.epochs = epochs
        self.console = err_console
        self.tty = self.console.is_terminal
        if _json_mode and not self.tty and self.level == 0:
            self.level = -1
        self.bar: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.announced: set[str] = set()
        self.last_line = 0.0
        self.epoch_seconds: list[float] = []
        self.seen_epochs = 0

    def __enter__(self) -> Reporter:
        if self.level >= 0 and self.tty:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=True,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def __call__(self, phase: str, done: int, total: int | None, info: str = "") -> None:
        if self.level < 0:
            return
        now = time.monotonic()
        if self.bar is not None:
            if phase not in self.tasks:
                for name, task in list(self.tasks.items()):  # finished passes make room
                    if self.bar.tasks[self.bar.task_ids.index(task)].finished:
                        self.bar.remove_task(task)
                        del self.tasks[name]
                self.tasks[phase] = self.bar.add_task(phase, total=total, info=info)
            self.bar.update(self.tasks[phase], completed=done, total=total, info=info)
            return
        of = f"/{total}" if total else ""
        runs = phase.split(" ")[0] in RUN_PHASES
        unit = "runs" if runs else "batches"
        epoch = phase.startswith("epoch ")  # epochs get their own line, with the metrics
        if phase not in self.started or (done == 0 and not runs):
            # no line yet: the first finished step tells how long the pass will take (and a
            # pass that fails on its first batch leaves the error as the only line)
            self.started[phase] = now
            self.announced.discard(phase)
            return
        elapsed = now - self.started[phase]
        if runs:  # each step is a whole run: a line each, with what it gave
            self._line(f"{phase}: {done}{of} {unit} in {_seconds(elapsed)} {info}".rstrip())
        elif total is not None and done >= total:
            if not epoch:
                self._line(f"{phase}: done {done}{of} {unit} in {elapsed:.1f}s")
        elif phase not in self.announced and (not epoch or self.level > 0):
            self.announced.add(phase)
            eta = f", eta {_seconds(elapsed / done * (total - done))}" if total and done else ""
            self._line(f"{phase}: started, {done}{of} {unit}{eta}")
        elif self.level > 0 and now - self.last_line >= 5.0:
            self._line(f"{phase}: {done}{of} {unit} {info}".rstrip())
        else:
            return
        self.last_line = now

    def on_progress(self, phase: str, done: int, total: int | None, info: str = "") -> None:
        self(phase, done, total, info)

    def on_epoch_end(self, history: list) -> None:
        self.epoch(history)

    def epoch(self, history: list) -> None:
        """An epoch finished: one line with its metrics and the time left."""
        if not history:
            return
        new = history[self.seen_epochs :] if self.seen_epochs else history[-1:]
        self.seen_epochs = len(history)
        for e in new:
            self.epoch_seconds.append(e.seconds)
            if self.level < 0:
                continue
            eta = None
            if self.epochs:
                mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
                eta = mean * max(0, self.epochs - e.epoch)
            self._line(epoch_line(e, self.epochs, eta))


@contextmanager
def progress_bar(enabled: bool = True, epochs: int | None = None) -> Iterator[Reporter]:
    """A :class:`Reporter` on stderr, driven by the library's ``progress(phase, done, total)``.

    Args:
        enabled: False shows nothing (as ``-q``).
        epochs: the run's epoch count, for the epoch lines and their ETA.
    """
    with Reporter(enabled, epochs) as reporter:
        yield reporter
