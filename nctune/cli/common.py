"""What every command shares: option aliases, error handling, consoles, progress."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nctune import distributed
from nctune._lock import FolderClaim, recover_orphans
from nctune.errors import NctuneError

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

F = TypeVar("F", bound=Callable[..., Any])

#: stderr console: errors, warnings, progress (never mixed into --json stdout).
err_console = Console(stderr=True)


def default_out(recipe: Path | None, command: str) -> Path:
    """``runs/<recipe stem>/<command>`` (``runs/default/...`` without a recipe file)."""
    return Path("runs") / (recipe.stem if recipe else "default") / command


#: The running command's exit stack: folder claims are released when the command ends.
_command_stack: ContextVar[ExitStack | None] = ContextVar("nctune_command_stack", default=None)


def claim_out(folder: Path, option: str = "--out") -> Path:
    """Claim ``folder`` for the rest of this command, then recover what a killed one left.

    The claim (:class:`nctune._lock.FolderClaim`, a lock file next to the folder) is held
    until the command returns or fails, so a second command on the same folder is refused
    with one line naming the holder. Holding it, set-aside folders of a killed command are
    restored or pointed out (:func:`nctune._lock.recover_orphans`). Call it right after the
    recipe is validated and before looking at what the folder holds. Under ``torchrun`` only
    rank 0 claims (the ranks are one command); a refusal reaches every rank through
    :func:`handle_errors`' agreement on errors.

    Args:
        folder: the result folder.
        option: how messages name it (``--out``, ``--resume``).

    Returns:
        ``folder``, unchanged.

    Raises:
        FolderBusyError: another live nctune process holds the folder.
    """
    stack = _command_stack.get()
    if stack is None:  # pragma: no cover - every command runs under handle_errors
        raise RuntimeError("claim_out() outside a command wrapped by handle_errors")
    if not distributed.is_main():  # under torchrun rank 0 claims for the whole group
        return folder
    stack.enter_context(FolderClaim(folder, option))
    recover_orphans(folder, option)
    return folder


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
        with (
            warnings.catch_warnings(record=True) as caught,
            _quiet_unless_main() as main,
            ExitStack() as held,
        ):
            warnings.simplefilter("default")
            token = _command_stack.set(held)
            try:
                with distributed.process_group():
                    return fn(*args, **kwargs)
            except NctuneError as err:
                err_console.print(  # escaped: a message may hold [brackets] (paths, extras)
                    f"[bold red]error:[/] {escape(_one_line(str(err)))}",
                    highlight=False,
                    soft_wrap=True,
                )
                raise typer.Exit(distributed.exit_code(err)) from None
            except KeyboardInterrupt:  # results are staged: nothing half-written is left
                err_console.print("interrupted; nothing was written to --out", soft_wrap=True)
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
        if not distributed.is_main():
            return None
        with distributed.local():
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        # Only our own and users' warnings; third-party deprecation chatter is noise here.
        if issubclass(w.category, (DeprecationWarning, FutureWarning)):
            continue
        msg = _one_line(str(w.message))
        if msg not in seen:
            seen.add(msg)
            err_console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


def emit_json(text: str) -> None:
    """Write the result JSON alone on stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int | None], None]]:
    """A rich progress bar on stderr, driven by the library's ``progress(phase, done, total)``.

    Only on a terminal: redirected, rich renders nothing but still ends with a blank line,
    which would break "an error is one line on stderr" for logs and scripts.
    """
    if not enabled or not err_console.is_terminal:
        yield lambda phase, done, total, info="": None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int | None, info: str = "") -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total, info=info)
        bar.update(tasks[phase], completed=done, total=total, info=info)

    with bar:
        yield update
