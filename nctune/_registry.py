"""One registry style for every pluggable part (data sources, backbone sources,
strategies, selection rules), in the manner of timm's ``register_model``.

A module registers its entry with a decorator at import time::

    SOURCES = Registry("data source", field="data.source")

    @SOURCES.register("digits")
    def load_digits(cfg): ...

and the package that owns the registry imports every such module in its ``__init__``,
so importing the package fills the registry. Lookups of unknown names raise
:class:`~nctune.errors.ConfigError` naming the recipe field and the closest names.
:class:`StaticNames` holds the names of a registry whose modules import torch, so the
recipe can check them without importing those modules (:mod:`nctune._names`).
Ground floor: imports only :mod:`nctune.errors`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from nctune.errors import ConfigError

__all__ = ["Registry", "StaticNames"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → entries, filled by :meth:`register` decorators at import time.

    Args:
        kind: what the entries are, for messages ("data source").
        field: the recipe field whose value is looked up here ("data.source"), named in
            the error for an unknown name.
    """

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files its target under ``name`` and returns it unchanged.

        Raises:
            ValueError: ``name`` is already taken (a programming error, not user input).
        """

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry filed under ``name``.

        Raises:
            ConfigError: no such name; the message names the field, the closest match and
                every registered name.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown(name)) from None

    def unknown(self, name: str, *, prefix: bool = True) -> str:
        """The one-line message for an unknown ``name``.

        Args:
            name: the name that is not registered.
            prefix: start with the recipe field (``data.source: ``); recipe validators pass
                False, as the recipe error format adds the field path itself.
        """
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        text = f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(self.names())})"
        return f"{self.field}: {text}" if prefix else text

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


class StaticNames(Registry[str]):
    """The names (and help lines) of a registry, known without importing its modules.

    A registry whose entries import torch (data sources, backbone sources) is filled only
    when its package is imported; the recipe checks names against this list instead, so
    a typo is refused before torch loads. A test keeps each list equal to its registry.
    It is a registry of help lines, filled at construction: lookups and the message for
    an unknown name are :class:`Registry`'s own.

    Args:
        kind: what the names are, for messages ("data source"), as the registry says it.
        field: the recipe field whose value is looked up ("data.source").
        entries: name → one-line help, in the registry's order.
    """

    def __init__(self, kind: str, field: str, entries: dict[str, str]) -> None:
        super().__init__(kind, field)
        self._entries = dict(entries)

    @property
    def entries(self) -> dict[str, str]:
        """Name → one-line help, in registration order."""
        return self._entries

    def help(self) -> str:
        """``name (help), …`` in one line, ending in a full stop (the recipe's help text)."""
        parts = [f"{n} ({h})" if h else n for n, h in self._entries.items()]
        return ", ".join(parts) + "."
