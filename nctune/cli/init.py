"""``nctune init``: a commented starter recipe for your own images, checked on the spot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@handle_errors
def init(
    data: DataOpt = None,
    backbone: BackboneOpt = "packaged:efficientnet_lite0",
    out: RecipeOutOpt = Path("recipe.yaml"),
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    fields: FieldsOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write a commented starter recipe for your own images, checked on the spot.

    nctune init --data PATH/TO/IMAGEFOLDER --backbone timm:resnet50 writes recipe.yaml;
    then `nctune analyze recipe.yaml` and `nctune finetune recipe.yaml`.
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
    starter = starter_recipe(data, backbone, set_, backbone_named=named or "--backbone")
    atomic_write_text(out, starter.text.replace("THIS_FILE", str(out)))
    lines = [
        (
            f"Wrote [cyan]{out}[/]: {starter.recipe.backbone.name} on {len(starter.classes)} "
            f"classes, {starter.images} images in {data}."
        ),
        f"Next: nctune analyze {out}   then   nctune finetune {out}",
    ]
    render(Output(starter.recipe.model_dump(mode="json"), body=lines, highlight=False), json_)
