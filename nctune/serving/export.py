"""Export a fine-tuned run for serving runtimes: ONNX or TorchScript, verified before writing.

The exported graph takes **pixels**: float32 ``(B, 3, T, T)`` in ``[0, 1]`` (the image
decoded to RGB, resized so the shorter side is ``floor(T / crop_pct)``, centre-cropped to
``T×T`` and divided by 255 — the run's ``input_config``), and returns **logits**
``(B, K)``. The normalisation ``(x − mean) / std`` is folded into the graph, so a serving
stack needs no nctune and no mean/std. The input config and the class names travel inside
the file (ONNX ``metadata_props["nctune"]``, TorchScript extra file ``nctune.json``).

Every export is checked before it is written: the file is written next to its target (in
a private folder ``.nctune-export-<host>-<pid>-*`` that the next export into that folder
removes if its process died, SIGKILL included), loaded by its own runtime (onnxruntime,
``torch.jit.load``), run on a batch of real validation images of the run, and compared
with the PyTorch model. Only when

    max |logits_export − logits_torch| ≤ tolerance · max(1, max |logits_torch|)

is it renamed into place; otherwise nothing is written. Every strategy exports the same
way, since :func:`~nctune.runs.artifacts.load_finetuned` rebuilds a plain
:class:`~nctune.training.strategies.TunedModel` (LoRA already merged into the weights, the SCL skip
connection part of its forward pass).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nctune.config import load_recipe
from nctune.data import build_data, open_image
from nctune.data.input_config import per_channel, resize_side
from nctune.errors import ArtifactError, DataError, ExportError, NctuneError, one_line
from nctune.runs._io import check_writable
from nctune.runs._lock import _pid_alive
from nctune.runs.artifacts import load_finetuned
from nctune.serving.inputs import expand_inputs

__all__ = ["FORMATS", "TOLERANCE", "ExportError", "ExportResult", "export_run", "onnx_opset_range"]

FORMATS = ("onnx", "torchscript")
#: Default relative tolerance on logits (see the module docstring for the exact check).
TOLERANCE = 1e-4
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
EXTRA_HINT = 'pip install "nctune[export]"'
#: The private folder an export writes into before the file is verified and renamed.
TMP_PREFIX = ".nctune-export-"


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and how it was verified.

    Attributes:
        path: the written file.
        format: ``'onnx'`` or ``'torchscript'``.
        num_images: validation images the export was run on.
        max_abs_diff: largest absolute logit difference to PyTorch on them.
        tolerance: the allowed difference (relative, see the module docstring).
        dynamic_batch: whether the batch dimension is dynamic (ONNX; TorchScript traces
            always accept any batch size).
        opset: the ONNX opset (None for TorchScript).
        input: name, shape, dtype and value range of the graph's input.
        preprocessing: the steps before the graph (the run's input config).
        classes: class names, index order.
        seconds: wall time of export plus verification.
    """

    path: Path
    format: str
    num_images: int
    max_abs_diff: float
    tolerance: float
    dynamic_batch: bool
    opset: int | None
    input: dict[str, Any]
    preprocessing: dict[str, Any]
    classes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the path as a string)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "num_images": self.num_images,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "dynamic_batch": self.dynamic_batch,
            "opset": self.opset,
            "input": self.input,
            "preprocessing": self.preprocessing,
            "classes": self.classes,
            "seconds": self.seconds,
        }


class _Serving(nn.Module):
    """pixels in [0, 1] → logits: the run's normalisation folded in front of the model."""

    def __init__(self, model: nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def _verification_pixels(
    run: Path, model: nn.Module, images: list[str | Path] | None, num_images: int
) -> torch.Tensor:
    """(N, 3, T, T) pixels in [0, 1] of real images, preprocessed exactly as in the run."""
    mean = torch.tensor(per_channel(model.input_config.mean, "mean")).view(3, 1, 1)
    std = torch.tensor(per_channel(model.input_config.std, "std")).view(3, 1, 1)
    if images:
        xs = [model.transform(open_image(p)) for p in expand_inputs(images)[:num_images]]
    else:
        recipe_file = (run if run.is_dir() else run.parent) / "recipe.yaml"
        if not recipe_file.is_file():
            raise ArtifactError(
                f"{run}: no recipe.yaml to find the run's validation images; pass --images"
            )
        recipe = load_recipe(recipe_file)
        try:
            splits = build_data(recipe.data, model.input_config, seed=recipe.seed)
        except DataError as err:
            raise DataError(
                f"{err}; the export is verified on the run's validation images — pass --images"
            ) from None
        split = splits.val or splits.test or splits.train
        xs = [split[i][0] for i in range(min(num_images, len(split)))]
    # the datasets hand out normalised images; the export's input is the pixels before that
    return torch.stack([x * std + mean for x in xs]).clamp_(0.0, 1.0)


def _preprocessing(ic: Any) -> dict[str, Any]:
    """The steps before the graph, from the run's saved (already resolved) input config."""
    return {
        "decode": "RGB",
        "resize_shorter_side": resize_side(ic),
        "crop_mode": ic.crop_mode,
        "center_crop": int(ic.image_size),
        "interpolation": ic.interpolation,
        "scale": "divide by 255 (float32 in [0, 1])",
        "normalisation": "folded into the graph",
        "input_config": {
            "image_size": int(ic.image_size),
            "mean": list(ic.mean),
            "std": list(ic.std),
            "interpolation": ic.interpolation,
            "crop_pct": ic.crop_pct,
            "crop_mode": ic.crop_mode,
        },
    }


def _require(*modules: str) -> None:
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise ExportError(
                f"--format onnx needs {name} (not installed); install the extra: {EXTRA_HINT}"
            ) from None


def onnx_opset_range() -> tuple[int, int]:
    """The ONNX opsets the installed exporter writes as asked: ``(lowest, highest)``.

    torch's exporter (``dynamo=True``) builds the graph at its own opset (torchlib's: 18
    with torch 2.14) and reaches another one through onnxscript's version converter,
    which converts upward only, up to its ``SUPPORTED_MAX_ONNX_OPSET`` (25 with onnxscript
    0.7). Below that floor it falls back to onnx's C converter, which fails on common ops
    (``ReduceMean``'s axes) and keeps the floor — a file of another opset than asked, with
    a traceback in the log; above the ceiling the export fails. Where the private constants
    cannot be read, only the exporter's own opset counts as honoured.

    Returns:
        The inclusive range of ``opset`` values :func:`export_run` accepts.
    """
    low = 18
    with contextlib.suppress(ImportError, AttributeError):
        from torch.onnx._internal.exporter import _constants

        low = int(_constants.TORCHLIB_OPSET)
    high = low
    with contextlib.suppress(ImportError, AttributeError):
        from onnxscript.version_converter import _version_converter as converter

        low = max(low, int(converter.SUPPORTED_MIN_ONNX_OPSET))
        high = int(converter.SUPPORTED_MAX_ONNX_OPSET)
    with contextlib.suppress(ImportError, AttributeError):
        import onnx

        high = min(high, int(onnx.defs.onnx_opset_version()))
    return low, max(low, high)


def _check_opset(format: str, opset: Any) -> None:
    """Refuse, before any work, an ``opset`` the exporter would not write as asked."""
    if opset is None:
        return
    if format != "onnx":
        raise ExportError(f"--opset: only --format onnx has an opset (got --format {format})")
    low, high = onnx_opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ExportError(
            f"--opset: {opset!r:.20} is not an opset this exporter writes; give {low} to "
            f"{high} (torch {torch.__version__.split('+')[0]} exports opset {low} and "
            "converts upward only)"
        )


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Delete what killed exports into ``folder`` left behind (the rest is left alone).

    Private folders ``.nctune-export-<host>-<pid>-*`` of this host whose process is gone
    (another host's processes cannot be seen: theirs stay), and the ``.NAME.tmp-<pid>``
    files earlier nctune versions wrote ``NAME`` through. A symbolic link is never followed.
    """
    host = socket.gethostname()
    legacy = f".{name}.tmp-"
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                # <host>-<pid>-<mkdtemp's letters>: a host name may hold dashes, those never
                parts = entry.name[len(TMP_PREFIX) :].rsplit("-", 2)
                mine = len(parts) == 3 and parts[0] == host and parts[1].isdigit()
                stale = mine and not _pid_alive(int(parts[1]))
                if stale and entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(legacy):
                pid = entry.name[len(legacy) :]
                if pid.isdigit() and not _pid_alive(int(pid)) and not entry.is_dir():
                    entry.unlink(missing_ok=True)


def _private_dir(out: Path) -> Path:
    """A new private folder next to ``out`` (``O_EXCL``-like: ``mkdir`` never follows a
    link) named so that :func:`_remove_stale_temporaries` knows its owner."""
    prefix = f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out.parent, out.name)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as err:
        raise ArtifactError(f"--out {out}: cannot write ({err.strerror or err})") from None


def _write_onnx(
    serving: nn.Module,
    example: torch.Tensor,
    tmp: Path,
    opset: int | None,
    dynamic: bool,
    meta: str,
) -> int:
    _require("onnx", "onnxscript", "onnxruntime")
    kwargs: dict[str, Any] = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
    # torch's own exporter: dynamo (torch.export) is its default since 2.9; the legacy
    # TorchScript-based one is deprecated. It reports progress on stdout: kept quiet.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            serving,
            (example,),
            dynamo=True,
            input_names=["pixels"],
            output_names=["logits"],
            opset_version=opset,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    if program is None:  # pragma: no cover - only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program; torch >= 2.5 is needed")
    program.model.metadata_props["nctune"] = meta
    program.save(tmp, external_data=False)
    return int(program.model.opset_imports.get("", opset or 0))


def _run_onnx(tmp: Path, pixels: torch.Tensor, dynamic: bool) -> torch.Tensor:
    import onnxruntime  # lazy: an optional extra, kept off nctune's import path

    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if dynamic:
        return torch.from_numpy(session.run(None, {name: pixels.numpy()})[0])
    # a static graph takes one image at a time
    return torch.cat(
        [
            torch.from_numpy(session.run(None, {name: pixels[i : i + 1].numpy()})[0])
            for i in range(len(pixels))
        ]
    )


def _write_torchscript(serving: nn.Module, example: torch.Tensor, tmp: Path, meta: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints in timm code
        traced = torch.jit.trace(serving, example, check_trace=False)
        # torch 2.14 deprecates TorchScript in favour of torch.export (FutureWarning); the
        # format is still what many C++/mobile runtimes load, so it stays on offer
        torch.jit.save(traced, str(tmp), _extra_files={"nctune.json": meta})


def _run_torchscript(tmp: Path, pixels: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in torch 2.14, see above
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    with torch.inference_mode():
        return loaded(pixels)


def _taken(out: Path) -> ArtifactError:
    """The refusal of an ``out`` that exists without ``overwrite``."""
    return ArtifactError(f"--out {out}: already exists; use --overwrite or another file")


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the verified file to ``out``; without ``overwrite`` never over a file that
    appeared meanwhile (a hard link is created only where nothing is: atomic no-clobber)."""
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise _taken(out) from None
    except OSError:  # a file system without hard links: checked once more, then renamed
        if out.exists() or out.is_symlink():
            raise _taken(out) from None
        os.replace(tmp, out)


def export_run(
    run: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    tolerance: float = TOLERANCE,
    images: list[str | Path] | None = None,
    num_images: int = 16,
    overwrite: bool = False,
) -> ExportResult:
    """Export a fine-tuned run to ONNX or TorchScript, verified against PyTorch.

    Args:
        run: an ``nctune finetune`` output folder (or its ``model.safetensors``).
        format: ``'onnx'`` (needs the ``nctune[export]`` extra) or ``'torchscript'``.
        out: the file to write (default ``RUN/model.onnx`` or ``RUN/model.pt``).
        opset: ONNX opset version (default: the exporter's); one of
            :func:`onnx_opset_range`, ONNX only.
        dynamic_batch: ONNX with a dynamic batch dimension (the default, as timm's
            exporter); False fixes the batch at 1.
        tolerance: allowed relative logit difference (see the module docstring).
        images: image files/folders to verify on (default: the run's validation split,
            rebuilt from its ``recipe.yaml``; else its test, else its training split).
        num_images: how many verification images.
        overwrite: replace an existing ``out`` (default: refuse it, before any work).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: unknown format, a missing optional package (naming the extra), an
            ``opset`` outside :func:`onnx_opset_range` (or given for TorchScript; checked
            before the run is loaded), an exporter failure or a file of another opset
            than asked, or logits beyond the tolerance — nothing is written.
        ArtifactError: the run cannot be loaded, ``out`` cannot be written, or ``out``
            exists and ``overwrite`` is False (the file is left as it was).
        DataError: the verification images cannot be found or read.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise ExportError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if not tolerance > 0:
        raise ExportError(f"--tolerance: must be positive, got {tolerance}")
    if num_images < 1:
        raise ExportError(f"--num-images: must be at least 1, got {num_images}")
    run = Path(run)
    if format == "onnx":
        _require("onnx", "onnxscript", "onnxruntime")  # before any slow work
    _check_opset(format, opset)
    run_dir = run if run.is_dir() else run.parent
    out = Path(out) if out is not None else run_dir / f"model{SUFFIX[format]}"
    if out.is_dir():
        raise ArtifactError(f"--out {out}: is a folder; give a file name")
    if not overwrite and (out.exists() or out.is_symlink()):
        raise _taken(out)
    check_writable(out.parent)
    model = load_finetuned(run, device="cpu")
    pixels = _verification_pixels(run, model, images, num_images)
    ic = model.input_config
    serving = _Serving(model, per_channel(ic.mean, "mean"), per_channel(ic.std, "std")).eval()
    with torch.inference_mode():
        reference = serving(pixels)
    size = int(ic.image_size)
    preprocessing = _preprocessing(ic)
    classes = [str(c) for c in (model.classes or range(model.num_classes))]
    meta = json.dumps({"classes": classes, "preprocessing": preprocessing, "nctune_format": "1"})
    # batch 2 for a dynamic trace: torch.export specialises a size-1 dimension
    dynamic = dynamic_batch and format == "onnx"
    example = pixels[:2] if dynamic and len(pixels) > 1 else pixels[:1]
    if dynamic and len(example) < 2:
        example = pixels[:1].repeat(2, 1, 1, 1)

    private = _private_dir(out)
    tmp = private / out.name
    used_opset = None
    try:
        try:
            if format == "onnx":
                used_opset = _write_onnx(serving, example, tmp, opset, dynamic_batch, meta)
                if opset is not None and used_opset != opset:  # a fallback, not the ask
                    raise ExportError(
                        f"--opset {opset}: the exporter wrote opset {used_opset} instead; "
                        "nothing written"
                    )
                exported = _run_onnx(tmp, pixels, dynamic_batch)
            else:
                _write_torchscript(serving, example, tmp, meta)
                exported = _run_torchscript(tmp, pixels)
        except NctuneError:
            raise
        except OSError as err:
            raise ArtifactError(f"--out {out}: cannot write ({err.strerror or err})") from None
        except Exception as err:  # the exporter's own refusal: one line, nothing written
            raise ExportError(f"{format} export of {run} failed ({one_line(err, 300)})") from None
        diff = float((exported.float() - reference).abs().max())
        allowed = tolerance * max(1.0, float(reference.abs().max()))
        if not diff <= allowed:
            raise ExportError(
                f"{format} export of {run} differs from PyTorch by {diff:.3g} on "
                f"{len(pixels)} validation images (allowed {allowed:.3g}); nothing written"
            )
        _place(tmp, out, overwrite)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return ExportResult(
        path=out,
        format=format,
        num_images=len(pixels),
        max_abs_diff=diff,
        tolerance=tolerance,
        dynamic_batch=dynamic_batch or format == "torchscript",
        opset=used_opset,
        input={
            "name": "pixels",
            "shape": ["batch" if dynamic_batch or format == "torchscript" else 1, 3, size, size],
            "dtype": "float32",
            "range": [0.0, 1.0],
        },
        preprocessing=preprocessing,
        classes=classes,
        seconds=time.perf_counter() - start,
    )
