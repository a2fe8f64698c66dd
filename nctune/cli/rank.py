"""``nctune rank``: which backbone to start from, measured before any training."""

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
    main_process_only,
    progress_bar,
)
from nctune.cli.render import Output, console_width, render
from nctune.runs._io import write_result_folder

BackbonesOpt = Annotated[
    str | None,
    typer.Option(
        "--backbones",
        "-b",
        help=(
            "Comma-separated candidates (backbone.name specs; '@random' = random init), "
            "e.g. packaged:efficientnet_lite0,packaged:efficientnet_lite0@random. "
            "Default: rank.backbones."
        ),
        show_default=False,
    ),
]
ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by",
        help=(
            "Sort by: nc1, nc1_best, trace_ratio, cdnv, ncc, logme, hscore, hscore_reg, knn, "
            "ncti, or a static baseline: static_top1, params (default: rank.by)."
        ),
        show_default=False,
    ),
]
ValidateOpt = Annotated[
    str | None,
    typer.Option(
        "--validate",
        help=(
            "Fine-tune every candidate with this strategy (e.g. linear) and report which "
            "score predicted the result (weighted Kendall τ, Spearman ρ)."
        ),
        show_default=False,
    ),
]


@handle_errors
@main_process_only
def rank(
    recipe: RecipeArg = None,
    backbones: BackbonesOpt = None,
    by: ByOpt = None,
    validate: ValidateOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Which backbone should I start from? Score candidates on your data in one pass each.

    Writes DIR/ranking.json, DIR/ranking.png and the resolved DIR/recipe.yaml.
    """
    from nctune.config import load_recipe

    # validated before torch and timm load: a typo is refused in a fraction of a second
    cfg = load_recipe(recipe, set_)
    from nctune.rank import rank as rank_backbones
    from nctune.report.rank import (
        agreement_table,
        disagreements,
        failures,
        plot_ranking,
        ranking_table,
        static_line,
    )

    cfg = apply_threads(cfg, threads)
    out = claim_results(out or default_out(recipe, "rank"), "ranking.json")
    names = [b.strip() for b in backbones.split(",")] if backbones is not None else None
    with progress_bar() as progress:
        result = rank_backbones(cfg, names, by=by, validate=validate, progress=progress)
    doc = result.to_dict()
    resolved = cfg.model_copy(deep=True)
    resolved.rank.backbones = [c.spec for c in result.candidates]
    resolved.rank.by, resolved.rank.validation = result.by, result.validation
    draw = {"ranking.png": lambda p: plot_ranking(result, p)}
    write_result_folder(out, "ranking.json", doc, resolved.to_yaml(), draw)
    body = [
        ranking_table(result, width=console_width()),  # reasons below it, never cut to "…"
        *failures(result),
        *(f"[yellow]disagreement[/] {d}" for d in disagreements(result)),
    ]
    if result.agreement:
        body.append(agreement_table(result))
    best = next((c for c in result.ranked() if c.ok), None)
    if best is not None:
        body.append(f"[bold]Start from[/] [green]{best.spec}[/] (best by {result.by}).")
    static = static_line(result)
    if static:
        body.append(static)
    summary = Output(
        doc, body=body, folder=out, files=("ranking.json", "ranking.png", "recipe.yaml")
    )
    render(summary, json_)
