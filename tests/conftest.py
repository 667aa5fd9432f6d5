"""Suite-wide settings.

Fresh simulator seeds: besides the fixed sweep, every run checks a small batch of seeds
nobody has run before, so the sweep grows over time. The batch's first seed is printed at
the end of the run; `AEGIS_FRESH_SEEDS=<first seed> python -m pytest tests/sim` runs that
batch again.
"""

from __future__ import annotations

import os
import random

import pytest

FRESH_SEEDS = int(os.environ.get("AEGIS_FRESH_SEEDS") or random.SystemRandom().randrange(10**6, 10**9))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # shown even under -q, at the end of the run, whatever the outcome
    if terminalreporter.stats.get("passed") or terminalreporter.stats.get("failed"):
        terminalreporter.write_line(
            f"simulator fresh seeds start at {FRESH_SEEDS} "
            f"(replay the batch: AEGIS_FRESH_SEEDS={FRESH_SEEDS} python -m pytest tests/sim -k fresh)")


@pytest.fixture(scope="session")
def fresh_seeds() -> int:
    return FRESH_SEEDS
