"""``nctune sweep``: fine-tune each block in turn and check which one the NC profile picks."""

from __future__ import annotations

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
    claim_results,
    default_out,
    handle_errors,
    progress_bar,
)
from nctune.cli.render import Output, console_width, render
from nctune.runs._io import write_result_folder

BlocksOpt = Annotated[
    str | None,
    typer.Option(
        "--blocks",
        help="Comma-separated blocks or globs to sweep (default: all).",
        show_default=False,
    ),
]
ModesOpt = Annotated[str, typer.Option("--modes", help="layer (Layer-FT), scl (SCL-FT), or both.")]


@handle_errors
def sweep(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    blocks: BlocksOpt = None,
    modes: ModesOpt = "layer,scl",
    out: OutOpt = None,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Which block should I tune on my data? Fine-tune each one and compare with the rules.

    Writes DIR/sweep.json, DIR/layer_sweep.png and DIR/recipe.yaml.
    """
    from nctune.config import load_recipe

    # validated before torch and timm load: a typo is refused in a fraction of a second
    cfg = load_recipe(recipe, set_)
    from nctune.distributed import is_main
    from nctune.report import plot_sweep, sweep_table
    from nctune.sweep import layer_sweep

    cfg = apply_threads(cfg, threads)
    out = claim_results(out or default_out(recipe, "sweep"), "sweep.json")
    names = [b.strip() for b in blocks.split(",") if b.strip()] if blocks else None
    with progress_bar() as progress:
        result = layer_sweep(
            cfg, blocks=names, modes=tuple(m.strip() for m in modes.split(",")), progress=progress
        )
    doc = result.to_dict()
    if not is_main():  # under torchrun rank 0 holds the gathered table and writes it
        return
    draw = {"layer_sweep.png": lambda p: plot_sweep(result, p)}
    write_result_folder(out, "sweep.json", doc, cfg.to_yaml(), draw)
    metric = result.metric.replace("_accuracy", "")
    chosen_on = result.chosen_on.replace("_accuracy", "")
    lines = []
    for mode, block in doc["best"].items():
        if block is not None:
            score = doc["best_score"][mode]
            shown = "–" if score is None else f"{100 * score:.2f}%"
            lines.append(
                f"[bold]best {mode}[/] (chosen on {chosen_on} accuracy): {block}, "
                f"{metric} accuracy {shown}"
            )
    for rule, regret in result.regret.items():
        if all(g is None for g in regret.values()):
            lines.append(f"rule [bold]{rule}[/] picks {result.picks[rule]} (not swept)")
            continue
        gaps = ", ".join(
            f"{m}: {abs(g):.2f} pts {'below' if g >= 0 else 'above'}"
            for m, g in regret.items()
            if g is not None
        )
        lines.append(
            f"rule [bold]{rule}[/] picks {result.picks[rule]} — {metric} accuracy against the "
            f"best block: {gaps}"
        )
    summary = Output(
        doc,
        body=[sweep_table(result, width=console_width()), *lines],
        folder=out,
        files=("sweep.json", "layer_sweep.png", "recipe.yaml"),
    )
    render(summary, json_)
