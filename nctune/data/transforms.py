"""Transforms: from a backbone's input config to normalised (3, T, T) float32 tensors.

* Image files (and torchvision sets decoded per sample) go through timm's eval
  transform with PIL: shorter side to ``floor(T / crop_pct)``, centre crop T×T
  (:func:`eval_transform`).
* Small in-memory uint8 images are resized whole to T×T by a batched, antialiased
  ``interpolate`` kept as uint8 (:func:`_resize_uint8`), so serving a sample is an index
  plus a normalisation.
* Every image becomes 3-channel RGB (grayscale is repeated), then
  ``(x / 255 − mean) / std`` with the backbone's mean and std.
* Augmentation (training split only): ``RandomResizedCrop(T, scale=(0.5, 1))`` and an
  optional horizontal flip; a ``data.augment`` policy string adds timm's RandAugment,
  AugMix or AutoAugment (or torchvision's TrivialAugmentWide) after them
  (:func:`augment_steps`), its random draws seeded from torch's generator.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from nctune.data.bitdepth import to_rgb8
from nctune.data.input_config import crop_fraction, per_channel, resize_side, resolve_input_config
from nctune.errors import ConfigError, DataError

#: Light augmentation: crops keep at least half the image, so few-shot classes stay visible.
AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3 / 4, 4 / 3)
_RESIZE_CHUNK = 1024  # images per batched interpolate: bounds the float32 temporaries


@dataclass(frozen=True)
class _Spec:
    """Resolved transform parameters shared by every dataset of one build."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    crop_mode: str = "center"

    @classmethod
    def from_input_config(cls, input_config: Any) -> _Spec:
        """The transform's view of a resolved config (:func:`resolve_input_config`)."""
        return cls(
            image_size=int(input_config.image_size),
            mean=per_channel(input_config.mean, "mean"),
            std=per_channel(input_config.std, "std"),
            interpolation=str(getattr(input_config, "interpolation", "bilinear") or "bilinear"),
            crop_pct=crop_fraction(input_config),
            crop_mode=str(getattr(input_config, "crop_mode", "center") or "center"),
        )

    @property
    def tensor_mode(self) -> str:
        """``F.interpolate`` mode: bicubic or bilinear (antialiased); timm's others map here."""
        return "bicubic" if self.interpolation in ("bicubic", "lanczos") else "bilinear"

    def pil_interpolation(self) -> Any:
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
        image_size: ``T``; default ``input_config.image_size`` (resolved by
            :func:`~nctune.data.input_config.resolve_input_config`, as a recipe's
            ``data.image_size`` is).

    Returns:
        A callable mapping a PIL image to a float32 tensor of shape (3, T, T).

    Raises:
        ValueError: ``mean`` or ``std`` has neither 1 nor 3 values.
        ConfigError: ``T`` is below the smallest input side nctune takes.
    """
    resolved = resolve_input_config(input_config, image_size=image_size)
    return _pil_transform(_Spec.from_input_config(resolved), augment=False)


@contextlib.contextmanager
def torch_seeded() -> Iterator[None]:
    """Seed Python's and NumPy's global generators from torch's, and put theirs back after.

    timm's augmentation policies, ``Mixup`` and ``RandomErasing`` draw from those
    generators; drawing their seed from torch's (seeded by the run, saved by its
    checkpoints) makes them repeat for a seed and on resume, without touching the caller's
    own random state.
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


class _Seeded:
    """A transform whose Python/NumPy random draws come from torch's generator."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> Any:
        with torch_seeded():
            return self.transform(img)


def _policy(spec: _Spec, policy: str) -> Callable[[Any], Any]:
    """timm's transform for an augmentation policy string (a PIL image in and out), as
    ``timm.data.create_transform(auto_augment=…)`` builds it."""
    if policy == "trivialaugment":
        return T.TrivialAugmentWide(interpolation=spec.pil_interpolation())
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    params: dict[str, Any] = {
        "translate_const": int(spec.image_size * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in spec.mean),
    }
    try:
        if policy.startswith("rand"):
            return _Seeded(rand_augment_transform(policy, params))
        if policy.startswith("augmix"):
            return _Seeded(augment_and_mix_transform(policy, {**params, "translate_pct": 0.3}))
        return _Seeded(auto_augment_transform(policy, params))
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise ConfigError(
            f"data.augment: timm refuses {policy!r} ({err or 'bad option'})"
        ) from None


def augment_steps(spec: _Spec, augment: bool | str, flip: bool, *, tensor: bool) -> list[Any]:
    """The training split's random steps: a random resized crop keeping at least half the
    image, a horizontal flip (unless ``flip`` is False), then the ``augment`` policy when it
    is a string (:func:`_policy`).

    Args:
        spec: the transform parameters.
        augment: True for crop and flip, or a policy string (``data.augment``).
        flip: allow horizontal flips.
        tensor: the steps take uint8 (C, H, W) tensors (else PIL images); a timm policy
            then goes through PIL and back.

    Raises:
        ConfigError: timm refuses the policy string.
    """
    interp = InterpolationMode(spec.tensor_mode) if tensor else spec.pil_interpolation()
    steps: list[Any] = [
        T.RandomResizedCrop(
            spec.image_size, scale=AUG_SCALE, ratio=AUG_RATIO, interpolation=interp, antialias=True
        )
    ]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if isinstance(augment, str):
        if tensor:
            steps += [_to_pil_rgb, _policy(spec, augment), T.PILToTensor()]
        else:
            steps.append(_policy(spec, augment))
    return steps


def _to_pil_rgb(x: torch.Tensor) -> Any:
    """uint8 (C, H, W) → an RGB PIL image (timm's policies expect three channels)."""
    return T.functional.to_pil_image(x.expand(3, -1, -1) if x.shape[0] == 1 else x)


def _pil_transform(
    spec: _Spec, *, augment: bool | str, flip: bool = True
) -> Callable[[Any], torch.Tensor]:
    interp = spec.pil_interpolation()
    if augment:
        steps = augment_steps(spec, augment, flip, tensor=False)
    else:
        scale = resize_side(spec)
        # timm's eval transform: "squash" resizes to a square ignoring the aspect ratio;
        # otherwise the shorter side is resized ("border" padding is treated as "center")
        steps = [
            T.Resize((scale, scale) if spec.crop_mode == "squash" else scale, interpolation=interp),
            T.CenterCrop(spec.image_size),
        ]
    pipeline = T.Compose([*steps, T.PILToTensor()])
    normalize = spec.normalizer()
    check = resize_check(spec, augment=augment)

    def transform(img: Any) -> torch.Tensor:
        img = to_rgb8(img)  # 16-bit/float images scaled, not clipped
        if check is not None:
            check(img)
        return normalize(pipeline(img))

    return transform


def resize_check(spec: _Spec, *, augment: bool | str) -> Callable[[Any], None] | None:
    """The eval transform's check that a PIL image can be resized (:func:`check_resizable`),
    or None where no shorter side is resized (augmenting crops first; ``squash``)."""
    if augment or spec.crop_mode == "squash":
        return None
    side = resize_side(spec)
    return lambda img: check_resizable(img.size, side)


def check_resizable(size: tuple[int, int], shorter_side: int) -> None:
    """Refuse an image whose shorter side cannot be resized to ``shorter_side`` pixels.

    Resizing a ``w × h`` image so that its shorter side is ``s`` makes it
    ``s × ⌈s · max(w, h) / min(w, h)⌉``: a 1-pixel-wide strip 10⁸ pixels long becomes
    billions of pixels, which overflows PIL's resize (or exhausts memory). The limit is the
    one PIL itself refuses to open, twice ``PIL.Image.MAX_IMAGE_PIXELS`` (its
    decompression-bomb error; with that check turned off, a side of 2³¹ − 1 pixels).

    Args:
        size: the image's ``(width, height)``.
        shorter_side: ``s``, the eval transform's resize of the shorter side.

    Raises:
        DataError: the resized image would pass the limit (one line with both sizes).
    """
    short, long = sorted(size)
    resized = -(-shorter_side * long // max(short, 1))  # ceil
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if resized >= 2**31 - 1 or (limit is not None and resized * shorter_side > limit):
        w, h = size
        raise DataError(
            f"a {w}×{h} px image is too elongated to resize to {shorter_side} px on its "
            f"shorter side ({resized:,} px long, past PIL's image size limit); crop or remove it"
        )


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
