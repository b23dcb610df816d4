"""Hypothesis profiles for the hardening fuzzers (applied per test by ``fuzz_settings``, not globally).

* ``hardening-ci`` (default): bounded examples per property, no deadline (CI on 2 shared cores).
* ``long``: a fuzzing campaign, e.g. ``HYPOTHESIS_PROFILE=long pytest tests/test_hardening/test_fuzz.py``;
  ``HYPOTHESIS_MAX_EXAMPLES`` overrides its example count (default 2000 per property).
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
             HealthCheck.filter_too_much]

settings.register_profile("hardening-ci", deadline=None, max_examples=50, derandomize=True, print_blob=True,
                          suppress_health_check=_SUPPRESS, database=None)
settings.register_profile("long", deadline=None, print_blob=True, suppress_health_check=_SUPPRESS,
                          max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "2000")))


def fuzz_settings(ci_examples: int = 50) -> settings:
    """The active profile: ``long`` when HYPOTHESIS_PROFILE=long, else the bounded CI profile."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "long":
        return settings.get_profile("long")
    return settings(settings.get_profile("hardening-ci"), max_examples=ci_examples)
