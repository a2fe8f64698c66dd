"""make_loader: a seeded DataLoader whose DataErrors stay one line across worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from nctune.errors import DataError

if TYPE_CHECKING:
    from nctune.data.section import DataSection


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
            # Stop the workers now: the error's traceback keeps the iterator alive, and when
            # the garbage collector frees it later, torch waits 5 s for every worker to join.
            # A persistent loader makes fresh workers the next time it is iterated.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
                self._iterator = None
            raise DataError(_worker_message(err)) from None


def _wants_cuda(device: Any) -> bool:
    if not torch.cuda.is_available():
        return False
    if device is None or str(device) == "auto":
        return True
    return torch.device(device).type == "cuda"


def make_loader(
    dataset: Dataset,
    cfg: DataSection,
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
