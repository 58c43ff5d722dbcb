"""Budget of the fuzz tests: few enough examples that the folder runs in seconds.

Each test takes its settings from `fuzz_settings`. `deadline=None` because a
generated input may take a slow path (a deep TOML nesting, a large array) that is
still correct. Set MEMDEPLOY_FUZZ_EXAMPLES to run more examples per test, for
example 2000 before a release.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("MEMDEPLOY_FUZZ_EXAMPLES", "0")) or None


def fuzz_settings(examples: int):
    """Return Hypothesis settings that run `examples` examples unless overridden."""
    return settings(
        max_examples=EXAMPLES or examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
        ],
    )
