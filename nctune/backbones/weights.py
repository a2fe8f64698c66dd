"""Weight files: reading ``.safetensors`` / pickled checkpoints into state dicts, and a
run folder's fine-tuned model file (whose names :mod:`nctune.runs._io` shares with the writer,
:mod:`nctune.runs.artifacts`, so it is read here without importing it).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from nctune.errors import ArtifactError, BackboneError, one_line
from nctune.runs._model_meta import parse_run_metadata

__all__ = [
    "load_state_dict_file",
    "map_by_order",
    "read_run_model",
]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params")
# DDP and torch.compile wrappers; other prefixes are too ambiguous to strip blindly
_PREFIXES = ("module.", "_orig_mod.")


def _torch_load(path: Path, where: str) -> Any:
    # weights_only keeps untrusted pickles from running code; timm train.py checkpoints also
    # pickle their argparse.Namespace, which is plain data.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling raises many types; all mean "unusable file"
        raise BackboneError(
            f"{where}: cannot read as a PyTorch checkpoint ({one_line(err, 200)})"
        ) from None


def read_file(path: Path, where: str) -> tuple[Any, dict[str, str]]:
    """The raw object in a weights file and its safetensors metadata ({} for pickles).

    Raises:
        BackboneError: missing, a folder, or unreadable.
    """
    if not path.exists():
        raise BackboneError(f"{where}: file not found")
    if path.is_dir():
        raise BackboneError(f"{where}: is a folder, expected a weights file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        except Exception as err:  # SafetensorError is not exported as a stable type
            raise BackboneError(f"{where}: cannot read as safetensors ({err})") from None
        return tensors, meta
    return _torch_load(path, where), {}


def unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict inside common wrappers, without DDP/compile prefixes.

    Raises:
        BackboneError: not a mapping, or no tensors in it.
    """
    for _ in range(3):  # {'model': {'state_dict': ...}} at most a couple of levels deep
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise BackboneError(f"{where}: holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise BackboneError(f"{where}: contains no weight tensors")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(
    path: str | Path, *, field: str = "backbone.weights"
) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` weights file into a state dict.

    Pickled files load with ``weights_only=True`` (no code runs). Common wrappers
    (``state_dict``, ``model``, ``module``, …) are unwrapped, non-tensor entries dropped,
    and a ``module.`` / ``_orig_mod.`` prefix shared by every key is stripped.

    Args:
        path: the weights file (``~`` is expanded).
        field: the recipe field error messages name.

    Returns:
        Tensors keyed like ``model.state_dict()``, on CPU.

    Raises:
        BackboneError: missing, unreadable or tensor-less file (one line naming it).
    """
    path = Path(path).expanduser()
    where = f"{field}: {path}"
    obj, _ = read_file(path, where)
    return unwrap_state_dict(obj, where)


def mismatches(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``state_dict`` from loading strictly into a model with ``own`` tensors.

    Returns:
        ``''`` when it fits, else one line with the counts and first examples of missing
        keys, unexpected keys and shape mismatches (``num_batches_tracked`` may be missing).
    """
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" +{len(items) - 2} more" if len(items) > 2 else ""
            problems.append(f"{len(items)} {label} ({'; '.join(items[:2])}{more})")
    return ", ".join(problems)


def map_by_order(
    src: Mapping[str, torch.Tensor], model: nn.Module, where: str
) -> dict[str, torch.Tensor]:
    """Rename one implementation's tensors to another's by registration order.

    Used for the original EfficientNet-Lite tensors (``_blocks.3._bn1.weight``) → timm's:
    both implementations register the same tensors in the same order (stem, blocks with
    expand → depthwise → project, head, classifier), so the i-th tensor of one is the i-th of
    the other; every shape is checked so a different layout fails loudly instead of silently.

    Raises:
        BackboneError: the counts or any shape differ.
    """
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    own = model.state_dict()
    dst_keys = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise BackboneError(
            f"{where}: {len(src_keys)} tensors but {len(dst_keys)} in the timm model; "
            "the packaged weights do not fit this architecture"
        )
    for i, (s, d) in enumerate(zip(src_keys, dst_keys, strict=True)):
        if tuple(src[s].shape) != tuple(own[d].shape):
            raise BackboneError(
                f"{where}: tensor {i} {s} {tuple(src[s].shape)} does not fit {d} "
                f"{tuple(own[d].shape)}; the packaged weights do not fit this architecture"
            )
    return {d: src[s] for s, d in zip(src_keys, dst_keys, strict=True)}


def read_run_model(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """The tensors, config and metadata of a fine-tuned model file (a run's ``MODEL_FILE``).

    The file is what ``safetensors.torch.save_model`` wrote for a ``TunedModel``: tensors
    keyed ``backbone.<path>`` and ``head.weight``/``head.bias`` (LoRA already merged), the
    config as JSON under :data:`CONFIG_KEY`, and for each tensor it dropped as an alias of
    another, a metadata entry ``dropped name → kept name``; aliases are restored here.

    Raises:
        ArtifactError: not a safetensors file, or metadata that fails
            :func:`nctune.runs._model_meta.parse_run_metadata` (the same line
            :func:`nctune.runs.artifacts.load_finetuned` gives, naming the field).
    """
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (OSError, SafetensorError) as err:
        # SafetensorError: not a safetensors file at all (truncated, corrupted, other format)
        raise ArtifactError(
            f"{file}: not an nctune fine-tuned model ({err.__class__.__name__})"
        ) from None
    config, _ = parse_run_metadata(file, meta)  # the schema load_finetuned checks too
    for dropped, kept in meta.items():
        if kept in tensors and dropped not in tensors:
            tensors[dropped] = tensors[kept]
    return tensors, config, meta
