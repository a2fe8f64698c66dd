"""The one tiny recipe the training, command-line and golden tests start from.

A random-init timm ``test_resnet`` on the vendored Fashion-MNIST subset at 32 px, as the
``--set`` overrides ``load_recipe(None, overrides)`` and the CLI take. A test file adds what
it needs with :func:`tiny` (a key of the base given again replaces it in place).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Ten images a class, a sliver of them for validation, 32 px, one or two batches an epoch.
TINY: tuple[str, ...] = (
    "backbone.name=timm:test_resnet",
    "backbone.pretrained=false",
    "data.subset=vendored",
    "data.samples_per_class=10",
    "data.val_fraction=0.03",
    "data.image_size=32",
    "data.batch_size=16",
)


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def extend(base: Sequence[str], *extra: str) -> list[str]:
    """``base`` with ``extra``: an override of a key already in ``base`` replaces it where it
    stands, the others follow in their order (so every key appears once)."""
    given = {_key(e): e for e in extra}
    out = [given.pop(_key(s), s) for s in base]
    return [*out, *(e for e in extra if _key(e) in given)]


def tiny(*extra: str) -> list[str]:
    """:data:`TINY` with ``extra`` overrides (see :func:`extend`)."""
    return extend(TINY, *extra)


def set_args(overrides: Iterable[str]) -> list[str]:
    """The overrides as command-line arguments: ``--set a=1 --set b=2 …``."""
    return [arg for s in overrides for arg in ("--set", s)]
