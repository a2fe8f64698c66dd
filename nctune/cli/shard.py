"""``nctune shard``: an image folder as WebDataset tar shards (``data.source: webdataset``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nctune.cli.common import JsonOpt, handle_errors, main_process_only
from nctune.cli.render import Output, render

FolderArg = Annotated[
    Path, typer.Argument(help="Image folder: class folders, or train/ val/ test/ of them.")
]
OutArg = Annotated[Path, typer.Argument(help="Folder to write the shards and classes.txt into.")]
SizeOpt = Annotated[int, typer.Option("--shard-size", help="Samples per shard.")]


@handle_errors
@main_process_only
def shard(
    folder: FolderArg,
    out: OutArg,
    shard_size: SizeOpt = 1000,
    json_: JsonOpt = False,
) -> None:
    """Write FOLDER as SPLIT-000000.tar, … shards into OUT (all or nothing).

    Each sample is the image file's own bytes (KEY.png, KEY.jpg, …) and KEY.cls, its class
    index; classes.txt names the classes. The order is the folder's (class, then file), so
    `data.source: webdataset` with `data.path: OUT` gives the same splits and numbers as
    `data.source: imagefolder`. A failure or Ctrl-C leaves OUT as it was.
    """
    from nctune.data.sources.webdataset import shard_image_folder

    summary = shard_image_folder(folder, out, shard_size)
    counts = ", ".join(f"{split} {n}" for split, n in summary["samples"].items())
    line = (
        f"Wrote {len(summary['shards'])} shards ({counts} samples, {len(summary['classes'])} "
        f"classes) to [cyan]{escape(str(out))}[/]; read them with data.source=webdataset "
        f"data.path={escape(str(out))}"
    )
    render(Output(summary, body=[line], highlight=False), json_)
