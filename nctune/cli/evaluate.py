"""``nctune evaluate``: accuracy, top-k, per-class precision/recall/F1 and the confusion
matrix of a fine-tuned run, on its own split, class folders or a labelled CSV manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from nctune.cli.common import JsonOpt, err_console, handle_errors, main_process_only
from nctune.cli.render import Column, Output, records_table, render
from nctune.errors import ConfigError

RunArg = Annotated[
    Path, typer.Argument(help="Run folder of nctune finetune (or its model.safetensors).")
]
DataArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Folders of class folders (or of train/val/test folders of them), CSV "
        "manifests with a label column, WebDataset shards or a saved HF dataset "
        "(default: the run's own --split).",
        show_default=False,
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="The run's split to evaluate: train, val or test (default test); with DATA, "
        "a manifest's rows or a data set folder's split folder.",
        show_default=False,
    ),
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", "-k", help="k of the top-k accuracy (at most the classes).")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
EvalOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Folder for evaluation.json and confusion.png (default RUN/evaluation).",
        show_default=False,
    ),
]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(doc: dict[str, Any]) -> Any:
    """The per-class table, then the averages: the one place the evaluation is tabulated."""
    columns = [
        Column("class", no_wrap=True),
        Column("precision", show=_pct),
        Column("recall", show=_pct),
        Column("f1", header="F1", show=_pct),
        Column("support"),
    ]
    support = sum(c["support"] for c in doc["per_class"])
    averages = [
        {"class": f"{name} avg", **doc[name], "support": support} for name in ("macro", "weighted")
    ]
    title = f"Evaluation of {doc['run']} on {doc['data']}"
    return records_table([*doc["per_class"], *averages], columns, title=title)


@handle_errors
@main_process_only
def evaluate(
    run: RunArg,
    data: DataArg = None,
    split: SplitOpt = None,
    top_k: TopKOpt = 5,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "auto",
    out: EvalOutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Evaluate a run: accuracy, top-k, per-class precision/recall/F1, confusion matrix.

    Without DATA the run's own split is rebuilt from RUN/recipe.yaml (--split, default
    test), so its accuracy is the run's reported one. Images go through the run's eval
    transform, as with predict. Writes evaluation.json and confusion.png to --out.
    """
    from nctune.serving.evaluate import SPLITS
    from nctune.serving.evaluate import evaluate as evaluate_run
    from nctune.taps import resolve_device

    if top_k < 1:
        raise ConfigError(f"--top-k: must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split: {split!r} must be train, val or test")
    out = out or (run if run.is_dir() else run.parent) / "evaluation"
    result = evaluate_run(
        run,
        data or None,
        split=split,
        top_k=top_k,
        batch_size=batch_size,
        device=resolve_device(device),
        out=out,
    )
    for row in result.failed:
        err_console.print(
            f"[yellow]failed:[/] {escape(row['error'])}", highlight=False, soft_wrap=True
        )
    doc = result.to_dict()
    line = (
        f"Accuracy {_pct(result.accuracy)}, top-{result.top_k} {_pct(result.top_k_accuracy)} "
        f"on {result.num_images} images ({result.num_failed} failed)"
    )
    body = [_table(doc), line]
    render(Output(doc, body=body, folder=out, files=result.files, highlight=False), json_)
