"""What every data source shares: the registry, the pools a loader returns, path and
class-list checks.

A source is a function ``cfg (DataSection) -> _Source`` registered under its
``data.source`` name::

    @SOURCES.register("digits")
    def load_digits(cfg: DataSection) -> _Source: ...

It returns the class names and one :class:`_Pool` per split it provides (``train``
always; ``val`` / ``test`` when the source has official ones); hold-out, few-shot
sampling, caps and transforms happen later, in :func:`nctune.data.build_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nctune._registry import Registry
from nctune.errors import DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection

#: ``data.source`` name → loader; filled by the source modules when
#: :mod:`nctune.data.sources` is imported.
SOURCES: Registry[Callable[[DataSection], _Source]] = Registry("data source", field="data.source")


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
    """What a source loader returns: class names, a display name and its pools."""

    classes: list[str]
    name: str
    train: _Pool
    val: _Pool | None = None
    test: _Pool | None = None
    flip: bool = True  # digits are not mirror-symmetric
    tv_name: str = ""


def _require_path(cfg: DataSection, what: str) -> Path:
    if cfg.path is None:
        raise DataError(f"data.path: required for data.source={cfg.source} ({what})")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    return path


def _short_list(items: Sequence[Any], limit: int = 6) -> str:
    shown = ", ".join(repr(str(i)) for i in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _check_classes(classes: list[str], where: str, what: str) -> None:
    if len(classes) < 2:
        found = f"only {_short_list(classes)}" if classes else "none"
        raise DataError(f"{where}: needs at least two classes ({what}), found {found}")


def _optional(module: str, extra: str, field: str) -> Any:
    """Import an optional dependency, or a one-line DataError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{field}: needs the optional package {module!r} (pip install 'nctune[{extra}]')"
        ) from None


def _integer_classes(labels: np.ndarray, names: list[str] | None, where: str) -> list[str]:
    """Class names for integer labels 0..K-1: ``names`` when given, else ``'0'..'K-1'``.

    Raises:
        DataError: a negative label, a label beyond ``names``, or fewer than two classes.
    """
    if labels.size and int(labels.min()) < 0:
        raise DataError(f"{where}: label {int(labels.min())} is negative; labels are 0..K-1")
    top = int(labels.max()) + 1 if labels.size else 0
    if names is not None:
        if top > len(names):
            raise DataError(
                f"{where}: label {top - 1} has no class name ({len(names)} names given); "
                "list every class in data.classes"
            )
        classes = list(names)
    else:
        classes = [str(i) for i in range(top)]
    _check_classes(classes, where, "distinct labels")
    return classes
