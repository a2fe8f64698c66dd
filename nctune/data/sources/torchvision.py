"""``data.source: torchvision`` — ``torchvision.datasets.<data.name>`` with root
``data.path``.

Official splits are used (``train=True/False`` or ``split=train|trainval|val|test``).
Sets that keep their pixels as a uint8 array (MNIST, CIFAR) become in-memory pools;
others are decoded per sample.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision.datasets as tvd
from torch.utils.data import Dataset

from nctune.data.sources._base import SOURCES, _check_classes, _Pool, _Source
from nctune.errors import DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection


def _torchvision_class(name: str | None) -> type:
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


@SOURCES.register("torchvision")
def _load_torchvision(cfg: DataSection) -> _Source:
    """dataset class 'name' with root 'path'."""
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
