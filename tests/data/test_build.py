"""nctune.data.build: build_data's checks of the backbone's input config."""

from __future__ import annotations

import pytest

from nctune.backbones import InputConfig as BackboneInputConfig
from nctune.data import build_data
from nctune.errors import ConfigError
from tests.data.helpers import IC, cfg


def test_models_that_want_other_than_three_channels_are_refused():
    with pytest.raises(ConfigError, match="in_chans"):
        build_data(cfg(subset="vendored"), BackboneInputConfig(16, IC.mean, IC.std, in_chans=1))
