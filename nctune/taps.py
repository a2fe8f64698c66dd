"""Layer taps: forward hooks that pool a block's output and hand it straight on.

A tapped batch is pooled to ``(B, D)`` inside the hook and passed to a callback (the
layer's :class:`~nctune.collapse.CollapseStats` in ``analyze``), then dropped, so no
feature map outlives its block. Once every tapped module has fired for the current
batch the forward pass is cut short with a private exception: blocks deeper than the
deepest tap cost nothing. Hooks are removed when the context exits (timm's
``FeatureHooks`` pattern: hooks by module name, handles removed after use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from nctune.distributed import local_device
from nctune.errors import BackboneError, ConfigError

Layout = Literal["NCHW", "NHWC", "NLC", "NC", "auto"]
TokenPool = Literal["cls", "mean"]


@dataclass(frozen=True)
class TapSpec:
    """One tapped module.

    Attributes:
        name: label the callback receives (usually the module path).
        module: module path inside the model.
        layout: how its tensor is laid out, which decides the pooling; ``"auto"`` reads
            it from the rank (4-D → NCHW, 3-D → NLC, 2-D → NC).
        on_input: tap the module's input instead of its output (e.g. the classifier's
            input = the penultimate, pre-logits features).
    """

    name: str
    module: str
    layout: Layout = "NCHW"
    on_input: bool = False


def pool(
    x: torch.Tensor, layout: Layout, token_pool: TokenPool = "cls", prefix_tokens: int = 1
) -> torch.Tensor:
    """Pool a feature map to ``(B, D)`` (float32 or wider).

    Conv maps are global-average-pooled; token maps ``(B, T, C)`` give the class token
    (``token_pool="cls"``, the first of the ``prefix_tokens``) or the mean of the patch
    tokens after the prefix (``"mean"``; all tokens when there is no prefix).
    """
    if isinstance(x, (tuple, list)):  # some blocks return (features, extras)
        x = x[0]
    # Under CUDA autocast blocks emit bf16/fp16; averaging (and handing on) in float32
    # keeps the statistics from an 8-bit-mantissa rounding of every pooled feature.
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    if layout == "NC" or x.ndim == 2:
        # a 1×1-conv classifier (timm DLA) receives (B, C, 1, 1): flatten like Backbone.features
        return x.flatten(1).to(acc or x.dtype)
    if layout == "auto":
        layout = "NCHW" if x.ndim == 4 else "NLC"
    if layout == "NCHW":
        return x.mean(dim=(2, 3), dtype=acc)
    if layout == "NHWC":
        return x.mean(dim=(1, 2), dtype=acc)
    if layout == "NLC":
        if token_pool == "cls" and prefix_tokens > 0:
            return x[:, 0].to(acc or x.dtype)
        return x[:, prefix_tokens:].mean(dim=1, dtype=acc)
    raise ValueError(f"unknown layout {layout!r}")


class _StopForward(Exception):
    """Raised from a hook once every tap has fired: the rest of the forward is skipped."""


def _get_module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise BackboneError(f"analysis.layers: no module named {path!r} in the model") from None


class LayerTaps:
    """Hooks on several modules of one model; pooled outputs go to ``sink(name, features)``.

    Use as a context manager around forward passes run through :meth:`forward`::

        with LayerTaps(model, specs, sink) as taps:
            for x, y in loader:
                taps.forward(x)

    Args:
        model: any ``nn.Module``.
        specs: the modules to tap.
        sink: called as ``sink(spec.name, pooled)`` with ``pooled`` of shape ``(B, D)``.
        token_pool: pooling of token maps, ``"cls"`` or ``"mean"``.
        prefix_tokens: class/register tokens at the front of token maps.
        stop_early: cut the forward short once all taps have fired.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: list[TapSpec],
        sink: Callable[[str, torch.Tensor], None],
        *,
        token_pool: TokenPool = "cls",
        prefix_tokens: int = 1,
        stop_early: bool = True,
    ) -> None:
        if not specs:
            raise BackboneError("analysis.layers: nothing to tap (the layer list is empty)")
        self.model = model
        self.specs = list(specs)
        self.sink = sink
        self.token_pool = token_pool
        self.prefix_tokens = prefix_tokens
        self.stop_early = stop_early
        self._modules = [_get_module(model, s.module) for s in self.specs]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: set[str] = set()

    def _make_hook(self, spec: TapSpec):
        def deliver(tensor: torch.Tensor) -> None:
            # Only the first call per forward counts: a module that runs twice (a shared
            # activation) must not hand over 2·B rows, nor a hook fire outside forward().
            if spec.name not in self._pending:
                return
            self.sink(spec.name, pool(tensor, spec.layout, self.token_pool, self.prefix_tokens))
            self._pending.discard(spec.name)
            if self.stop_early and not self._pending:
                raise _StopForward

        if spec.on_input:
            return lambda module, args: deliver(args[0])
        return lambda module, args, output: deliver(output)

    def __enter__(self) -> LayerTaps:
        for spec, module in zip(self.specs, self._modules, strict=True):
            hook = self._make_hook(spec)
            register = (
                module.register_forward_pre_hook if spec.on_input else module.register_forward_hook
            )
            self._handles.append(register(hook))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def forward(self, x: torch.Tensor) -> None:
        """Run the model on ``x`` so every tap fires once (output logits are discarded)."""
        self._pending = {s.name for s in self.specs}
        with suppress(_StopForward):
            self.model(x)
        if self._pending:
            missing = ", ".join(sorted(self._pending))
            raise BackboneError(
                f"analysis.layers: module(s) {missing} did not run in the forward pass"
            )


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else MPS, else CPU; otherwise ``torch.device(device)``."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return local_device(torch.device("cuda"))  # under torchrun: cuda:LOCAL_RANK
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"device: {str(device)!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(
            f"device: {device!r} requested but CUDA is not available; use device=cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {device!r} requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); use cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = local_device(dev)
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"device: {device!r} requested but MPS is not available; use device=cpu")
    return dev


def amp_dtype() -> torch.dtype:
    """The CUDA autocast dtype: bfloat16 where the GPU runs it natively (Ampere and later),
    else float16, which needs loss scaling. Emulated bf16 (T4, V100) is slower than fp16."""
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # pragma: no cover - torch without the keyword
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    """:func:`amp_dtype` autocast on CUDA, a no-op elsewhere or when not ``enabled``."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype())


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an image batch; on CUDA use channels_last, which convnets run faster in."""
    if device.type == "cuda" and x.ndim == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore each module's previous mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
