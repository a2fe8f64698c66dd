"""Datasets, splits, few-shot sampling and transforms.

:func:`build_data` turns a :class:`~nctune.config.DataConfig` and a backbone's input
config into :class:`DataSplits` (train / val / test datasets yielding
``(float32 (3, H, W) normalised image, int label)``); :func:`make_loader` wraps one in a
seeded :class:`~torch.utils.data.DataLoader`.

Sources (``data.source``):

* ``fashion_mnist`` — IDX files from ``data.path``, else the Debian package
  ``dataset-fashion-mnist``, else the subset vendored in ``nctune/_data``
  (``data.subset`` chooses).
* ``imagefolder`` — class folders; ``train/`` + ``val/`` (and/or ``test/``) if present.
* ``csv`` — a ``path,label[,split]`` manifest, paths relative to its folder.
* ``torchvision`` — ``torchvision.datasets.<data.name>`` with root ``data.path``.
* ``digits`` — scikit-learn's bundled 8×8 digits.

Splits: an official split is used when the source has one; otherwise ``val_fraction`` /
``test_fraction`` of the training pool are held out, stratified and seeded. Few-shot
sampling (``samples_per_class``) happens after the hold-out, so validation and test sets
do not change with the shot count, and for a fixed seed a smaller shot count is a subset
of a larger one.

Transforms (``T`` = ``data.image_size`` or the backbone's ``image_size``):

* Small in-memory images (``fashion_mnist``, ``digits``, torchvision sets stored as a
  uint8 array such as MNIST/CIFAR): the whole image is resized to T×T — no centre crop,
  as these objects fill their tiny frames. The resize is done once per split as a batched
  ``interpolate(antialias=True)`` and kept as uint8 (the same rounding a PIL pipeline has),
  so serving a sample is an index plus a normalisation.
* Files and other torchvision sets: timm's eval transform — shorter side to
  ``floor(T / crop_pct)``, centre crop T×T — with PIL per image.
* Every image becomes 3-channel RGB (grayscale is repeated), then
  ``(x / 255 − mean) / std`` with the backbone's mean and std.
* ``augment=True`` (training split only): a light ``RandomResizedCrop(T, scale=(0.5, 1))``
  and a horizontal flip (no flip for digits). With ``augment=False`` the training split
  uses exactly the eval transform, which lets the trainer cache frozen-prefix outputs.
  Augmentation draws from torch's global RNG (seeded per worker by the loader's seed).

Every problem with the input raises :class:`~nctune.errors.DataError` with one line that
names the field or file, including unreadable images met while iterating (also from
loader worker processes, see :func:`make_loader`).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import inspect
import io
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from nctune.config import DataConfig
from nctune.errors import ConfigError, DataError

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IMG_EXTENSIONS",
    "DataSplits",
    "FileImageDataset",
    "ImageDataset",
    "InputConfigLike",
    "TensorImageDataset",
    "build_data",
    "eval_transform",
    "make_loader",
    "subsample",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: The vendored subset inside the package (made by scripts/make_fashion_mnist_subset.py).
VENDORED_FASHION_MNIST = "fashion_mnist_subset.npz"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")

#: Light augmentation: crops keep at least half the image, so few-shot classes stay visible.
AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3 / 4, 4 / 3)
# Above this many bytes of resized uint8 pixels a split is resized per sample instead of
# up front (full Fashion-MNIST at 224 px would be 3 GB).
_CACHE_LIMIT_BYTES = 1 << 30
_RESIZE_CHUNK = 1024  # images per batched interpolate: bounds the float32 temporaries

# Salts for the seeded generators, so each random choice has its own stream.
_SALT_HOLDOUT, _SALT_FEWSHOT, _SALT_TESTCAP, _SALT_SUBSAMPLE = 1, 2, 3, 4


class InputConfigLike(Protocol):
    """What :func:`build_data` needs from a backbone (``nctune.backbones.InputConfig``)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float


# ============================================================== transforms
@dataclass(frozen=True)
class _Spec:
    """Resolved transform parameters shared by every dataset of one build."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    crop_mode: str = "center"

    @classmethod
    def from_input_config(cls, input_config: Any, image_size: int | None) -> _Spec:
        def three(values: Any, what: str) -> tuple[float, float, float]:
            values = tuple(float(v) for v in values)
            if len(values) == 1:
                values = values * 3
            if len(values) != 3:
                raise ValueError(f"input config {what} needs 1 or 3 values, got {values}")
            return values  # type: ignore[return-value]

        crop_pct = float(getattr(input_config, "crop_pct", 1.0) or 1.0)
        return cls(
            size=int(image_size or input_config.image_size),
            mean=three(input_config.mean, "mean"),
            std=three(input_config.std, "std"),
            interpolation=str(getattr(input_config, "interpolation", "bilinear") or "bilinear"),
            crop_pct=min(crop_pct, 1.0),
            crop_mode=str(getattr(input_config, "crop_mode", "center") or "center"),
        )

    @property
    def tensor_mode(self) -> str:
        """``F.interpolate`` mode: bicubic or bilinear (antialiased); timm's others map here."""
        return "bicubic" if self.interpolation in ("bicubic", "lanczos") else "bilinear"

    def pil_interpolation(self) -> Any:
        from torchvision.transforms import InterpolationMode

        try:
            return InterpolationMode(self.interpolation)
        except ValueError:  # timm's 'random' and friends
            return InterpolationMode.BILINEAR

    def normalizer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 (C, H, W), C ∈ {1, 3} → normalised float32 (3, H, W)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

        def normalize(x: torch.Tensor) -> torch.Tensor:
            x = x.to(torch.float32).div_(255.0)
            if x.shape[0] == 1:
                x = x.expand(3, -1, -1)
            return (x - mean) / std

        return normalize


def eval_transform(
    input_config: Any, image_size: int | None = None
) -> Callable[[Any], torch.Tensor]:
    """The deterministic PIL → tensor transform nctune uses for image files.

    Convert to RGB, resize the shorter side to ``floor(T / crop_pct)`` (both sides when
    the config's ``crop_mode`` is ``"squash"``), centre-crop ``T×T`` (timm's eval
    transform) and normalise: ``(x / 255 − mean) / std`` with the backbone's mean and std.
    A ``crop_pct`` above 1 counts as 1.

    Args:
        input_config: object with ``image_size``, ``mean``, ``std``, ``interpolation``,
            ``crop_pct`` (e.g. ``nctune.backbones.InputConfig``).
        image_size: ``T``; default ``input_config.image_size``.

    Returns:
        A callable mapping a PIL image to a float32 tensor of shape (3, T, T).

    Raises:
        ValueError: ``mean`` or ``std`` has neither 1 nor 3 values.
    """
    return _pil_transform(_Spec.from_input_config(input_config, image_size), augment=False)


def _pil_transform(
    spec: _Spec, *, augment: bool, flip: bool = True
) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms as T

    interp = spec.pil_interpolation()
    if augment:
        steps: list[Any] = [
            T.RandomResizedCrop(spec.size, scale=AUG_SCALE, ratio=AUG_RATIO, interpolation=interp)
        ]
        if flip:
            steps.append(T.RandomHorizontalFlip())
    else:
        scale = math.floor(spec.size / spec.crop_pct)
        # timm's eval transform: "squash" resizes to a square ignoring the aspect ratio;
        # otherwise the shorter side is resized ("border" padding is treated as "center")
        steps = [
            T.Resize((scale, scale) if spec.crop_mode == "squash" else scale, interpolation=interp),
            T.CenterCrop(spec.size),
        ]
    pipeline = T.Compose([*steps, T.PILToTensor()])
    normalize = spec.normalizer()

    def transform(img: Any) -> torch.Tensor:
        return normalize(pipeline(img.convert("RGB")))

    return transform


def _resize_uint8(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """uint8 (N, C, h, w) → uint8 (N, C, size, size), antialiased, in bounded chunks."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        resized = F.interpolate(
            chunk, size=(size, size), mode=mode, antialias=True, align_corners=False
        )
        # bicubic overshoots; round like PIL does when it resizes a uint8 image
        out[start : start + _RESIZE_CHUNK] = resized.clamp_(0, 255).round_().to(torch.uint8)
    return out


# ================================================================ datasets
class ImageDataset(Dataset):
    """Base of nctune's datasets: ``(float32 (3, T, T), int)`` samples plus metadata.

    Attributes:
        targets: int64 array of labels, one per sample (for counts and stratification).
        augment: whether samples are randomly augmented (False: deterministic).
    """

    targets: np.ndarray
    augment: bool

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A dataset of the same kind holding only ``indices`` (in that order).

        Args:
            indices: sample positions in this dataset.

        Returns:
            The new dataset, with the same transform and augmentation.

        Raises:
            NotImplementedError: in this base class; every subclass implements it.
        """
        raise NotImplementedError

    def verify(self, max_images: int | None = None) -> None:
        """Decode up to ``max_images`` images (None: all) to find unreadable ones early.

        The base implementation does nothing: in-memory images cannot fail to decode.

        Args:
            max_images: how many samples to decode, from the first.

        Raises:
            DataError: an image cannot be read; the message names the first bad one.
        """


class TensorImageDataset(ImageDataset):
    """Images held in memory as a uint8 tensor; the eval resize is precomputed.

    Without augmentation, the whole split is resized to ``T×T`` once (kept as uint8) when
    that takes at most 1 GiB; a larger split is resized per sample instead.

    Args:
        images: uint8 (N, C, h, w) with C ∈ {1, 3}, the original pixels.
        labels: N integer labels.
        spec: transform parameters.
        augment: random-resized-crop (+ flip) per sample instead of the cached resize.
        flip: allow horizontal flips when augmenting.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        spec: _Spec,
        *,
        augment: bool = False,
        flip: bool = True,
    ) -> None:
        self.images = images
        self.targets = np.asarray(labels, dtype=np.int64)
        self.spec = spec
        self.augment = augment
        self.flip = flip
        self._normalize = spec.normalizer()
        self._aug: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._cache: torch.Tensor | None = None
        if augment:
            from torchvision import transforms as T
            from torchvision.transforms import InterpolationMode

            # tensors support only bilinear/bicubic antialiased resizing
            steps: list[Any] = [
                T.RandomResizedCrop(
                    spec.size,
                    scale=AUG_SCALE,
                    ratio=AUG_RATIO,
                    interpolation=InterpolationMode(spec.tensor_mode),
                    antialias=True,
                )
            ]
            if flip:
                steps.append(T.RandomHorizontalFlip())
            self._aug = T.Compose(steps)
        else:
            n, c = images.shape[:2]
            if n * c * spec.size * spec.size <= _CACHE_LIMIT_BYTES:
                self._cache = _resize_uint8(images, spec.size, spec.tensor_mode)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._aug is not None:
            pixels = self._aug(self.images[index])
        elif self._cache is not None:
            pixels = self._cache[index]
        else:  # too large to cache: the same resize, one image at a time
            pixels = _resize_uint8(
                self.images[index : index + 1], self.spec.size, self.spec.tensor_mode
            )[0]
        return self._normalize(pixels), int(self.targets[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> TensorImageDataset:
        """The samples at ``indices`` (in that order), sharing the precomputed resize.

        Args:
            indices: sample positions in this dataset.

        Returns:
            A :class:`TensorImageDataset` with the same transform and augmentation.
        """
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        sub = TensorImageDataset.__new__(TensorImageDataset)
        sub.__dict__.update(self.__dict__)
        sub.images = self.images[idx]
        sub.targets = self.targets[idx.numpy()]
        sub._cache = None if self._cache is None else self._cache[idx]
        return sub


def _open_rgb(path: str) -> Any:
    """Open and fully decode an image file as RGB, or raise DataError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() decodes, so truncation shows up here
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found (was it moved or deleted?)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        detail = str(err).splitlines()[0][:120] if str(err) else ""
        raise DataError(
            f"{path}: cannot read image ({err.__class__.__name__}: {detail}); "
            "fix or remove the file"
        ) from None


class FileImageDataset(ImageDataset):
    """Image files decoded with PIL per sample.

    Args:
        paths: image file paths.
        labels: one integer label per path.
        spec: transform parameters.
        augment: random-resized-crop + flip instead of the eval transform.
        flip: allow horizontal flips when augmenting.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        spec: _Spec,
        *,
        augment: bool = False,
        flip: bool = True,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.targets = np.asarray(labels, dtype=np.int64)
        self.spec = spec
        self.augment = augment
        self.flip = flip
        self._transform = _pil_transform(spec, augment=augment, flip=flip)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._transform(_open_rgb(self.paths[index])), int(self.targets[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileImageDataset:
        """The files at ``indices`` (in that order).

        Args:
            indices: sample positions in this dataset.

        Returns:
            A :class:`FileImageDataset` with the same transform and augmentation.
        """
        idx = np.asarray(indices, dtype=np.int64)
        return FileImageDataset(
            [self.paths[i] for i in idx],
            self.targets[idx],
            self.spec,
            augment=self.augment,
            flip=self.flip,
        )

    def verify(self, max_images: int | None = None) -> None:
        """Open and fully decode the first ``max_images`` files (None: all).

        Args:
            max_images: how many files to decode.

        Raises:
            DataError: a file is missing or cannot be decoded (the message names it).
        """
        for path in self.paths[:max_images]:
            _open_rgb(path)


class _TorchvisionDataset(ImageDataset):
    """A torchvision dataset whose images are decoded per sample (PIL, tensor or array)."""

    def __init__(
        self,
        base: Any,
        indices: np.ndarray,
        labels: np.ndarray,
        spec: _Spec,
        *,
        augment: bool = False,
        name: str = "",
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(labels, dtype=np.int64)
        self.spec = spec
        self.augment = augment
        self.name = name
        self._transform = _pil_transform(spec, augment=augment)

    def _image(self, index: int) -> Any:
        from PIL import Image

        base_index = int(self.indices[index])
        try:
            img = self.base[base_index][0]
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(
                f"data.name: torchvision {self.name} sample {base_index} cannot be read "
                f"({err.__class__.__name__}: {str(err)[:120]})"
            ) from None
        if isinstance(img, torch.Tensor):
            img = img.numpy()
        if isinstance(img, np.ndarray):
            if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
                img = img.transpose(1, 2, 0)
            img = Image.fromarray(np.squeeze(img).astype(np.uint8))
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._transform(self._image(index)), int(self.targets[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> _TorchvisionDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return _TorchvisionDataset(
            self.base,
            self.indices[idx],
            self.targets[idx],
            self.spec,
            augment=self.augment,
            name=self.name,
        )

    def verify(self, max_images: int | None = None) -> None:
        for i in range(len(self) if max_images is None else min(max_images, len(self))):
            self._image(i)


@dataclass
class DataSplits:
    """The datasets of one run.

    Attributes:
        train: training split (augmented iff ``data.augment``).
        val: validation split, or None (``val_fraction`` 0 and no official split).
        test: test split, or None.
        classes: class names; a label is an index into this list.
        source: where the data came from, e.g. ``'fashion_mnist (vendored subset)'``.
        image_size: the side ``T`` of every image tensor (3, T, T).
    """

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    classes: list[str]
    source: str
    image_size: int = 0

    _SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    @property
    def num_classes(self) -> int:
        """K, the number of classes (``len(classes)``)."""
        return len(self.classes)

    def describe(self) -> str:
        """One line: sizes per split, classes, image size and source.

        Returns:
            E.g. ``'digits (scikit-learn): train 1,617 / val 180 / test - images, 10
            classes, 224x224 px'`` (``-`` for a missing split).
        """
        parts = []
        for name in self._SPLITS:
            ds = getattr(self, name)
            parts.append(f"{name} {len(ds):,}" if ds is not None else f"{name} -")
        return (
            f"{self.source}: {' / '.join(parts)} images, {self.num_classes} classes, "
            f"{self.image_size}x{self.image_size} px"
        )

    def verify(self, max_images: int | None = None) -> None:
        """Decode up to ``max_images`` images of each split that decodes per sample.

        Files (and torchvision sets not held in memory) are otherwise read lazily, so a
        corrupt one would only surface mid-epoch; calling this first turns it into an
        up-front DataError naming the file. In-memory splits are skipped.

        Args:
            max_images: how many images to decode per split, from the first (None: all).

        Raises:
            DataError: an image cannot be read; the message names the first bad one.
        """
        for name in self._SPLITS:
            ds = getattr(self, name)
            if isinstance(ds, ImageDataset):
                ds.verify(max_images)


# ================================================================ splitting
def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up; Python's round() is half-to-even


def _allocate(counts: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` across classes ∝ ``counts`` (largest remainder), class k ≤ caps[k]."""
    quota = total * counts / max(int(counts.sum()), 1)
    alloc = np.minimum(np.floor(quota).astype(np.int64), caps)
    # largest fractional part first; ties by class index, so the result is deterministic
    order = np.lexsort((np.arange(len(counts)), -(quota - np.floor(quota))))
    rest = total - int(alloc.sum())
    while rest > 0:
        grew = False
        for k in order:
            if rest == 0:
                break
            if alloc[k] < caps[k]:
                alloc[k] += 1
                rest -= 1
                grew = True
        if not grew:
            break
    return alloc


def _class_perm(members: np.ndarray, seed: int, salt: int, k: int) -> np.ndarray:
    """A seeded permutation of one class's indices, independent of every other class."""
    return np.random.default_rng([seed, salt, k]).permutation(members)


def _stratified_pick(labels: np.ndarray, alloc: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """``alloc[k]`` seeded indices of each class k; sorted."""
    picked = [
        _class_perm(np.flatnonzero(labels == k), seed, salt, k)[: int(n)]
        for k, n in enumerate(alloc)
        if n > 0
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _holdout(
    labels: np.ndarray, num_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val, test) indices of one pool; each class keeps ≥ 1 train.

    Val is the first part of each class's permutation and test the next, so changing
    ``test_fraction`` does not change the validation images.
    """
    n = len(labels)
    counts = np.bincount(labels, minlength=num_classes)
    want_val = max(1, _round(val_fraction * n)) if val_fraction > 0 else 0
    want_test = max(1, _round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = _allocate(counts, want_val, np.maximum(counts - 1, 0))
    n_test = _allocate(counts, want_test, np.maximum(counts - 1 - n_val, 0))
    if want_val and n_val.sum() == 0:
        raise DataError(
            f"data.val_fraction={val_fraction}: {n} training images leave an empty validation "
            "split; raise val_fraction, add images, or set it to 0"
        )
    if want_test and n_test.sum() == 0:
        raise DataError(
            f"data.test_fraction={test_fraction}: {n} training images leave an empty test "
            "split; raise test_fraction, add images, or set it to 0"
        )
    train, val, test = [], [], []
    for k in range(num_classes):
        perm = _class_perm(np.flatnonzero(labels == k), seed, _SALT_HOLDOUT, k)
        v, t = int(n_val[k]), int(n_test[k])
        val.append(perm[:v])
        test.append(perm[v : v + t])
        train.append(perm[v + t :])
    tr, va, te = (np.sort(np.concatenate(p)).astype(np.int64) for p in (train, val, test))
    return tr, va, te


def _few_shot(labels: np.ndarray, classes: list[str], per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` seeded indices of each class (nested across shot counts)."""
    picked = []
    for k, name in enumerate(classes):
        members = np.flatnonzero(labels == k)
        if len(members) == 0:
            raise DataError(
                f"data.samples_per_class={per_class}: class {name!r} has no training images"
            )
        picked.append(_class_perm(members, seed, _SALT_FEWSHOT, k)[:per_class])
    return np.sort(np.concatenate(picked))


def _cap(labels: np.ndarray, num_classes: int, limit: int, seed: int, salt: int) -> np.ndarray:
    """A stratified seeded sample of at most ``limit`` indices (all of them if fewer)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=num_classes)
    return _stratified_pick(labels, _allocate(counts, limit, counts), seed, salt)


def subsample(dataset: Dataset, max_samples: int | None, *, seed: int = 0) -> Dataset:
    """A stratified, seeded subset of at most ``max_samples`` samples (e.g. for analysis).

    Args:
        dataset: an nctune dataset (anything else is subset with the first samples).
        max_samples: the cap; None or ≥ len(dataset) returns the dataset itself.
        seed: seed of the per-class choice.

    Returns:
        For an nctune dataset, one of the same kind whose per-class counts are
        proportional to the original ones (largest remainder); for any other dataset, a
        :class:`~torch.utils.data.Subset` of its first ``max_samples`` samples.
    """
    if max_samples is None or len(dataset) <= max_samples:  # type: ignore[arg-type]
        return dataset
    if isinstance(dataset, ImageDataset):
        k = int(dataset.targets.max()) + 1
        return dataset.subset(_cap(dataset.targets, k, max_samples, seed, _SALT_SUBSAMPLE))
    return Subset(dataset, range(max_samples))


# ================================================================== sources
@dataclass
class _Pool:
    """One split as provided by a source (before hold-out, few-shot and caps)."""

    labels: np.ndarray
    images: torch.Tensor | None = None  # uint8 (N, C, h, w): in-memory sources
    paths: list[str] | None = None  # file sources
    base: Any = None  # torchvision dataset decoded per sample
    base_indices: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> _Pool:
        idx = np.asarray(idx, dtype=np.int64)
        return _Pool(
            labels=self.labels[idx],
            images=None if self.images is None else self.images[torch.as_tensor(idx)],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            base=self.base,
            base_indices=None if self.base_indices is None else self.base_indices[idx],
        )


@dataclass
class _Source:
    classes: list[str]
    name: str
    train: _Pool
    val: _Pool | None = None
    test: _Pool | None = None
    flip: bool = True  # digits are not mirror-symmetric
    tv_name: str = ""


def _require_path(cfg: DataConfig, what: str) -> Path:
    if cfg.path is None:
        raise DataError(f"data.path: required for data.source={cfg.source} ({what})")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    return path


# ----------------------------------------------------------- fashion-mnist
def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes; DataError naming it if malformed."""
    try:
        opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read IDX file ({err.__class__.__name__}: {err})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        kind = "image" if magic == 2051 else "label"
        raise DataError(f"{path}: not an IDX {kind} file (bad magic number); re-download it")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != math.prod(dims):
        raise DataError(
            f"{path}: corrupt IDX file ({len(raw) - header} data bytes, the header says "
            f"{math.prod(dims)}); re-download it"
        )
    # a copy: frombuffer's view is read-only, which torch.from_numpy warns about
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    # accept the plain folder and torchvision's FashionMNIST/raw layout
    for sub in (folder, folder / "raw", folder / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (sub / name).is_file():
                return sub / name
    return None


_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    found = {
        split: (_find_idx(folder, img), _find_idx(folder, lab))
        for split, (img, lab) in _IDX_STEMS.items()
    }
    if any(p is None for pair in found.values() for p in pair):
        return None
    return found  # type: ignore[return-value]


def _fashion_pool(images: np.ndarray, labels: np.ndarray, where: str) -> _Pool:
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.size and int(labels.max()) >= 10:
        raise DataError(f"{where}: label {int(labels.max())} outside the 10 Fashion-MNIST classes")
    return _Pool(
        labels=labels.astype(np.int64),
        images=torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
    )


def _load_vendored() -> _Source:
    ref = resources.files("nctune") / "_data" / VENDORED_FASHION_MNIST
    try:
        payload = ref.read_bytes()
    except (OSError, FileNotFoundError):
        raise DataError(
            f"data.subset=vendored: nctune/_data/{VENDORED_FASHION_MNIST} is missing from this "
            "install; reinstall nctune or run scripts/make_fashion_mnist_subset.py"
        ) from None
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        train = _fashion_pool(z["train_images"], z["train_labels"], "vendored train")
        test = _fashion_pool(z["test_images"], z["test_labels"], "vendored test")
    return _Source(
        list(FASHION_MNIST_CLASSES), "fashion_mnist (vendored subset)", train, None, test
    )


def _load_fashion_mnist(cfg: DataConfig) -> _Source:
    if cfg.subset == "vendored":
        return _load_vendored()
    if cfg.path is not None:
        folder = _require_path(cfg, "a folder of Fashion-MNIST IDX files")
        field_name = f"data.path: {folder}"
    else:
        folder = DEBIAN_FASHION_MNIST
        field_name = f"data.subset=full: {folder}"
    files = _idx_files(folder) if folder.is_dir() else None
    if files is None:
        if cfg.path is None and cfg.subset == "auto":
            return _load_vendored()
        raise DataError(
            f"{field_name} lacks the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] and "
            "friends); install the Debian package dataset-fashion-mnist, point data.path at "
            "them, or set data.subset=vendored"
        )
    pools = {}
    for split, (img_path, lab_path) in files.items():
        pools[split] = _fashion_pool(
            _read_idx(img_path, 2051), _read_idx(lab_path, 2049), str(img_path)
        )
    return _Source(
        list(FASHION_MNIST_CLASSES),
        f"fashion_mnist ({folder})",
        pools["train"],
        None,
        pools["test"],
    )


# ------------------------------------------------------------------ digits
def _load_digits(cfg: DataConfig) -> _Source:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data.source=digits needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    # 17 grey levels 0..16 → 0..255
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    pool = _Pool(
        labels=bunch.target.astype(np.int64),
        images=torch.from_numpy(images).unsqueeze(1),
    )
    return _Source([str(c) for c in bunch.target_names], "digits (scikit-learn)", pool, flip=False)


# ------------------------------------------------------------- imagefolder
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files if not f.startswith(".") and _is_image(f))
    return sorted(found)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_pool(folder: Path, classes: list[str], where: str, *, is_train: bool) -> _Pool:
    paths: list[str] = []
    labels: list[int] = []
    index = {c: i for i, c in enumerate(classes)}
    for name in _class_dirs(folder):
        if name not in index:
            raise DataError(
                f"data.path: {folder / name} is not a class of the training split "
                f"(classes: {_short_list(classes)}); rename or remove it"
            )
        files = _list_images(folder / name)
        if not files and is_train:
            raise DataError(
                f"data.path: class folder {folder / name} has no images "
                f"({', '.join(IMG_EXTENSIONS[:4])}, …); add some or remove the folder"
            )
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise DataError(
            f"data.path: {folder} has no images in class folders ({where} split is empty)"
        )
    return _Pool(labels=np.asarray(labels, dtype=np.int64), paths=paths)


def _short_list(items: Sequence[Any], limit: int = 6) -> str:
    shown = ", ".join(repr(str(i)) for i in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _subdir(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _load_imagefolder(cfg: DataConfig) -> _Source:
    root = _require_path(cfg, "a folder of class folders")
    if not root.is_dir():
        raise DataError(
            f"data.path: {root} is not a folder (data.source=imagefolder needs class folders)"
        )
    train_dir = _subdir(root, "train")
    val_dir = _subdir(root, "val", "valid", "validation")
    test_dir = _subdir(root, "test")
    if train_dir is None or (val_dir is None and test_dir is None):
        train_dir, val_dir, test_dir = root, None, None
    classes = _class_dirs(train_dir)
    _check_classes(classes, f"data.path: {train_dir}", "class folders")
    train = _folder_pool(train_dir, classes, "train", is_train=True)
    val = _folder_pool(val_dir, classes, "val", is_train=False) if val_dir else None
    test = _folder_pool(test_dir, classes, "test", is_train=False) if test_dir else None
    return _Source(classes, f"imagefolder:{root}", train, val, test)


def _check_classes(classes: list[str], where: str, what: str) -> None:
    if len(classes) < 2:
        found = f"only {_short_list(classes)}" if classes else "none"
        raise DataError(f"{where}: needs at least two classes ({what}), found {found}")


# --------------------------------------------------------------------- csv
def _load_csv(cfg: DataConfig) -> _Source:
    manifest = _require_path(cfg, "a path,label[,split] manifest file")
    if manifest.is_dir():
        raise DataError(
            f"data.path: {manifest} is a folder; data.source=csv needs the manifest file"
        )
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"{manifest}: cannot read manifest ({err.__class__.__name__}: {err})"
        ) from None
    if not rows:
        raise DataError(f"{manifest}: empty manifest; the header must be path,label[,split]")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise DataError(
            f"{manifest}: missing column(s) {', '.join(repr(m) for m in missing)}; the header "
            f"must be path,label[,split] (found {','.join(header)})"
        )
    col = {name: header.index(name) for name in ("path", "label", "split") if name in header}
    base = manifest.parent
    entries: dict[str, list[tuple[int, str, str]]] = {"train": [], "val": [], "test": []}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DataError(
                f"{manifest} line {line}: {len(row)} fields, the header has {len(header)}"
            )
        rel, label = row[col["path"]].strip(), row[col["label"]].strip()
        split = row[col["split"]].strip().lower() if "split" in col else "train"
        split = {"": "train", "valid": "val", "validation": "val"}.get(split, split)
        if split not in entries:
            raise DataError(f"{manifest} line {line}: split {split!r} must be train, val or test")
        if not rel or not label:
            raise DataError(f"{manifest} line {line}: empty path or label")
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise DataError(
                f"{manifest} line {line}: image file {path} not found (paths are relative to "
                "the manifest's folder)"
            )
        entries[split].append((line, str(path), label))
    if not entries["train"]:
        raise DataError(f"{manifest}: no training rows (rows with split train or no split)")
    classes, to_index = _csv_classes(manifest, [lab for _, _, lab in entries["train"]])
    pools: dict[str, _Pool] = {}
    for split, items in entries.items():
        if not items:
            continue
        labels = []
        for line, _, label in items:
            idx = to_index(label)
            if idx is None:
                raise DataError(
                    f"{manifest} line {line}: label {label!r} is not one of the training classes "
                    f"({_short_list(classes)})"
                )
            labels.append(idx)
        pools[split] = _Pool(
            labels=np.asarray(labels, dtype=np.int64), paths=[p for _, p, _ in items]
        )
    return _Source(classes, f"csv:{manifest}", pools["train"], pools.get("val"), pools.get("test"))


def _csv_classes(
    manifest: Path, train_labels: list[str]
) -> tuple[list[str], Callable[[str], int | None]]:
    """Class list from the training labels: integer labels index 0..max, names sort."""
    try:
        ints = [int(label) for label in train_labels]
    except ValueError:
        ints = None
    if ints is not None:
        if min(ints) < 0:
            raise DataError(f"{manifest}: label {min(ints)} is negative; integer labels are 0..K-1")
        present = set(ints)
        classes = [str(i) for i in range(max(ints) + 1)]
        absent = [c for c in classes if int(c) not in present]
        if absent:
            raise DataError(
                f"{manifest}: class {absent[0]} has no training images (integer labels must "
                f"cover 0..{max(ints)}); add images or renumber the labels"
            )
        _check_classes(classes, str(manifest), "distinct labels")

        def to_index(label: str) -> int | None:
            try:
                value = int(label)
            except ValueError:
                return None
            return value if 0 <= value < len(classes) else None

        return classes, to_index
    classes = sorted(set(train_labels))
    _check_classes(classes, str(manifest), "distinct labels")
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, lookup.get


# ------------------------------------------------------------- torchvision
def _torchvision_class(name: str | None) -> type:
    import torchvision.datasets as tvd

    candidates = sorted(
        n
        for n in dir(tvd)
        if not n.startswith("_")
        and isinstance(getattr(tvd, n), type)
        and issubclass(getattr(tvd, n), Dataset)
        and n not in ("VisionDataset", "DatasetFolder")
    )
    if not name:
        raise DataError(
            "data.name: required for data.source=torchvision, the dataset class (e.g. CIFAR10)"
        )
    if name in candidates:
        return getattr(tvd, name)
    lowered = {c.lower(): c for c in candidates}
    guess = lowered.get(name.lower().replace("-", "").replace("_", "")) or next(
        iter(difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)), None
    )
    hint = f" (did you mean {guess}?)" if guess else f" (e.g. {', '.join(candidates[:5])}, …)"
    raise DataError(f"data.name: unknown torchvision dataset {name!r}{hint}")


def _tv_labels(ds: Any) -> np.ndarray:
    """Labels of a torchvision dataset without decoding images where possible."""
    for attr in ("targets", "labels", "_labels"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            labels = np.asarray(torch.as_tensor(values), dtype=np.int64)
            if labels.ndim != 1:  # attribute vectors (CelebA) are not class labels
                raise ValueError(f"{attr} has shape {labels.shape}")
            return labels
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    if samples is not None and len(samples) == len(ds):
        return np.asarray([int(s[1]) for s in samples], dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def _tv_array(ds: Any, n: int) -> torch.Tensor | None:
    """The dataset's pixels as uint8 (N, C, H, W) if it keeps them in memory (MNIST, CIFAR)."""
    data = getattr(ds, "data", None)
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or len(data) != n:
        return None
    if data.ndim == 3:
        return data.unsqueeze(1)
    if data.ndim == 4 and data.shape[-1] in (1, 3):
        return data.permute(0, 3, 1, 2).contiguous()
    if data.ndim == 4 and data.shape[1] in (1, 3):
        return data
    return None


def _load_torchvision(cfg: DataConfig) -> _Source:
    cls = _torchvision_class(cfg.name)
    name = cls.__name__
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    root: Path | None = None
    if "root" in params:
        if cfg.path is None:
            raise DataError(
                f"data.path: required for data.source=torchvision (the {name} root folder)"
            )
        root = Path(cfg.path).expanduser()
        if not root.exists() and not cfg.download:
            raise DataError(
                f"data.path: {root} does not exist (put the {name} files there or set "
                "data.download=true, which needs network)"
            )
        kwargs["root"] = str(root)
    if "download" in params:
        kwargs["download"] = cfg.download

    def make(**extra: Any) -> Any:
        try:
            return cls(**kwargs, **extra)
        except ValueError as err:
            if "split" in extra and "split" in str(err):
                return None  # this dataset has no such split
            raise _tv_error(name, root, err, cfg.download) from None
        except TypeError as err:
            raise DataError(
                f"data.name: torchvision {name} needs arguments nctune does not pass ({err}); "
                "export it to an image folder and use data.source=imagefolder"
            ) from None
        except Exception as err:  # third-party code: missing files, bad archives, no network
            raise _tv_error(name, root, err, cfg.download) from None

    if "train" in params:
        train_ds, val_ds, test_ds = make(train=True), None, make(train=False)
    elif "split" in params:
        train_ds = make(split="train")
        if train_ds is None:  # e.g. OxfordIIITPet
            train_ds = make(split="trainval")
        val_ds = make(split="val")
        test_ds = make(split="test")
        if train_ds is None:
            raise DataError(f"data.name: torchvision {name} has no 'train' or 'trainval' split")
    else:
        train_ds, val_ds, test_ds = make(), None, None

    pools: dict[str, _Pool] = {}
    classes: list[str] | None = None
    for split, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds)):
        if ds is None:
            continue
        if len(ds) == 0:
            raise DataError(f"data.path: torchvision {name} {split} split is empty under {root}")
        try:
            labels = _tv_labels(ds)
        except (TypeError, ValueError):
            raise DataError(
                f"data.name: torchvision {name} does not give one integer class label per image"
            ) from None
        if labels.min() < 0:  # e.g. STL10's unlabelled images carry -1
            raise DataError(
                f"data.name: torchvision {name} {split} split has unlabelled images (label "
                f"{int(labels.min())}); use a labelled split or another source"
            )
        images = _tv_array(ds, len(ds))
        if images is not None:
            pools[split] = _Pool(labels=labels, images=images)
        else:
            pools[split] = _Pool(labels=labels, base=ds, base_indices=np.arange(len(ds)))
        if classes is None:
            classes = [str(c) for c in getattr(ds, "classes", None) or []]
    k = max(int(p.labels.max()) for p in pools.values()) + 1
    if classes is None or len(classes) < k:
        classes = [str(i) for i in range(k)]
    _check_classes(classes, f"data.name: torchvision {name}", "labels")
    return _Source(
        classes,
        f"torchvision:{name}",
        pools["train"],
        pools.get("val"),
        pools.get("test"),
        tv_name=name,
    )


def _tv_error(name: str, root: Path | None, err: Exception, download: bool) -> DataError:
    detail = (str(err).splitlines() or [""])[0][:160]
    if download:
        return DataError(
            f"data.path: torchvision {name} could not be downloaded to {root} "
            f"({err.__class__.__name__}: {detail}); check the network or fetch the files yourself"
        )
    return DataError(
        f"data.path: torchvision {name} files not found or unreadable under {root} "
        f"({detail}); put them there or set data.download=true (needs network)"
    )


_LOADERS: dict[str, Callable[[DataConfig], _Source]] = {
    "fashion_mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "imagefolder": _load_imagefolder,
    "csv": _load_csv,
    "torchvision": _load_torchvision,
}


# =================================================================== build
def _dataset(src: _Source, pool: _Pool, spec: _Spec, *, augment: bool) -> ImageDataset:
    if pool.images is not None:
        return TensorImageDataset(pool.images, pool.labels, spec, augment=augment, flip=src.flip)
    if pool.paths is not None:
        return FileImageDataset(pool.paths, pool.labels, spec, augment=augment, flip=src.flip)
    assert pool.base is not None and pool.base_indices is not None
    return _TorchvisionDataset(
        pool.base, pool.base_indices, pool.labels, spec, augment=augment, name=src.tv_name
    )


def build_data(cfg: DataConfig, input_config: Any, *, seed: int = 0) -> DataSplits:
    """Load ``cfg.source``, make the splits and wrap them in transforming datasets.

    Splits: an official validation/test split is used when the source has one; otherwise
    ``val_fraction`` and then ``test_fraction`` of the training pool are held out
    (stratified by class, seeded, every class keeping at least one training image; a
    fraction of 0 means no such split). ``samples_per_class`` then samples the remaining
    training images per class (a class with fewer keeps all of them), and
    ``max_test_samples`` caps the test split (stratified, seeded).

    Args:
        cfg: the recipe's ``data`` section.
        input_config: the backbone's input config — any object with ``image_size``,
            ``mean``, ``std``, ``interpolation`` and ``crop_pct``.
        seed: seed of every random choice (same seed, same splits and samples).

    Returns:
        The splits; ``train`` is augmented iff ``cfg.augment``, val/test never are.

    Raises:
        DataError: a missing path, unreadable or malformed file, unknown label or dataset
            name, fewer than two classes, a class without training images, or an empty
            split — one line naming the field or file.
        ConfigError: the input config asks for other than 3 input channels
            (``in_chans``).
    """
    src = _LOADERS[cfg.source](cfg)
    in_chans = int(getattr(input_config, "in_chans", 3) or 3)
    if in_chans != 3:
        raise ConfigError(
            f"backbone.model_kwargs.in_chans: nctune's data pipeline feeds 3-channel images "
            f"(grayscale is repeated), not {in_chans}; drop in_chans, or call nctune.analyze "
            "with your own DataLoader"
        )
    spec = _Spec.from_input_config(input_config, cfg.image_size)
    k = len(src.classes)
    train_pool, val_pool, test_pool = src.train, src.val, src.test

    val_frac = cfg.val_fraction if val_pool is None else 0.0
    test_frac = cfg.test_fraction if test_pool is None else 0.0
    if val_frac > 0 or test_frac > 0:
        tr, va, te = _holdout(train_pool.labels, k, val_frac, test_frac, seed)
        if val_frac > 0:
            val_pool = train_pool.take(va)
        if test_frac > 0:
            test_pool = train_pool.take(te)
        train_pool = train_pool.take(tr)

    counts = np.bincount(train_pool.labels, minlength=k)
    if (counts == 0).any():
        missing = src.classes[int(np.flatnonzero(counts == 0)[0])]
        raise DataError(
            f"{src.name}: class {missing!r} has no training images; add some or drop the class"
        )
    if cfg.samples_per_class is not None:
        train_pool = train_pool.take(
            _few_shot(train_pool.labels, src.classes, cfg.samples_per_class, seed)
        )
    if test_pool is not None and cfg.max_test_samples is not None:
        test_pool = test_pool.take(
            _cap(test_pool.labels, k, cfg.max_test_samples, seed, _SALT_TESTCAP)
        )

    return DataSplits(
        train=_dataset(src, train_pool, spec, augment=cfg.augment),
        val=None if val_pool is None else _dataset(src, val_pool, spec, augment=False),
        test=None if test_pool is None else _dataset(src, test_pool, spec, augment=False),
        classes=list(src.classes),
        source=src.name,
        image_size=spec.size,
    )


# ================================================================== loaders
def _worker_message(err: DataError) -> str:
    """The original one-line message of a DataError re-raised from a loader worker.

    DataLoader re-raises worker errors as ``DataError("Caught DataError in DataLoader worker
    …\\nOriginal Traceback…\\nnctune.errors.DataError: <message>")``; the CLI prints one line.
    """
    text = str(err)
    if "\n" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        if "DataError: " in line:
            return line.split("DataError: ", 1)[1]
    return text.strip().splitlines()[-1]


class _Loader(DataLoader):
    """A DataLoader whose DataErrors keep their one-line message across worker processes."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        it = super().__iter__()
        try:
            yield from it
        except DataError as err:
            raise DataError(_worker_message(err)) from None


def _wants_cuda(device: Any) -> bool:
    if not torch.cuda.is_available():
        return False
    if device is None or str(device) == "auto":
        return True
    return torch.device(device).type == "cuda"


def make_loader(
    dataset: Dataset,
    cfg: DataConfig,
    *,
    train: bool,
    seed: int = 0,
    device: Any = None,
) -> DataLoader:
    """A DataLoader for one split.

    Args:
        dataset: a split from :func:`build_data` (any map-style dataset works).
        cfg: the recipe's ``data`` section (``batch_size``, ``num_workers``).
        train: shuffle (with a generator seeded by ``seed``); False keeps the order.
        seed: seeds the shuffle and the per-worker RNGs, so an epoch's order and its
            augmentations in worker processes repeat for the same seed.
        device: where batches go; pinned memory is used when that is a CUDA device (None
            or ``'auto'``: whenever CUDA is available).

    Returns:
        A DataLoader (``drop_last=False``, persistent workers when ``num_workers > 0``).
        A DataError raised by the dataset, also inside a worker process, reaches the
        caller as a DataError with its original one-line message.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return _Loader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train,
        num_workers=cfg.num_workers,
        generator=generator,
        pin_memory=_wants_cuda(device),
        persistent_workers=cfg.num_workers > 0,
        drop_last=False,
    )
