"""Datasets: nctune's ``(float32 (3, T, T), int label)`` map-style datasets.

* :class:`ImageDataset` — the base: ``targets``, ``augment``, ``subset`` and ``verify``.
* :class:`TensorImageDataset` — in-memory uint8 images; the eval resize is precomputed.
* :class:`FileImageDataset` — image files decoded with PIL per sample.
* :class:`_TorchvisionDataset` — any indexable dataset yielding ``(image, label)`` (PIL,
  tensor or array), decoded per sample.

Unreadable images raise :class:`~nctune.errors.DataError` naming the file or sample.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from nctune.data.bitdepth import array_to_uint8, to_rgb8
from nctune.data.transforms import (
    _pil_transform,
    _resize_uint8,
    _Spec,
    augment_steps,
    resize_check,
)
from nctune.errors import DataError, one_line

# Above this many bytes of resized uint8 pixels a split is resized per sample instead of
# up front (full Fashion-MNIST at 224 px would be 3 GB).
_CACHE_LIMIT_BYTES = 1 << 30


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
        if augment:  # tensors support only bilinear/bicubic antialiased resizing
            self._aug = T.Compose(augment_steps(spec, augment, flip, tensor=True))
        else:
            n, c = images.shape[:2]
            if n * c * spec.image_size * spec.image_size <= _CACHE_LIMIT_BYTES:
                self._cache = _resize_uint8(images, spec.image_size, spec.tensor_mode)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._aug is not None:
            pixels = self._aug(self.images[index])
        elif self._cache is not None:
            pixels = self._cache[index]
        else:  # too large to cache: the same resize, one image at a time
            pixels = _resize_uint8(
                self.images[index : index + 1], self.spec.image_size, self.spec.tensor_mode
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


class _DecoderLog(logging.Handler):
    """PIL's log records (e.g. TIFF's "More samples per pixel than can be decoded"), held
    back on a thread while :func:`open_image` decodes, as its warnings are; otherwise passed
    on as Python would pass them."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()  # loader threads decode side by side

    @contextmanager
    def hold(self) -> Iterator[list[logging.LogRecord]]:
        self._local.records = records = []
        try:
            yield records
        finally:
            self._local.records = None

    def emit(self, record: logging.LogRecord) -> None:
        held = getattr(self._local, "records", None)
        if held is not None:
            held.append(record)
        else:
            self.pass_on(record)

    @staticmethod
    def pass_on(record: logging.LogRecord) -> None:
        # A handler on "PIL" keeps Python's last resort from printing the record when no
        # logging is configured: do what it would have done (configured handlers get the
        # record by propagation anyway).
        last = logging.lastResort
        if not logging.getLogger().handlers and last and record.levelno >= last.level:
            last.handle(record)


_DECODER_LOG = _DecoderLog()
logging.getLogger("PIL").addHandler(_DECODER_LOG)


def open_image(path: str, check: Callable[[Any], None] | None = None) -> Any:
    """Open and fully decode an image file as an RGB PIL image (what every file dataset does).

    Args:
        path: the image file.
        check: called with the decoded image; a :class:`~nctune.errors.DataError` it raises
            refuses the file like a decoding error (named, the decoder's warnings held back),
            e.g. :func:`~nctune.data.transforms.check_resizable` for an image too elongated
            for the transform that follows.

    Returns:
        The decoded ``PIL.Image.Image`` in mode RGB.

    Raises:
        DataError: the file is missing or cannot be decoded (one line naming it).
    """
    # A decoder's warnings and log records about a damaged file are held back: a file that
    # is then refused gets its one line alone (bad input is one line); one that reads passes
    # them on.
    with warnings.catch_warnings(record=True) as caught, _DECODER_LOG.hold() as logged:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as img:
                rgb = to_rgb8(img)  # decodes, so truncation shows up here; 16-bit scaled
            if check is not None:
                check(rgb)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found (was it moved or deleted?)") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(
                f"{path}: cannot read image ({one_line(err, 160)}); fix or remove the file"
            ) from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for record in logged:
        _DECODER_LOG.pass_on(record)
    return rgb


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
        self._check = resize_check(spec, augment=augment)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = open_image(self.paths[index], check=self._check)
        return self._transform(img), int(self.targets[index])

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
            open_image(path)


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
            img = Image.fromarray(array_to_uint8(np.squeeze(img)))  # scaled, not wrapped
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self._image(index)  # its own one line when it cannot be read
        try:
            x = self._transform(img)
        except DataError as err:  # e.g. too elongated to resize
            where = f"data.name: {self.name} sample {int(self.indices[index])}"
            raise DataError(f"{where}: {err}") from None
        return x, int(self.targets[index])

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
