"""Images of any bit depth to 8-bit RGB, scaled rather than clipped.

PIL's ``convert("RGB")`` clips 16-bit, 32-bit integer and float images to 0..255, so a
16-bit PNG (mode ``I;16`` or ``I``) becomes almost all white with no warning. Every image
nctune decodes goes through :func:`to_rgb8` instead, which scales by the depth:

=================================  ==============================================
mode                               8-bit value
=================================  ==============================================
``I;16``, ``I;16L/B/N`` (16-bit)   round(v · 255 / 65535)
``I`` (32-bit int) within 0..65535 round(v · 255 / 65535): how PIL opens 16-bit
                                   PNG and TIFF files
``I`` beyond 16 bits               round(max(v, 0) · 255 / max): scaled by the
                                   image's own maximum (no fixed range exists)
``F`` (32-bit float) within 0..1   round(v · 255)
``F`` within 0..255                round(v)
``F`` beyond 255                   round(max(v, 0) · 255 / max)
anything else (L, P, RGBA, …)      PIL's own ``convert("RGB")`` (already 8-bit)
=================================  ==============================================

Negative values count as 0. NaN or infinite pixels raise :class:`ValueError` (callers
turn it into a one-line :class:`~nctune.errors.DataError` naming the file).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Modes PIL uses for more than 8 bits per sample (single channel).
WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_16BIT_MAX = 65535.0


def _full_scale(values: np.ndarray, sixteen_bit: bool, is_float: bool) -> float:
    """The value that maps to 255 (see the module table)."""
    hi = float(values.max()) if values.size else 0.0
    if sixteen_bit:
        return _16BIT_MAX
    if not is_float:
        return _16BIT_MAX if hi <= _16BIT_MAX else hi
    if hi <= 1.0:
        return 1.0
    if hi <= 255.0:
        return 255.0
    return hi


def array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixels of any integer or float dtype as uint8, scaled by depth (module table).

    ``uint8`` (and ``bool``, as 0/255) arrays pass through; ``uint16`` scales by 65535;
    other integers like PIL's ``I`` mode; floats like its ``F`` mode. The scale is one
    for the whole array, so colour channels keep their ratios.

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` pixels.

    Returns:
        The uint8 array, same shape.

    Raises:
        ValueError: NaN or infinite values, or a dtype that is not a number.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"pixels of dtype {array.dtype} are not numbers")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the image holds NaN or infinite pixels")
    is_float = np.issubdtype(array.dtype, np.floating)
    scale = _full_scale(values, array.dtype == np.uint16, is_float)
    if scale <= 0:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint(np.clip(values, 0.0, scale) * (255.0 / scale)).astype(np.uint8)


def to_rgb8(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image, wide modes scaled by their depth (module table).

    With v a pixel value and s the full-scale value (65535 for 16-bit data; 1, 255 or the
    image maximum for floats), the 8-bit value is round(clip(v, 0, s) · 255 / s).

    Args:
        img: a PIL image of any mode; it is decoded here (truncated files raise).

    Returns:
        An ``RGB`` image (grey levels repeated over the three channels for wide modes).

    Raises:
        ValueError: the image holds NaN or infinite pixels.
        OSError: the file behind ``img`` cannot be decoded (as PIL raises it).
    """
    if img.mode not in WIDE_MODES:
        return img.convert("RGB")
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        values = values.astype(np.uint16)  # native order, whatever the file's was
    return Image.fromarray(array_to_uint8(values)).convert("RGB")
