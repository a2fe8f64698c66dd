"""The ``nctune`` command line: a thin Typer layer (load recipe → call library → render).

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import sys

import typer

from nctune.cli.analyze import analyze
from nctune.cli.export import export
from nctune.cli.finetune import finetune
from nctune.cli.predict import predict
from nctune.cli.rank import rank
from nctune.cli.sweep import sweep
from nctune.cli.tune import tune

app = typer.Typer(
    name="nctune",
    help="Fine-tune pretrained vision backbones guided by neural collapse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # internal errors: a plain traceback to paste in a bug report
)
app.command("analyze")(analyze)
app.command("finetune")(finetune)
app.command("sweep")(sweep)
app.command("predict")(predict)
app.command("export")(export)
app.command("rank")(rank)
app.command("tune")(tune)


@app.callback()
def _root() -> None:
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
        message = " ".join(err.format_message().split()).rstrip(".")
        print(f"error: {where}: {message}; see '{where} --help'", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
