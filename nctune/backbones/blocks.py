"""Block discovery: which modules of a network are its blocks, its classifier, its layouts.

Works on any ``nn.Module`` (timm, torchvision or plain): :func:`list_blocks` finds the
ordered tappable blocks, :func:`resolve_layers` turns the recipe's paths and globs into
module paths, :func:`measure_layers` reads each module's output width and layout from one
dummy forward.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nctune.errors import BackboneError

__all__ = ["find_classifier", "list_blocks", "measure_layers", "resolve_layers"]

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


def _is_head(m: nn.Module | None) -> bool:
    """A classifier nctune can read and replace: ``nn.Linear`` or timm's 1×1 ``nn.Conv2d``."""
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))


def find_classifier(model: nn.Module) -> str | None:
    """Module path of the final classifier, or None.

    timm's ``pretrained_cfg['classifier']`` or ``get_classifier()`` when the model has
    them; otherwise (torchvision, plain models) the last ``nn.Linear`` registered.

    Args:
        model: any ``nn.Module``.

    Returns:
        The path of an ``nn.Linear`` (or timm's 1×1 ``nn.Conv2d``) head, or None.
    """
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
    head = find_classifier(model)
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


def resolve_layers(
    model: nn.Module,
    patterns: Sequence[str] | None,
    *,
    field: str = "analysis.layers",
    where: str = "the model",
    blocks: Sequence[str] | None = None,
) -> list[str]:
    """Module paths named by exact paths or ``fnmatch`` globs, in depth order.

    ``None`` means every block (:func:`list_blocks`). A glob is matched against the blocks
    first and against every module path only when no block matches, so ``'layer4.*'``
    means the blocks of ``layer4`` while ``'*.conv2'`` reaches inside them. A model whose
    blocks cannot be found still resolves exact paths and globs over its module paths.

    Args:
        model: any ``nn.Module``.
        patterns: exact module paths and/or globs (``*``, ``?``, ``[``), or None.
        field: the recipe field error messages name.
        where: what error messages call the model (a backbone's spec).
        blocks: the model's blocks when already known (a :class:`Backbone` caches them);
            default: found with :func:`list_blocks` when a glob or an error needs them.

    Returns:
        The matched module paths, without duplicates, in the model's module order.

    Raises:
        BackboneError: an entry matches no module (the message names it, suggests a
            close path and lists blocks), or ``patterns`` is None and the model's blocks
            cannot be found.
    """
    if patterns is None:
        return list(blocks) if blocks is not None else list_blocks(model)
    order = {n: i for i, (n, _) in enumerate(model.named_modules()) if n}
    found: list[list[str]] = [] if blocks is None else [list(blocks)]

    def known_blocks() -> list[str]:
        if not found:  # only a glob or an error needs them
            try:
                found.append(list_blocks(model))
            except BackboneError:
                found.append([])
        return found[0]

    chosen: set[str] = set()
    for pattern in (str(p).strip() for p in patterns):
        if pattern in order:
            chosen.add(pattern)
            continue
        matches: list[str] = []
        if any(c in pattern for c in "*?["):
            matches = fnmatch.filter(known_blocks(), pattern) or fnmatch.filter(order, pattern)
        if not matches:
            close = difflib.get_close_matches(pattern, list(order), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            names = known_blocks()
            shown = ", ".join(names[:4] + (["…"] if len(names) > 5 else []) + names[-1:])
            valid = f"; blocks: {shown}" if names else ""
            raise BackboneError(f"{field}: no module matches {pattern!r} in {where}{hint}{valid}")
        chosen.update(matches)
    return sorted(chosen, key=order.__getitem__)


# ======================================================================= layouts
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


def measure_layers(
    model: nn.Module, names: Sequence[str], x: torch.Tensor, *, where: str
) -> list[tuple[str, int]]:
    """(layout, width) of each named module's output, from one forward of ``x`` with hooks.

    The forward runs in eval mode without gradients; the model's train/eval mode is
    restored.

    Args:
        model: any ``nn.Module``.
        names: module paths inside ``model``.
        x: the dummy input.
        where: what error messages call the model.

    Returns:
        ``(layout, dim)`` per name, in the given order; layout is ``'NCHW'``, ``'NHWC'``,
        ``'NLC'`` or ``'NC'``.

    Raises:
        BackboneError: a name is not a module, a module does not run in the forward, or
            its output is not 2-, 3- or 4-dimensional.
    """
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:
        if not name or name not in modules:
            raise BackboneError(f"analysis.layers: no module named {name!r} in {where}")

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            if t is not None and name not in shapes:
                shapes[name] = tuple(t.shape)

        handles.append(modules[name].register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    default_4d = "NHWC" if getattr(model, "output_fmt", None) == "NHWC" else "NCHW"
    out = []
    for name in names:
        if name not in shapes:
            raise BackboneError(
                f"analysis.layers: module {name!r} of {where} produced no tensor in the forward pass"
            )
        try:
            out.append(_layout(shapes[name], default_4d))
        except ValueError as err:
            raise BackboneError(f"analysis.layers: {name!r} of {where}: {err}") from None
    return out
