"""``nctune init``: a commented starter recipe for your own images, checked on the spot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nctune.cli.common import JsonOpt, SetOpt, handle_errors
from nctune.cli.render import Column, Output, records_table, render
from nctune.errors import ArtifactError, ConfigError

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help="Your image folder: one sub-folder per class (or train/ and val/ inside).",
        show_default=False,
    ),
]
BackboneOpt = Annotated[
    str,
    typer.Option(
        "--backbone",
        "-b",
        help="source:name, e.g. timm:resnet50, torchvision:resnet18 (default needs no download).",
    ),
]
RecipeOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write the recipe.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")]
EstimateOpt = Annotated[
    bool,
    typer.Option(
        "--estimate/--no-estimate",
        help="Time a few batches on this machine and print what analyze and one epoch cost.",
    ),
]
FieldsOpt = Annotated[
    bool,
    typer.Option("--fields", help="Print every recipe field (type, default, meaning) and exit."),
]


def _unquoted(text: str) -> str:
    return text.replace("`", "")


#: ``nctune init --fields``: the table's columns; ``--json`` prints the same records.
FIELD_COLUMNS = (
    Column("key", header="field", style="cyan", no_wrap=True),
    Column("type", show=_unquoted),
    Column("default", show=_unquoted),
    Column("description", ratio=1),
)


def _fields(json_: bool) -> None:
    from nctune.recipe_fields import field_rows

    rows = [{c.key: getattr(r, c.key) for c in FIELD_COLUMNS} for r in field_rows()]
    table = records_table(rows, FIELD_COLUMNS, title="Recipe fields (also in docs/recipes.md)")
    render(Output(rows, body=[table]), json_)


def _proposal_lines(starter: Any, asked: bool) -> list[str]:
    """What init chose for the costly fields, and the measured estimate (or why none)."""
    p, cost = starter.proposal, starter.cost
    lines = []
    if p.image_size is not None:
        lines.append(f"Image size {p.image_size} px: {p.size_reason}.")
    if p.epochs is not None:
        lines.append(f"Epochs {p.epochs}: {p.epochs_reason}.")
    if cost is not None:
        lines.append(
            f"Estimate on {cost.device} at {cost.image_size} px (timed on a few batches, "
            f"random weights; an estimate): analyze ≈ {_duration(cost.analyze_seconds)} "
            f"({cost.analyze_images} images), one training epoch ≈ "
            f"{_duration(cost.epoch_seconds)} ({cost.epoch_images} images, full fine-tuning; "
            "strategies that freeze a cached prefix are faster)."
        )
    elif asked:
        lines.append("No time estimate: the backbone could not be built or timed on this machine.")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@handle_errors
def init(
    data: DataOpt = None,
    backbone: BackboneOpt = "packaged:efficientnet_lite0",
    out: RecipeOutOpt = Path("recipe.yaml"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    fields: FieldsOpt = False,
    estimate: EstimateOpt = True,
    json_: JsonOpt = False,
) -> None:
    """Write a commented starter recipe for your own images, checked on the spot.

    nctune init --data PATH/TO/IMAGEFOLDER --backbone timm:resnet50 writes recipe.yaml;
    then `nctune analyze recipe.yaml` and `nctune finetune recipe.yaml`. The image size and
    the epochs are proposed from your images (their median side, their number), and a few
    timed batches estimate what analyze and one training epoch cost on this machine.
    """
    from nctune.runs._io import atomic_write_text
    from nctune.starter import starter_recipe

    if fields:
        _fields(json_)
        return
    if data is None:
        raise ConfigError(
            "--data: give your image folder (one sub-folder per class), or --fields to list the fields"
        )
    if out.exists() and not overwrite:
        raise ArtifactError(f"--out {out}: already exists; use --overwrite or another file")
    if out.is_dir():
        raise ArtifactError(f"--out {out}: is a folder; give the recipe file's path")
    # an unknown model is named as the user gave it: --backbone, unless --set replaced it
    named = "backbone.name" if any(s.startswith("backbone.name") for s in set_ or []) else None
    starter = starter_recipe(
        data, backbone, set_, backbone_named=named or "--backbone", estimate=estimate
    )
    atomic_write_text(out, starter.text.replace("THIS_FILE", str(out)))
    lines = [
        (
            f"Wrote [cyan]{out}[/]: {starter.recipe.backbone.name} on {len(starter.classes)} "
            f"classes, {starter.images} images in {data}."
        ),
        *_proposal_lines(starter, estimate),
        f"Next: nctune analyze {out}   then   nctune finetune {out}",
    ]
    render(Output(starter.recipe.model_dump(mode="json"), body=lines, highlight=False), json_)
