"""Hypothesis profiles for the fuzz suite.

`make test` runs every fuzz test with the small per-test budget given to
`fuzz(...)`, so the whole directory stays within ~30 s on a loaded CI machine.
A long run replaces every budget with one large one:

    FUZZ_EXAMPLES=200000 make test PYTEST_ARGS='tests/fuzz -q'
    make test PYTEST_ARGS='tests/fuzz --hypothesis-profile=long'

The deadline is generous on purpose: it flags an input that makes a parser
pathologically slow (quadratic or worse), not a slow machine.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

LONG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)

settings.register_profile(
    "fuzz-ci",
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES or 100_000,
    deadline=timedelta(seconds=5),
    suppress_health_check=list(HealthCheck),
)


def fuzz(examples: int) -> settings:
    """The settings of one fuzz test: its CI budget, or the long profile's when
    FUZZ_EXAMPLES is set or pytest runs with --hypothesis-profile=long."""
    if LONG_EXAMPLES or getattr(settings, "_current_profile", None) == "long":
        return settings(settings.get_profile("long"))
    return settings(settings.get_profile("fuzz-ci"), max_examples=examples)
