"""Hypothesis profiles for the property tests.

``ci`` (the default) is derandomised and bounded, so a run is reproducible and fits the suite's time budget;
``dev`` draws many more examples (``ISTHMUS_HYPOTHESIS_PROFILE=dev pytest tests/property``) for a longer hunt.
Every profile disables the deadline: generation time depends on the machine's load, not on the input. The
tests apply the chosen profile with ``@settings(parent=...)`` rather than loading it globally, so other users of
Hypothesis in the suite keep their own settings.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=400,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs real Envoy processes (about a second per example)")
