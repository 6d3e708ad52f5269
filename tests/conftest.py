"""Shared pytest configuration.

Hypothesis profiles for the property-based fuzz suite (``tests/test_fuzz.py``):

- ``ci`` (the default): few examples per test, derandomized (the same
  examples every run), no example database, so the whole fuzz suite stays
  within about a minute on two cores;
- ``thorough``: many random examples, for a local search
  (``HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz.py``).
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the "dev" extra; test_fuzz.py skips
    settings = None

if settings is not None:
    _QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile(
        "ci",
        max_examples=30,
        deadline=None,  # a hang is caught by the fuzz tests' own time limit
        derandomize=True,
        database=None,
        suppress_health_check=_QUIET,
        print_blob=True,
    )
    settings.register_profile(
        "thorough",
        max_examples=300,
        deadline=None,
        suppress_health_check=_QUIET,
        print_blob=True,
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
