"""A stop request that reaches a trial before its training — during the collapse profile the
trial measures first — ends the search like one during training: the trial is failed as
interrupted and queued again, and tune returns ``interrupted`` (the CLI exits 128 + signal).
Under load CI saw the other outcome: the profile's Interrupted escaped as a Ctrl-C (exit 130,
"nothing was written")."""

from __future__ import annotations

import pytest

from nctune.tune import tune
from tests.test_tune import _recipe, images  # noqa: F401 (a fixture)

pytestmark = pytest.mark.filterwarnings("ignore::nctune.tune.SmallValidationWarning")


@pytest.mark.parametrize("strategy", ["scl", "full"])
def test_a_stop_during_the_trials_profile_requeues_it(images, tmp_path, strategy):  # noqa: F811
    out = tmp_path / "s"
    recipe = _recipe(
        images,
        {"trials": 2, "space": {"train.lr": {"float": [0.001, 0.1], "log": True}}},
        strategy={"name": strategy},
        train={"profile_after": True},
    )
    # True from the moment trial 0 has written its recipe: the next poll is in its profile
    result = tune(
        recipe, out=out, should_stop=lambda: (out / "trials" / "0" / "recipe.yaml").exists()
    )
    assert result.interrupted
    reasons = [t.reason for t in result.trials if t.reason]
    assert any(r.startswith("interrupted") for r in reasons), reasons
