"""Where the frozen prefix ends, and whether caching it is sound: the first step of
:meth:`~nctune.training.prefix_cache.PrefixCache.build`.

The cut is the input of the first module that trains (:func:`find_cut`). On the first batch,
:func:`plan_cache` checks that the prefix is a fixed function of the image (equal in two
training-mode passes and in eval mode) and, for a block cut, traces one forward pass to find
the modules that finish before the cut: each must be frozen and run once, so it can be
stubbed by the output it gave for one sample (:func:`plan_stubs`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from nctune.taps import _StopForward, autocast, to_device

HEAD = "head"  # cut at the classifier head: the whole backbone is the prefix


def find_cut(model: nn.Module, block_names: list[str]) -> str | None:
    """The module whose input becomes the cache.

    The head when the whole backbone is frozen, else the first block (shallow → deep)
    holding a trainable parameter. Trainable parameters outside the blocks (stem, class
    token, final norm) are not checked here: :func:`plan_cache` refuses the cut when one
    runs before it.

    Args:
        model: the :class:`~nctune.training.strategies.TunedModel` (its ``backbone`` is read).
        block_names: the backbone's blocks, shallow → deep.

    Returns:
        ``'head'``, ``'backbone.<block>'``, or None when every backbone parameter trains
        or no block holds a trainable parameter (nothing frozen to cache).
    """
    backbone = model.backbone
    flags = [p.requires_grad for p in backbone.parameters()]
    if not any(flags):
        return HEAD
    if all(flags):
        return None
    first = next(
        (
            n
            for n in block_names
            if any(p.requires_grad for p in backbone.get_submodule(n).parameters())
        ),
        None,
    )
    if first is None:
        return None
    # Trainable parameters outside the blocks (cls token, stem, final norm) are only fine
    # when they run after the cut; the trace in plan_stubs checks the order.
    return f"backbone.{first}"


def capture(
    model: nn.Module, cut: str, x: torch.Tensor, device: torch.device, amp: bool
) -> torch.Tensor:
    """The cut module's input for image batch ``x`` (no grad, autocast as in training)."""
    if cut == HEAD:
        with autocast(device, amp):
            return model.features(to_device(x, device)).detach()
    box: list[torch.Tensor] = []

    def grab(m, args):
        box.append(args[0].detach())
        raise _StopForward

    h = model.get_submodule(cut).register_forward_pre_hook(grab)
    try:
        with autocast(device, amp), contextlib.suppress(_StopForward):
            model(to_device(x, device))
    finally:
        h.remove()
    return box[0]


class _Trace:
    """Order of module calls in one forward: pre/post indices, output shapes."""

    def __init__(self, model: nn.Module) -> None:
        self.pre: dict[str, int] = {}
        self.post: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.out: dict[str, torch.Tensor | None] = {}
        self._n = 0
        self._handles = []
        for name, m in model.named_modules():
            if name:
                self._handles.append(m.register_forward_pre_hook(self._enter(name)))
                self._handles.append(m.register_forward_hook(self._exit(name)))

    def _enter(self, name):
        def hook(m, args):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.pre.setdefault(name, self._n)
            self._n += 1

        return hook

    def _exit(self, name):
        def hook(m, args, out):
            self.post[name] = self._n
            self._n += 1
            self.out[name] = out if isinstance(out, torch.Tensor) else None

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def plan_stubs(
    model: nn.Module, cut: str, x0: torch.Tensor, device: torch.device, amp: bool
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Modules to stub: those that finish before the cut starts (outermost only).

    Returns:
        ``(module path → one sample's output, "")``, or ``(None, why not)`` when a module
        before the cut trains, runs twice or returns a non-tensor.
    """
    trace = _Trace(model)
    try:
        with autocast(device, amp):
            model(to_device(x0[:1], device))
    finally:
        trace.remove()
    if cut not in trace.pre:
        return None, f"{cut} did not run in the forward pass"
    start = trace.pre[cut]
    prefix = {n for n, post in trace.post.items() if post < start}
    named = dict(model.named_modules())
    for n in trace.pre:
        if trace.pre[n] < start and any(
            p.requires_grad for p in named[n].parameters(recurse=False)
        ):
            return None, f"{n} trains and runs before {cut}"
    stubs: dict[str, torch.Tensor] = {}
    for n in sorted(prefix, key=trace.pre.get):
        parent = n.rpartition(".")[0]
        if parent in prefix:
            continue  # an ancestor is stubbed already
        if trace.calls.get(n, 0) != 1 or trace.out.get(n) is None:
            return None, f"{n} runs more than once or returns a non-tensor before {cut}"
        stubs[n] = trace.out[n][:1].detach()
    return stubs, ""


@dataclass
class Plan:
    """What the first batch established: the cut, its inputs there, and the stubs.

    Attributes:
        model: the :class:`~nctune.training.strategies.TunedModel`.
        cut: the cached module's path (:func:`find_cut`).
        device, amp: where and how the prefix runs (as in training).
        x0, y0: the first batch, as the loader gave it.
        inputs: the cut inputs of ``x0`` (their dtype is the cache's).
        stubs: prefix module path → one sample's output (empty for a head cut).
    """

    model: nn.Module
    cut: str
    device: torch.device
    amp: bool
    x0: torch.Tensor
    y0: torch.Tensor
    inputs: torch.Tensor
    stubs: dict[str, torch.Tensor]

    def capture(self, x: torch.Tensor) -> torch.Tensor:
        """The cut inputs of image batch ``x``."""
        return capture(self.model, self.cut, x, self.device, self.amp)

    def key(self, n: int) -> str:
        """Name of a shared cache of ``n`` samples: SHA-256 of what the cut inputs depend on.

        The prefix's weights and buffers (the stubbed modules; the whole backbone for a head
        cut), the cut, the first batch exactly as the transform delivers it, its labels, the
        number of samples, and the dtype and autocast the inputs were computed in. The rest
        of the data is checked when the cache is read.
        """
        a = self.inputs
        h = hashlib.sha256(f"{self.cut}|{n}|{a.dtype}|{self.amp}|{tuple(a.shape[1:])}".encode())
        if self.cut == HEAD:
            prefix = [self.model.backbone]
        else:
            prefix = [self.model.get_submodule(s) for s in sorted(self.stubs)]
        for module in prefix:
            for name, t in sorted(module.state_dict().items()):
                h.update(name.encode())
                _digest(h, t)
        _digest(h, torch.as_tensor(self.x0))
        _digest(h, torch.as_tensor(self.y0))
        return h.hexdigest()


def _digest(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}{tuple(tensor.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


@torch.no_grad()
def plan_cache(
    model: nn.Module,
    cut: str,
    first: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    amp: bool,
) -> tuple[Plan | None, str]:
    """Check on the first batch that the prefix before ``cut`` can be cached.

    The prefix must be deterministic (equal in two training-mode passes and in eval mode)
    and, for a block cut, only frozen, single-call modules may run before the cut. Leaves
    the model in eval mode (the caller restores its mode).

    Args:
        model: the :class:`~nctune.training.strategies.TunedModel`.
        cut: from :func:`find_cut`.
        first: the first ``(images, labels)`` batch.
        device, amp: where and how the prefix runs (as in training).

    Returns:
        ``(plan, "")``, or ``(None, why not)``.
    """
    x0, y0 = first
    model.train()
    a = capture(model, cut, x0, device, amp)
    if not torch.equal(a, capture(model, cut, x0, device, amp)):
        return None, (
            "the frozen prefix is random in training mode (dropout/drop-path before the "
            "tuned block)"
        )
    model.eval()
    if not torch.equal(a, capture(model, cut, x0, device, amp)):
        return None, "the frozen prefix differs between train and eval mode"
    stubs: dict[str, torch.Tensor] = {}
    if cut != HEAD:
        stubs, why = plan_stubs(model, cut, x0, device, amp)
        if stubs is None:
            return None, why
    return Plan(model, cut, device, amp, x0, y0, a, stubs), ""
