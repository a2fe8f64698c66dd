"""``nctune analyze``: layer-wise neural collapse of a backbone on the downstream data."""

from __future__ import annotations

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
from nctune.cli.render import Output, render
from nctune.runs._io import write_result_folder


@handle_errors
def analyze(
    recipe: RecipeArg = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    json_: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Measure how collapsed each block's features already are on your training data.

    Writes DIR/analysis.json, DIR/collapse.png and the resolved DIR/recipe.yaml.
    """
    from nctune.config import load_recipe

    # validated before torch and timm load: a typo is refused in a fraction of a second
    cfg = load_recipe(recipe, set_)
    from nctune.analyze import analyze_recipe
    from nctune.distributed import is_main
    from nctune.report import plot_profile, profile_table

    cfg = apply_threads(cfg, threads)
    out = claim_results(out or default_out(recipe, "analyze"), "analysis.json")
    with progress_bar() as progress:
        result = analyze_recipe(cfg, progress=lambda p, d, t: progress(f"profile: {p}", d, t))
    doc = result.to_dict()
    if not is_main():  # under torchrun every rank holds the same result; rank 0 writes it
        return
    draw = {"collapse.png": lambda p: plot_profile(result.profile, p, result.recommendation)}
    write_result_folder(out, "analysis.json", doc, cfg.to_yaml(), draw)
    rec = result.recommendation
    summary = Output(
        doc,
        body=[
            profile_table(result.profile, rec),
            (
                f"[bold]Recommendation[/] ({rec.rule}): tune [green]{', '.join(rec.layers)}[/] — "
                f"{rec.reason}."
            ),
        ],
        folder=out,
        files=("analysis.json", "collapse.png", "recipe.yaml"),
    )
    render(summary, json_)
