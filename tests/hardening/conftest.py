"""Hypothesis profiles for the hardening fuzzers (applied per test by ``fuzz_settings``, not globally).

Every fuzz test carries the ``fuzz`` marker and states two sizes: a small CI share and a nightly count.

* ``hardening-ci`` (default, plain ``pytest``): each property runs its CI share (derandomized, no deadline; CI
  on 2 shared cores).
* ``nightly``: selected by ``pytest -m fuzz`` (or ``HYPOTHESIS_PROFILE=nightly``): each property runs its
  nightly count, at least 10,000 generated inputs over the whole suite; random seeds, so every night explores
  new inputs (a failure prints the blob that reproduces it).
* ``long``: a campaign, ``HYPOTHESIS_PROFILE=long``; ``HYPOTHESIS_MAX_EXAMPLES`` sets the count per property
  (default 2000).
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
             HealthCheck.filter_too_much]

settings.register_profile("hardening-ci", deadline=None, max_examples=50, derandomize=True, print_blob=True,
                          suppress_health_check=_SUPPRESS, database=None)
settings.register_profile("nightly", deadline=None, print_blob=True, suppress_health_check=_SUPPRESS,
                          database=None)
settings.register_profile("long", deadline=None, print_blob=True, suppress_health_check=_SUPPRESS,
                          max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "2000")))

_SELECTED_BY_MARKER = False


def pytest_configure(config):
    """``pytest -m fuzz`` (the marker expression selects fuzz tests only) runs the nightly size."""
    global _SELECTED_BY_MARKER
    expr = (config.getoption("markexpr", "") or "").replace(" ", "")
    _SELECTED_BY_MARKER = "fuzz" in expr and "notfuzz" not in expr


def fuzz_mode() -> str:
    """``long``, ``nightly`` or ``ci``."""
    env = os.environ.get("HYPOTHESIS_PROFILE")
    if env in ("long", "nightly"):
        return env
    return "nightly" if _SELECTED_BY_MARKER else "ci"


def fuzz_settings(ci_examples: int = 50, nightly_examples: int | None = None) -> settings:
    """The active profile for one property: its CI share, its nightly count (``pytest -m fuzz``), or ``long``."""
    mode = fuzz_mode()
    if mode == "long":
        return settings.get_profile("long")
    if mode == "nightly":
        return settings(settings.get_profile("nightly"), max_examples=nightly_examples or 20 * ci_examples)
    return settings(settings.get_profile("hardening-ci"), max_examples=ci_examples)
