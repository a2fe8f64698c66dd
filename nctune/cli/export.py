"""``nctune export``: a fine-tuned run as ONNX or TorchScript, verified before it is written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from nctune.cli.common import JsonOpt, handle_errors, main_process_only
from nctune.cli.render import Output, render
from nctune.errors import ConfigError

RunArg = Annotated[
    Path, typer.Argument(help="Run folder of nctune finetune (or its model.safetensors).")
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")]
FileOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="File to write (default RUN/model.onnx or RUN/model.pt).",
        show_default=False,
    ),
]
OpsetOpt = Annotated[
    int | None,
    typer.Option(
        "--opset",
        help="ONNX opset, within the range the exporter writes as asked (default: its own).",
    ),
]
StaticOpt = Annotated[
    bool,
    typer.Option("--static-batch", help="ONNX: fix the batch at 1 (default: any batch size)."),
]
DynamicOpt = Annotated[
    bool,
    typer.Option(
        "--dynamic-batch", help="Deprecated, no effect: the ONNX batch axis is dynamic by default."
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")]
TolOpt = Annotated[
    float,
    typer.Option("--tolerance", help="Allowed logit difference, relative to max(1, max |logit|)."),
]
ImagesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--images",
        help="Images/folders to verify on (default: the run's validation split).",
        show_default=False,
    ),
]


@handle_errors
@main_process_only
def export(
    run: RunArg,
    format_: FormatOpt = "onnx",
    out: FileOutOpt = None,
    opset: OpsetOpt = None,
    static_batch: StaticOpt = False,
    dynamic_batch: DynamicOpt = False,
    tolerance: TolOpt = 1e-4,
    images: ImagesOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Export the run's model with its normalisation folded in; verify it, then write it.

    The export is run by its own runtime (onnxruntime, torch.jit.load) on real validation
    images and its logits compared with PyTorch's; beyond --tolerance nothing is written.
    The graph's input is float32 pixels in [0, 1], resized and centre-cropped as the run's
    input config says (stored in the file's metadata). The ONNX batch axis is dynamic
    unless --static-batch; an existing file is refused unless --overwrite is given.
    """
    from nctune.serving.export import export_run

    if static_batch and dynamic_batch:
        raise ConfigError("--static-batch and --dynamic-batch: give one (dynamic is the default)")

    result = export_run(
        run,
        format_,
        out,
        opset=opset,
        dynamic_batch=not static_batch,
        tolerance=tolerance,
        images=images,
        overwrite=overwrite,
    )
    pre = result.preprocessing
    line = (
        f"Wrote [cyan]{escape(str(result.path))}[/] ({result.format}); verified on {result.num_images} "
        f"validation images: max |Δlogit| {result.max_abs_diff:.2g} "
        f"(tolerance {result.tolerance:g}).\nInput 'pixels': float32 "
        f"{result.input['shape']} in [0, 1] — RGB, resize shorter side to "
        f"{pre['resize_shorter_side']} ({pre['interpolation']}), centre-crop "
        f"{pre['center_crop']}, divide by 255; normalisation is inside the graph."
    )
    render(Output(result.to_dict(), body=[line], highlight=False), json_)
