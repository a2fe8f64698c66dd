"""The ``nctune`` command line: a thin Typer layer (load recipe → call library → render).

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import typer

from nctune.cli.analyze import analyze
from nctune.cli.finetune import finetune
from nctune.cli.sweep import sweep

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


@app.callback()
def _root() -> None:
    """Fine-tune pretrained vision backbones guided by neural collapse (Li et al., arXiv 2212.12206)."""


def main() -> None:
    """Console-script entry point."""
    app()
