"""The :class:`Backbone`: a network plus what nctune needs to know about it.

Its input config, its ordered tappable blocks (module paths, the form PEFT's
``target_modules`` takes), the penultimate features and a replaceable classifier.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from nctune.backbones.blocks import find_classifier, list_blocks, measure_layers, resolve_layers
from nctune.backbones.weights import mismatches
from nctune.errors import BackboneError
from nctune.runs._io import FORMAT_KEY, FORMAT_VERSION, replacing

__all__ = [
    "IMAGENET_INPUT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BlockInfo",
    "InputConfig",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        name = find_classifier(model)
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
        cfg = self.input_config
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
        measured = measure_layers(self.model, names, x, where=self.spec)
        return [
            BlockInfo(index=i, name=name, dim=dim, layout=layout)
            for i, (name, (layout, dim)) in enumerate(zip(names, measured, strict=True))
        ]

    def resolve_layers(
        self, patterns: list[str] | None, *, field: str = "analysis.layers"
    ) -> list[str]:
        """Module paths named by exact paths or ``fnmatch`` globs, in depth order.

        :func:`~nctune.backbones.blocks.resolve_layers` on :attr:`model`, with the cached
        blocks; ``None`` means every block.

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
        try:
            blocks = self.block_names
        except BackboneError:
            blocks = []
        return resolve_layers(self.model, patterns, field=field, where=self.spec, blocks=blocks)

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
            FORMAT_KEY: FORMAT_VERSION,
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
        problems = mismatches(self.model.state_dict(), state_dict)
        if problems:
            raise BackboneError(f"{where} does not match {self._build_spec}: {problems}")
        self.model.load_state_dict(dict(state_dict), strict=False)
