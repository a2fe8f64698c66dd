"""``data.source: digits`` — scikit-learn's bundled 8×8 handwritten digits (1,797 images,
no official splits, no horizontal flips when augmenting)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from nctune.data.sources._base import SOURCES, _Pool, _Source
from nctune.errors import DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection


@SOURCES.register("digits")
def _load_digits(cfg: DataSection) -> _Source:
    """scikit-learn's bundled 8x8 digits."""
    # lazy: scikit-learn is an optional extra (nctune[sklearn]) and heavy to import
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
