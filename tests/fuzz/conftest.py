"""Hypothesis profiles for the fuzz suite, and the seeds every target mutates.

``ci`` (the default): a bounded, derandomised number of examples per target, so a run is
reproducible and the whole directory takes about a minute on two cores; no example
database is written (nothing lands in the repository). ``HYPOTHESIS_PROFILE=dev`` draws
fresh examples each run; ``benchmarks/fuzz.py`` runs the long campaign with its own
settings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.cli.conftest import plain_stderr  # noqa: F401 - autouse: a plain stderr console

_COMMON = dict(
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# hypothesis caches constants and unicode tables in ./.hypothesis: keep the checkout clean
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "nctune-hypothesis")
settings.register_profile("ci", max_examples=6, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=50, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    """The valid seeds (a finished tiny run and a halfway checkpoint), built once."""
    from tests.fuzz.targets import build_seeds

    return build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))
