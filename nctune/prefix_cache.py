"""Frozen-prefix cache: compute the frozen front of the network once, train only the rest.

When nothing before the first tuned block trains and the data sees no random
augmentation, that block's input is a fixed function of the image. We compute it once
(the *cut* input), keep it in memory or on disk, and later epochs run only the suffix:
the modules that finish before the cut are stubbed out (they return the output they
gave for one traced sample, expanded to the batch: a cheap placeholder of the right
shape and dtype), the model gets an all-zero image batch, and a pre-hook hands the cut
module its cached input. Nothing is assumed about the model's ``forward`` code beyond
"the cut module's single input carries everything the suffix needs"; that is checked on
a real batch (cached logits must match uncached ones within ``rtol=1e-4``) before the
cache is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nctune.taps import _StopForward, autocast, to_device

HEAD = "head"  # cut at the classifier head: the whole backbone is the prefix
CACHE_DIR_PREFIX = "nctune-prefix-"


def remove_stale_caches(run_dir: str | Path | None) -> None:
    """Delete disk caches a killed run left in ``run_dir`` (the run folder is nctune's).

    Call once before building a run's caches, never between them: a later build must not
    delete the folder an earlier one is serving from.

    Args:
        run_dir: the run folder; every ``nctune-prefix-*`` entry in it is removed. None
            does nothing.
    """
    if run_dir is not None:
        for stale in Path(run_dir).glob(f"{CACHE_DIR_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


@dataclass
class CacheInfo:
    """What the report says about the cache: used or not, where, how big, and why.

    Attributes:
        used: the cache served training.
        cut: module path whose input is cached (``'head'``: the head's input), or None.
        where: ``'memory'`` or ``'disk'`` when used, else None.
        megabytes: the cache's size in MiB (the size it would need, when refused as too
            big).
        reason: why the cache is (not) used.
    """

    used: bool
    cut: str | None = None
    where: str | None = None
    megabytes: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict:
        """The report's ``cache`` entry.

        Returns:
            The fields as a dict, ``megabytes`` rounded to one decimal.
        """
        return {
            "used": self.used,
            "cut": self.cut,
            "where": self.where,
            "megabytes": round(self.megabytes, 1),
            "reason": self.reason,
        }


def find_cut(model: nn.Module, block_names: list[str]) -> str | None:
    """The module whose input becomes the cache.

    The head when the whole backbone is frozen, else the first block (shallow → deep)
    holding a trainable parameter. Trainable parameters outside the blocks (stem, class
    token, final norm) are not checked here: :meth:`PrefixCache.build` refuses the cut
    when one runs before it.

    Args:
        model: the :class:`~nctune.strategies.TunedModel` (its ``backbone`` is read).
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
    # when they run after the cut; the trace in PrefixCache.build checks the order.
    return f"backbone.{first}"


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


class PrefixCache:
    """Cut inputs for a whole dataset, plus the stubs that let the model start at the cut.

    Build with :meth:`build`; read cached batches with :meth:`batch`; run the model on a
    cached batch with :meth:`forward` inside ``with cache.attached(model):``; free a disk
    cache with :meth:`close`.

    Attributes:
        cut: module path whose input is cached (``'head'``: the head's input).
        inputs: the cut inputs of every sample, a tensor (memory) or ``np.memmap`` (disk).
        labels: the samples' labels.
        image_shape: shape of one input image, ``(C, H, W)``.
        stub_outputs: prefix module path → its output for one sample (a placeholder).
        info: the :class:`CacheInfo` for the report.
    """

    def __init__(
        self,
        cut: str,
        inputs,
        labels: torch.Tensor,
        image_shape: tuple[int, ...],
        stubs: dict[str, torch.Tensor],
        info: CacheInfo,
        tmpdir: str | None,
    ) -> None:
        self.cut = cut
        self.inputs = inputs  # torch.Tensor (memory) or np.memmap (disk)
        self.labels = labels
        self.image_shape = image_shape
        self.stub_outputs = stubs  # prefix module path → one sample's output (shape/dtype only)
        self.info = info
        self._tmpdir = tmpdir
        self._batch: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def close(self) -> None:
        """Delete the disk cache, if any."""
        self.inputs = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # --------------------------------------------------------------- building
    @staticmethod
    def _capture(
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

    @classmethod
    def build(
        cls,
        model: nn.Module,
        cut: str,
        loader,
        *,
        device: torch.device,
        max_memory_mb: float,
        max_disk_mb: float,
        prefer: str = "auto",
        disk_dir: str | Path | None = None,
        amp: bool = True,
    ) -> tuple[PrefixCache | None, CacheInfo]:
        """Compute the cut inputs of every sample of ``loader`` (unshuffled, un-augmented).

        Before caching, the first batch checks that the prefix is deterministic (equal in
        two training-mode passes and in eval mode) and, for a block cut, that only
        frozen, single-call modules run before the cut. After caching, the cached path
        must reproduce the model's logits on that batch (``rtol=1e-4``, ``atol=1e-5``).
        The model's train/eval mode is restored.

        Args:
            model: the :class:`~nctune.strategies.TunedModel` (unwrapped from PEFT).
            cut: from :func:`find_cut`.
            loader: ``(images, labels)`` batches, unshuffled; ``loader.dataset`` gives N.
            device: where the model runs.
            max_memory_mb: the largest cache kept in memory (MiB).
            max_disk_mb: the largest cache written to disk (MiB; bfloat16 inputs are
                stored as float32, twice the size).
            prefer: ``'auto'`` (memory if it fits, else disk), ``'memory'`` or ``'disk'``.
            disk_dir: the folder for a disk cache (None: the system temporary folder).
            amp: autocast as in training, so cached inputs match the trained ones.

        Returns:
            ``(cache, info)``, or ``(None, info)`` with the reason when caching is
            impossible, unsafe or too big.
        """
        it = iter(loader)
        try:
            x0, y0 = next(it)
        except StopIteration:
            return None, CacheInfo(False, cut, reason="empty training set")
        was_training = model.training
        stubs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            model.train()
            a = cls._capture(model, cut, x0, device, amp)
            b = cls._capture(model, cut, x0, device, amp)
            if not torch.equal(a, b):
                model.train(was_training)
                return None, CacheInfo(
                    False,
                    cut,
                    reason="the frozen prefix is random in training mode (dropout/drop-path before the tuned block)",
                )
            model.eval()
            if not torch.equal(a, cls._capture(model, cut, x0, device, amp)):
                model.train(was_training)
                return None, CacheInfo(
                    False, cut, reason="the frozen prefix differs between train and eval mode"
                )
            if cut != HEAD:
                stubs, why = cls._plan_stubs(model, cut, x0, device, amp)
                if stubs is None:
                    model.train(was_training)
                    return None, CacheInfo(False, cut, reason=why)
        n = len(loader.dataset)
        mb = n * a[0].numel() * a.element_size() / 2**20
        disk_mb = mb * (2 if a.dtype == torch.bfloat16 else 1)  # numpy has no bf16: float32
        where = "memory" if prefer in ("auto", "memory") and mb <= max_memory_mb else None
        if where is None and prefer in ("auto", "disk") and disk_mb <= max_disk_mb:
            where, mb = "disk", disk_mb
        if where is None:
            model.train(was_training)
            return None, CacheInfo(
                False,
                cut,
                megabytes=mb,
                reason=f"the cache would need {mb:.0f} MiB, over the memory/disk limits (train.cache_max_mb, train.cache_disk_max_mb)",
            )
        tmpdir = None
        shape = (n, *a.shape[1:])
        if where == "memory":
            store = torch.empty(shape, dtype=a.dtype)
        else:
            tmpdir = tempfile.mkdtemp(prefix=CACHE_DIR_PREFIX, dir=disk_dir)
            np_dtype = (
                torch.empty(0, dtype=a.dtype).numpy().dtype
                if a.dtype != torch.bfloat16
                else np.float32
            )
            store = np.lib.format.open_memmap(
                os.path.join(tmpdir, "prefix.npy"), mode="w+", dtype=np_dtype, shape=shape
            )
        labels = torch.empty(n, dtype=torch.long)
        pos = 0
        with torch.no_grad():
            for x, y in [(x0, y0), *it]:
                feats = cls._capture(model, cut, x, device, amp).cpu()
                b = feats.shape[0]
                if where == "memory":
                    store[pos : pos + b] = feats
                else:
                    store[pos : pos + b] = (
                        feats.float().numpy() if feats.dtype == torch.bfloat16 else feats.numpy()
                    )
                labels[pos : pos + b] = torch.as_tensor(y)
                pos += b
        info = CacheInfo(True, cut, where, mb, "frozen prefix computed once")
        cache = cls(cut, store, labels, tuple(x0.shape[1:]), stubs, info, tmpdir)
        cache._dtype = a.dtype
        # The proof that stubbing is sound for this model: on a real batch, in eval mode
        # (deterministic), the cached path must give the uncached logits.
        with torch.no_grad():
            model.eval()
            with autocast(device, amp):
                want = model(to_device(x0, device))
                with cache.attached(model):
                    got = cache.forward(model, model, a)[0]
        model.train(was_training)
        if not torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5):
            cache.close()
            return None, CacheInfo(
                False,
                cut,
                reason=f"running from {cut} does not reproduce the model's output (its forward needs more than that block's input)",
            )
        return cache, info

    @classmethod
    def _plan_stubs(cls, model, cut, x0, device, amp) -> tuple[dict[str, torch.Tensor] | None, str]:
        """Modules to stub: those that finish before the cut starts (outermost only)."""
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

    # ---------------------------------------------------------------- running
    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached cut inputs and labels of ``indices``.

        Args:
            indices: int64 sample indices (CPU).

        Returns:
            ``(inputs, labels)`` on CPU; inputs in the dtype they were computed in.
        """
        if isinstance(self.inputs, torch.Tensor):
            x = self.inputs[indices]
        else:
            x = torch.from_numpy(np.ascontiguousarray(self.inputs[indices.numpy()])).to(self._dtype)
        return x, self.labels[indices]

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Stub the prefix and feed the cut from the cache while the block runs.

        A no-op for a head cut. Stubs and the pre-hook are removed on exit.

        Args:
            model: the :class:`~nctune.strategies.TunedModel` the cache was built for.

        Yields:
            Nothing; call :meth:`forward` inside the block.
        """
        if self.cut == HEAD:
            yield
            return
        originals = {}

        def stub(sample: torch.Tensor):
            def forward(*args, **kwargs):
                return sample.expand(self._batch.shape[0], *sample.shape[1:])

            return forward

        for name, sample in self.stub_outputs.items():
            m = model.get_submodule(name)
            originals[name] = m
            m.forward = stub(sample)
        hook = model.get_submodule(self.cut).register_forward_pre_hook(
            lambda m, args: (self._batch,)
        )
        try:
            yield
        finally:
            hook.remove()
            for m in originals.values():
                del m.forward  # back to the class's forward

    def forward(
        self, model: nn.Module, tuned: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, head input)`` for a cached batch ``x`` (already on the device).

        Args:
            model: what trains (a PEFT wrapper or the TunedModel).
            tuned: the TunedModel.
            x: cut inputs from :meth:`batch`, already on the device.

        Returns:
            ``(logits, features the head sees)``. For a block cut, only inside
            :meth:`attached`.
        """
        if self.cut == HEAD:
            return tuned.head(tuned.head_drop(x)), x
        self._batch = x
        placeholder = torch.zeros((1, *self.image_shape), device=x.device).expand(
            x.shape[0], *self.image_shape
        )
        return model(placeholder, return_features=True)

    _dtype = torch.float32
