"""One callback object with named hooks, in Lightning's shape, for everything that watches a run.

A progress display, the CLI's stop flag, metric loggers and a search's pruning all hang on the
same protocol, passed as one object (or a list) to :func:`~nctune.finetune.finetune`,
:func:`~nctune.training.train.fit`, :func:`~nctune.training.evaluation.evaluate` and
:meth:`~nctune.training.prefix_cache.PrefixCache.build`::

    class Stopwatch(Callback):
        def on_epoch_end(self, history):
            print(history[-1].epoch, history[-1].seconds)

    finetune(recipe, callbacks=[Stopwatch(), LambdaCallback(should_stop=flag.is_set)])

Every hook is a no-op here, so a callback overrides only what it needs. The library calls
them and never prints. This module imports nothing (the CLI loads it for ``--help``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

# The hooks take the loop's types duck-typed (``TrainState``, ``EpochStats`` as ``Any``): this
# protocol sits below the prefix cache, which calls it, and the loop's modules sit above.
TrainState = Any
EpochStats = Any

__all__ = ["Callback", "CallbackList", "LambdaCallback"]


class Callback:
    """Base class: hooks a run calls, each a no-op until overridden.

    Order within :func:`~nctune.training.train.fit`: ``on_fit_start`` → per epoch
    ``on_epoch_start`` → per step ``on_batch_end``, ``on_progress``, ``should_stop`` →
    ``on_epoch_end`` (after the epoch's checkpoint) → ``should_stop`` → ``teardown`` (also
    when the run raises). Whatever a hook raises ends the run and propagates (a search's
    prune signal), the caches closed first.
    """

    def on_fit_start(self, state: TrainState) -> None:
        """Training starts (a resumed run: its state is already restored)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """An epoch starts; ``state.epoch`` is its index (from 0), ``state.step`` its first step."""

    def on_batch_end(self, state: TrainState, loss: float) -> None:
        """A training step finished; ``state.step`` steps of the epoch are done. ``loss`` is
        the step's batch-mean loss (under torchrun: this rank's summed loss)."""

    def on_epoch_end(self, history: Sequence[EpochStats]) -> None:
        """An epoch finished and was checkpointed; ``history`` holds every epoch so far
        (a resumed run's earlier ones included)."""

    def on_progress(self, phase: str, done: int, total: int | None, info: str = "") -> None:
        """A pass advanced: ``done`` of ``total`` batches (None: unknown) of ``phase``."""

    def should_stop(self) -> bool:
        """Polled after every step and epoch (between batches in other passes): True asks
        the run to stop (``fit`` saves a checkpoint and returns ``interrupted``)."""
        return False

    def teardown(self) -> None:
        """Training ended, returned or raised: release what the callback holds."""


class LambdaCallback(Callback):
    """A callback from plain functions, one per hook (Lightning's ``LambdaCallback``).

    Args:
        **hooks: hook name → function with that hook's arguments, e.g.
            ``should_stop=flag.is_set``, ``on_progress=print``; None entries are ignored.

    Raises:
        TypeError: a name that is not a hook of :class:`Callback`.
    """

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        for name, fn in hooks.items():
            if name.startswith("_") or not callable(getattr(Callback, name, None)):
                raise TypeError(f"LambdaCallback: {name!r} is not a Callback hook")
            if fn is not None:
                setattr(self, name, fn)


class CallbackList(Callback):
    """Several callbacks as one: each hook calls them in order; ``should_stop`` is any.

    Args:
        callbacks: callbacks (None entries are skipped).
    """

    def __init__(self, callbacks: Iterable[Callback | None] = ()) -> None:
        self.callbacks = [c for c in callbacks if c is not None]

    @classmethod
    def of(cls, callbacks: Callback | Iterable[Callback | None] | None) -> CallbackList:
        """``callbacks`` as a :class:`CallbackList`: one, a list, or None (no callback)."""
        if isinstance(callbacks, CallbackList):
            return callbacks
        if callbacks is None or isinstance(callbacks, Callback):
            return cls([callbacks])
        return cls(callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def on_fit_start(self, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_fit_start(state)

    def on_epoch_start(self, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_epoch_start(state)

    def on_batch_end(self, state: TrainState, loss: float) -> None:
        for c in self.callbacks:
            c.on_batch_end(state, loss)

    def on_epoch_end(self, history: Sequence[EpochStats]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(history)

    def on_progress(self, phase: str, done: int, total: int | None, info: str = "") -> None:
        for c in self.callbacks:
            c.on_progress(phase, done, total, info)

    def should_stop(self) -> bool:
        # every callback is asked (a poll may count calls), the answer is any of them
        return any([c.should_stop() for c in self.callbacks])

    def teardown(self) -> None:
        for c in self.callbacks:
            c.teardown()
