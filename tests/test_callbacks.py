"""One callback object with named hooks: what fit calls, when, and how a callback stops a run."""

from __future__ import annotations

import pytest

from nctune.training.callbacks import Callback, CallbackList, LambdaCallback
from nctune.training.checkpoint import load_checkpoint
from tests.test_train import run, steps_per_epoch


class Watcher(Callback):
    """Records every hook; asks to stop once ``stop_after`` epochs have ended."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.calls: list[str] = []
        self.epoch_starts: list[int] = []
        self.histories: list[int] = []
        self.losses: list[float] = []

    def on_fit_start(self, state) -> None:
        self.calls.append("fit_start")

    def on_epoch_start(self, state) -> None:
        self.epoch_starts.append(state.epoch)

    def on_batch_end(self, state, loss: float) -> None:
        self.losses.append(loss)

    def on_epoch_end(self, history) -> None:
        self.histories.append(len(history))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.histories) >= self.stop_after

    def teardown(self) -> None:
        self.calls.append("teardown")


def test_a_callback_sees_each_epoch_once_and_stops_the_run(tmp_path):
    watcher = Watcher(stop_after=2)
    result, _ = run(overrides=["train.epochs=4"], callbacks=watcher, run_dir=tmp_path)
    assert watcher.histories == [1, 2]  # on_epoch_end once per epoch, with the history so far
    assert watcher.epoch_starts == [0, 1]
    assert len(watcher.losses) == 2 * steps_per_epoch()  # on_batch_end after every step
    assert watcher.calls == ["fit_start", "teardown"]
    assert result.interrupted and len(result.history) == 2
    ckpt = load_checkpoint(tmp_path)  # stopped at the epoch boundary: the epoch's own checkpoint
    assert ckpt.epoch == 2 and ckpt.step == 0


def test_a_list_of_callbacks_all_see_the_run_and_any_can_stop_it():
    quiet, stopper = Watcher(), Watcher(stop_after=1)
    result, _ = run(overrides=["train.epochs=3"], callbacks=[quiet, stopper])
    assert quiet.histories == stopper.histories == [1]
    assert result.interrupted and quiet.calls == ["fit_start", "teardown"]


def test_teardown_runs_when_a_hook_raises():
    class Prune(Exception):
        pass

    watcher = Watcher()
    raising = LambdaCallback(on_epoch_end=lambda history: (_ for _ in ()).throw(Prune()))
    with pytest.raises(Prune):
        run(overrides=["train.epochs=2"], callbacks=[watcher, raising])
    assert watcher.histories == [1] and watcher.calls[-1] == "teardown"


def test_callback_list_polls_every_callback_and_lambda_refuses_unknown_hooks():
    polled = []
    hooks = CallbackList.of(
        [
            LambdaCallback(should_stop=lambda: polled.append("a") or True),
            None,
            LambdaCallback(should_stop=lambda: polled.append("b") or False),
        ]
    )
    assert len(hooks) == 2 and hooks.should_stop() and polled == ["a", "b"]
    assert CallbackList.of(None).should_stop() is False
    assert CallbackList.of(hooks) is hooks
    with pytest.raises(TypeError, match="on_epoch_ends"):
        LambdaCallback(on_epoch_ends=print)
