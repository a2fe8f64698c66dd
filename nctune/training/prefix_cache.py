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
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nctune.errors import Interrupted
from nctune.taps import autocast, to_device
from nctune.training.callbacks import Callback, CallbackList
from nctune.training.prefix_plan import HEAD, Plan, find_cut, plan_cache

__all__ = ["HEAD", "CacheInfo", "PrefixCache", "find_cut", "remove_stale_caches"]

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
        shared: ``'written'`` or ``'read'`` when the cache lives in a shared folder (other
            runs reuse it), else None.
    """

    used: bool
    cut: str | None = None
    where: str | None = None
    megabytes: float = 0.0
    reason: str = ""
    shared: str | None = None

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
            "shared": self.shared,
        }


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

    @classmethod
    def of_head_inputs(
        cls, features: torch.Tensor, labels: torch.Tensor, reason: str
    ) -> PrefixCache:
        """A head cut's cache from features computed elsewhere (the profile pass's
        pre-logits features of every sample, in order): the head's input needs no pass of
        its own.

        Args:
            features: ``(N, D)`` head inputs, in the data's order.
            labels: ``(N,)`` their labels.
            reason: what the cache info says about where they came from.

        Returns:
            An in-memory cache at :data:`HEAD`.
        """
        mb = features.numel() * features.element_size() / 2**20
        info = CacheInfo(True, HEAD, "memory", mb, reason)
        cache = cls(HEAD, features, labels.long(), (), {}, info, None)
        cache._dtype = features.dtype
        return cache

    def close(self) -> None:
        """Delete the disk cache, if any."""
        self.inputs = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # --------------------------------------------------------------- building
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
        shared_dir: str | Path | None = None,
        callbacks: Callback | list[Callback] | None = None,
    ) -> tuple[PrefixCache | None, CacheInfo]:
        """Compute the cut inputs of every sample of ``loader`` (unshuffled, un-augmented).

        Before caching, the first batch checks that the prefix is deterministic (equal in
        two training-mode passes and in eval mode) and, for a block cut, that only
        frozen, single-call modules run before the cut (:func:`~nctune.training.prefix_plan.
        plan_cache`). After caching, the cached path must reproduce the model's logits on
        that batch (``rtol=1e-4``, ``atol=1e-5``). The model's train/eval mode is restored.

        Args:
            model: the :class:`~nctune.training.strategies.TunedModel` (unwrapped from PEFT).
            cut: from :func:`find_cut`.
            loader: ``(images, labels)`` batches, unshuffled; ``loader.dataset`` gives N.
            device: where the model runs.
            max_memory_mb: the largest cache kept in memory (MiB).
            max_disk_mb: the largest cache written to disk (MiB; bfloat16 inputs are
                stored as float32, twice the size).
            prefer: ``'auto'`` (memory if it fits, else disk), ``'memory'`` or ``'disk'``.
            disk_dir: the folder for a disk cache (None: the system temporary folder).
            amp: autocast as in training, so cached inputs match the trained ones.
            shared_dir: a folder where caches persist for other runs (a search's trials),
                each in a subfolder named by :meth:`~nctune.training.prefix_plan.Plan.key`
                (prefix weights, cut, data and transform). A cache found there is verified
                like a new one (first batch and last sample recomputed, then the logits
                check) before use; one computed here is published there atomically once
                verified.
            callbacks: ``on_progress(phase, done, total)`` after every cached batch;
                ``should_stop`` polled before every batch: True removes the partial cache
                and raises :class:`~nctune.errors.Interrupted`.

        Returns:
            ``(cache, info)``, or ``(None, info)`` with the reason when caching is
            impossible, unsafe or too big.

        Raises:
            Interrupted: ``should_stop`` asked to stop; no cache file is left behind.
        """
        it = iter(loader)
        try:
            first = next(it)
        except StopIteration:
            return None, CacheInfo(False, cut, reason="empty training set")
        was_training = model.training
        try:
            plan, why = plan_cache(model, cut, first, device, amp)
            if plan is None:
                return None, CacheInfo(False, cut, reason=why)
            n = len(loader.dataset)
            a = plan.inputs
            mb = n * a[0].numel() * a.element_size() / 2**20
            disk_mb = mb * (2 if a.dtype == torch.bfloat16 else 1)  # numpy has no bf16: float32
            published = None
            if shared_dir is not None and disk_mb <= max_disk_mb:
                published = Path(shared_dir) / plan.key(n)
                hit = cls._read_shared(published, plan, loader.dataset)
                if hit is not None:
                    return hit, hit.info
                # Present but failing verification (damaged, or a key collision): replace it.
                shutil.rmtree(published, ignore_errors=True)
                model.eval()
                disk_dir, prefer = Path(shared_dir), "disk"  # computed once, here, for every run
                Path(shared_dir).mkdir(parents=True, exist_ok=True)
            where = "memory" if prefer in ("auto", "memory") and mb <= max_memory_mb else None
            if where is None and prefer in ("auto", "disk") and disk_mb <= max_disk_mb:
                where, mb = "disk", disk_mb
            if where is None:
                return None, CacheInfo(
                    False,
                    cut,
                    megabytes=mb,
                    reason=f"the cache would need {mb:.0f} MiB, over the memory/disk limits (train.cache_max_mb, train.cache_disk_max_mb)",
                )
            tmpdir = (
                tempfile.mkdtemp(prefix=CACHE_DIR_PREFIX, dir=disk_dir) if where == "disk" else None
            )
            batches = itertools.chain([first], it)
            total = len(loader) if hasattr(loader, "__len__") else None
            store, labels = cls._compute(
                plan, batches, n, tmpdir, total, CallbackList.of(callbacks)
            )
            info = CacheInfo(True, cut, where, mb, "frozen prefix computed once")
            cache = cls(cut, store, labels, tuple(plan.x0.shape[1:]), plan.stubs, info, tmpdir)
            cache._dtype = a.dtype
            if not cls._reproduces(cache, plan):
                cache.close()
                return None, CacheInfo(
                    False,
                    cut,
                    reason=f"running from {cut} does not reproduce the model's output (its forward needs more than that block's input)",
                )
            if published is not None:
                cache._publish(published, a.dtype)
            return cache, cache.info
        finally:
            model.train(was_training)

    @staticmethod
    @torch.no_grad()
    def _compute(
        plan: Plan,
        batches: Iterable,
        n: int,
        tmpdir: str | None,
        total: int | None,
        callbacks: CallbackList,
    ) -> tuple[torch.Tensor | np.memmap, torch.Tensor]:
        """``(cut inputs, labels)`` of all ``n`` samples, in memory or (``tmpdir``) on disk.

        Raises:
            Interrupted: a stop request; the partial store is removed first.
        """
        a = plan.inputs
        shape = (n, *a.shape[1:])
        if tmpdir is None:
            store = torch.empty(shape, dtype=a.dtype)
        else:
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
        phase = "caching frozen prefix"
        for i, (x, y) in enumerate(batches):
            if callbacks.should_stop():
                # nothing half-made: the partial store goes (the caller restores the mode)
                del store
                if tmpdir is not None:
                    shutil.rmtree(tmpdir, ignore_errors=True)
                raise Interrupted("stopped while caching the frozen prefix")
            callbacks.on_progress(phase, i, total)
            feats = plan.capture(x).cpu()
            b = feats.shape[0]
            if tmpdir is None:
                store[pos : pos + b] = feats
            else:
                store[pos : pos + b] = (
                    feats.float().numpy() if feats.dtype == torch.bfloat16 else feats.numpy()
                )
            labels[pos : pos + b] = torch.as_tensor(y)
            pos += b
        callbacks.on_progress(phase, total if total is not None else i + 1, total)
        return store, labels

    @staticmethod
    def _reproduces(cache: PrefixCache, plan: Plan) -> bool:
        """The proof that stubbing is sound for this model: on a real batch, in eval mode
        (deterministic), the cached path must give the uncached logits."""
        model = plan.model
        with torch.no_grad():
            model.eval()
            with autocast(plan.device, plan.amp):
                want = model(to_device(plan.x0, plan.device))
                with cache.attached(model):
                    got = cache.forward(model, model, plan.inputs)[0]
        return torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5)

    def _publish(self, final: Path, dtype: torch.dtype) -> None:
        """Move this (verified, disk) cache to ``final`` for other runs; first writer wins."""
        tmp = Path(self._tmpdir)
        self.inputs.flush()
        np.save(tmp / "labels.npy", self.labels.numpy())
        (tmp / "meta.json").write_text(
            json.dumps({"cut": self.cut, "dtype": str(dtype), "n": len(self)}), encoding="utf-8"
        )
        try:
            os.rename(tmp, final)  # atomic; fails when another run published first
        except OSError:
            return  # theirs is equivalent (same key); ours is deleted on close
        self._tmpdir = None  # now shared: it outlives this run
        self.info.shared = "written"
        self.info.reason = f"frozen prefix computed once and shared ({final.name[:12]})"

    @classmethod
    def _read_shared(cls, folder: Path, plan: Plan, dataset) -> PrefixCache | None:
        """A published cache from ``folder``, verified against this model and data, or None."""
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            inputs = np.load(folder / "prefix.npy", mmap_mode="r")
            labels = torch.from_numpy(np.load(folder / "labels.npy"))
        except (OSError, ValueError):
            return None
        n = len(dataset)
        if meta.get("cut") != plan.cut or meta.get("n") != n or len(labels) != n:
            return None
        a = plan.inputs
        b = a.shape[0]
        # Verified like a new cache: the first batch and the last sample recomputed here
        # must match what is stored, then the cached path must reproduce the logits.
        if not torch.equal(torch.from_numpy(np.array(inputs[:b])).to(a.dtype), a.cpu()):
            return None
        try:
            x_last, y_last = dataset[n - 1]
            last = plan.capture(torch.as_tensor(x_last)[None]).cpu()
        except Exception:  # a dataset that cannot be indexed: no proof, no reuse
            return None
        stored_last = torch.from_numpy(np.array(inputs[n - 1 : n])).to(torch.float32)
        if int(labels[-1]) != int(y_last) or not torch.allclose(
            stored_last, last.float(), rtol=1e-3, atol=1e-4
        ):
            return None
        mb = inputs.nbytes / 2**20
        info = CacheInfo(
            True, plan.cut, "disk", mb, f"read from the shared cache ({folder.name[:12]})"
        )
        info.shared = "read"
        cache = cls(plan.cut, inputs, labels, tuple(plan.x0.shape[1:]), plan.stubs, info, None)
        cache._dtype = a.dtype
        return cache if cls._reproduces(cache, plan) else None

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
            model: the :class:`~nctune.training.strategies.TunedModel` the cache was built for.

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
