"""What the Billing page tests share: the seeded billing months (billing_seed.py), loaded once
per session since every module reads the same running Airflow's billing database; and the
headless Chromium of the browser tests (their steps: browser_steps.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from billing_seed import Seeded, seed_months

from cdr_devkit.screenshot import DevTools, open_browser


@pytest.fixture(scope="session")
def seeded(running_airflow, postgres, tmp_path_factory) -> Seeded:
    return seed_months(running_airflow, postgres, tmp_path_factory)


@pytest.fixture
def browser(tmp_path) -> Iterator[DevTools]:
    """A headless Chromium with a fresh profile for each test (no timezone, theme or cookie a
    test before chose) and a DevTools client on it."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with open_browser(profile) as devtools:
        yield devtools
