"""The ``nctune`` command line: a thin Typer layer (load recipe → call library → render).

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import Annotated

import typer

from nctune import __version__
from nctune.cli.analyze import analyze
from nctune.cli.common import EPILOG
from nctune.cli.evaluate import evaluate
from nctune.cli.export import export
from nctune.cli.finetune import finetune
from nctune.cli.init import init
from nctune.cli.predict import predict
from nctune.cli.rank import rank
from nctune.cli.shard import shard
from nctune.cli.sweep import sweep
from nctune.cli.tune import tune
from nctune.errors import one_line

app = typer.Typer(
    name="nctune",
    help="Fine-tune pretrained vision backbones guided by neural collapse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # internal errors: a plain traceback to paste in a bug report
)
app.command("init", epilog=EPILOG)(init)
app.command("analyze", epilog=EPILOG)(analyze)
app.command("finetune", epilog=EPILOG)(finetune)
app.command("sweep", epilog=EPILOG)(sweep)
app.command("predict")(predict)  # a run folder, not a recipe: no recipe-field epilog
app.command("export")(export)
app.command("evaluate")(evaluate)
app.command("rank", epilog=EPILOG)(rank)
app.command("tune", epilog=EPILOG)(tune)
app.command("shard")(shard)  # an image folder, not a recipe


def _print_version(value: bool) -> None:
    if value:
        print(f"nctune {__version__}")
        raise typer.Exit()


@app.callback(epilog=EPILOG)
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Fine-tune pretrained vision backbones guided by neural collapse (Li et al., arXiv 2212.12206)."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Click's usage errors (an unknown option or command, a missing value) get the same one
    line on stderr and exit code 2 as every other bad input, instead of a usage box.
    """
    try:  # Typer >= 0.2x carries its own copy of Click; older ones use Click itself
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - depends on the installed Typer
        from click import exceptions as cx

    try:
        code = app(args=argv, prog_name="nctune", standalone_mode=False)
    except cx.NoArgsIsHelpError:  # a bare `nctune`: Typer has printed the help
        sys.exit(2)
    except cx.UsageError as err:
        where = err.ctx.command_path if err.ctx is not None else "nctune"
        message = one_line(err.format_message()).rstrip(".")
        print(f"error: {where}: {message}; see '{where} --help'", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        code = 130
    code = code if isinstance(code, int) else 0
    if argv is None:  # the console script itself, not a caller in the same process
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's final garbage collection.

    After torch and timm are loaded, tearing the interpreter down walks ~400k objects:
    seconds on a loaded machine, after the results are written — a Ctrl-C that is
    honoured at once would still take that long to return the prompt. Everything is
    written atomically before this point; the exit handlers (multiprocessing's worker
    clean-up among them) still run, and the streams are flushed.
    """

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to add
                stream.flush()
        os._exit(code)
