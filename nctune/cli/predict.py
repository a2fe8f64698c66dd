"""``nctune predict``: label image files, folders, a CSV manifest or a data set (WebDataset
shards, a saved Hugging Face dataset) with a fine-tuned run."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nctune.cli.common import (
    JsonOpt,
    err_console,
    handle_errors,
    main_process_only,
    notice,
    progress_bar,
)
from nctune.cli.render import Output, render
from nctune.errors import ArtifactError, DataError
from nctune.runs._io import check_writable, partial_file, partial_path

RunArg = Annotated[
    Path, typer.Argument(help="Run folder of nctune finetune (or its model.safetensors).")
]
InputsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Image files, folders (searched recursively), CSV manifests (path[,label][,split]), "
        "WebDataset shards (.tar, brace pattern, folder of shards) or a saved HF dataset folder.",
        show_default=False,
    ),
]
PredOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Rows file: .csv or .jsonl, not one of the inputs (default RUN/predictions.csv).",
        show_default=False,
    ),
]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Most probable classes per row.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="With a CSV manifest or a data set: only its rows of this split (train, val, test).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
FORMATS = (".csv", ".jsonl")


def _header(top_k: int, labelled: bool) -> list[str]:
    extra = [f"{name}_{r}" for r in range(2, top_k + 1) for name in ("label", "probability")]
    truth = ["true_label"] if labelled else []
    return ["path", *truth, "label", "probability", *extra, "error"]


def _refuse_an_input(out: Path, inputs: list[Path], images: list[str]) -> None:
    """ArtifactError naming --out when it is one of the inputs: a manifest, a file given
    by name or listed in a manifest — the same file through a link or another spelling
    too (compared by device and inode). The rows would replace what they were read from."""
    try:
        target = out.stat()
    except OSError:  # nothing there yet (or a dangling link): it is no input
        return
    for path in [*inputs, *(i for i in images if isinstance(i, str))]:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            raise ArtifactError(f"--out {out}: is the input {path}; write the rows to another file")


def _csv_row(p, top_k: int, truth: list[str]) -> list[str]:
    ranked = [c for lab, prob in p.top_k[1:top_k] for c in (lab, f"{prob:.6g}")]
    ranked += [""] * (2 * (top_k - 1) - len(ranked))
    prob = "" if p.probability is None else f"{p.probability:.6g}"
    return [p.source, *truth, p.label or "", prob, *ranked, p.error or ""]


def _row(p, truth: list[str | None]) -> dict:
    """The JSON row; a labelled manifest's label as ``true_label``, right after ``path``."""
    row = p.to_dict()
    return {"path": row.pop("path"), "true_label": truth[0], **row} if truth else row


@handle_errors
@main_process_only
def predict(
    run: RunArg,
    inputs: InputsArg,
    out: PredOutOpt = None,
    top_k: TopKOpt = 1,
    batch_size: BatchOpt = 32,
    split: SplitOpt = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Predict a label (and the top-k classes) for every image; one row per image.

    Rows are written as they are predicted to a hidden partial file next to --out, which
    is renamed into place only when every image is done; unreadable images get a row with
    an error and are counted in the summary, the others are still predicted.
    """
    from nctune.serving.inference import iter_predict, load_finetuned
    from nctune.serving.inputs import expand_labelled
    from nctune.taps import resolve_device

    if top_k < 1:
        raise DataError(f"--top-k: must be at least 1, got {top_k}")
    if batch_size < 1:
        raise DataError(f"--batch-size: must be at least 1, got {batch_size}")
    if split is not None and split not in ("train", "val", "test"):
        raise DataError(f"--split: {split!r} must be train, val or test")
    out = out or (run if run.is_dir() else run.parent) / "predictions.csv"
    if out.suffix.lower() not in FORMATS:
        raise ArtifactError(f"--out {out}: the file must end in .csv or .jsonl")
    if out.is_dir():
        raise ArtifactError(f"--out {out}: is a folder; give a .csv or .jsonl file")
    check_writable(out.parent)
    # an empty input fails here, before loading; a labelled manifest's labels come along
    pairs = expand_labelled(inputs, split=split)
    images = [path for path, _ in pairs]
    labelled = any(label is not None for _, label in pairs)
    _refuse_an_input(out, inputs, images)
    model = load_finetuned(run, device=str(resolve_device(device)))
    k = min(top_k, model.num_classes)
    jsonl = out.suffix.lower() == ".jsonl"

    rows, failed = [], 0
    try:
        # rows go to a hidden partial file, renamed to --out once every image is done
        with partial_file(out) as f, progress_bar() as progress:
            if not jsonl:
                csv.writer(f).writerow(_header(k, labelled))
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for n, p in enumerate(
                iter_predict(model, images, batch_size=batch_size, top_k=k), start=1
            ):
                truth = [pairs[n - 1][1]] if labelled else []
                row = _row(p, truth)
                if jsonl:
                    buffer.write(json.dumps(row, allow_nan=False) + "\n")
                else:
                    writer.writerow(_csv_row(p, k, [t or "" for t in truth]))
                rows.append(row)
                if not p.ok:
                    failed += 1
                    err_console.print(
                        f"[yellow]failed:[/] {escape(p.error)}", highlight=False, soft_wrap=True
                    )
                # whole rows, flushed per batch: a killed run keeps what it finished
                if n % batch_size == 0 or n == len(images):
                    f.write(buffer.getvalue())
                    f.flush()
                    buffer.seek(0)
                    buffer.truncate()
                    progress("predict", n, len(images))
    except KeyboardInterrupt:
        kept = partial_path(out)
        notice(f"interrupted; the rows predicted so far are in {kept} ({out} not written)")
        raise typer.Exit(130) from None
    summary = {
        "run": str(run),
        "out": str(out),
        "num_images": len(rows),
        "num_failed": failed,
        "predictions": rows,
    }
    line = (
        f"Predicted {len(rows) - failed} of {len(rows)} images ({failed} failed) → "
        f"[cyan]{escape(str(out))}[/]"
    )
    render(Output(summary, body=[line], highlight=False), json_)
